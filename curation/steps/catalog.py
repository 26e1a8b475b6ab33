"""Every step class of the toolkit, imported here so that each registers for its recipe config
(``curation.steps.contract.step_class``)."""
# ruff: noqa: F401

from curation.generation.docmatix.step import DocmatixGenerate
from curation.generation.judge.step import Judge
from curation.steps.classifier import EmbeddingClassifier
from curation.steps.clip_score import ClipScore
from curation.steps.convert import PairToSft
from curation.steps.decontaminate import Decontaminate
from curation.steps.dedup import ExactImageDedup, UniqueKey
from curation.steps.embed import Embed
from curation.steps.embedding_decontaminate import EmbeddingDecontaminate
from curation.steps.image import ImageDecode, ImageSize
from curation.steps.keep_top import KeepTop
from curation.steps.merge import MergeQa
from curation.steps.neardup import NearDupImages, NearDupText
from curation.steps.pdf import PdfToTranscription
from curation.steps.qa import QaFilter
from curation.steps.score_filter import ScoreFilter
from curation.steps.semantic_dedup import SemanticDedup
from curation.steps.text import TextLength
