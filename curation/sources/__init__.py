"""Source readers: each plans partitions with exact row counts and reads one partition as samples/drops."""

from curation.sources.base import Partition, Reader, Subset, make_reader, reader_class, reader_classes

__all__ = ["Partition", "Reader", "Subset", "make_reader", "reader_class", "reader_classes"]
