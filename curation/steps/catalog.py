"""Every step class of the toolkit, imported here so that each registers for its recipe config
(``curation.steps.contract.step_class``)."""
# ruff: noqa: F401

from curation.generation.docmatix.step import DocmatixGenerate
from curation.steps.convert import PairToSft
from curation.steps.decontaminate import Decontaminate
from curation.steps.dedup import ExactImageDedup, UniqueKey
from curation.steps.image import ImageDecode, ImageSize
from curation.steps.merge import MergeQa
from curation.steps.neardup import NearDupImages, NearDupText
from curation.steps.pdf import PdfToTranscription
from curation.steps.qa import QaFilter
from curation.steps.text import TextLength
