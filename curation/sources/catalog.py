"""Every reader class, imported once so that each registers itself by its recipe source model (in the order
the drop-reason docs list them). A new source adds one line here."""

from curation.sources.cauldron import CauldronReader
from curation.sources.finevision import FineVisionReader
from curation.sources.img2dataset_output import Img2datasetReader
from curation.sources.jsonl import JsonlReader
from curation.sources.laion.reader import LaionReader
from curation.sources.llava.reader import LlavaReader
from curation.sources.obelics.reader import ObelicsReader
from curation.sources.parquet import ParquetReader
from curation.sources.pdfa import PdfaReader
from curation.sources.shards import ShardsReader

READERS = (
    JsonlReader,
    ParquetReader,
    ShardsReader,
    Img2datasetReader,
    PdfaReader,
    LaionReader,
    ObelicsReader,
    CauldronReader,
    LlavaReader,
    FineVisionReader,
)
