"""Source readers: each plans partitions with exact row counts and reads one partition as samples/drops."""

from curation.readers.base import Partition, Reader, make_reader

__all__ = ["Partition", "Reader", "make_reader"]
