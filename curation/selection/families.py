"""What differs between vision-language model families, in one place, and the pre-flight check of a model
directory against the records it is to train on.

The reference trainer takes any decoder-only ``AutoModelForImageTextToText`` directory whose processor has a
chat template: the prompt format, the image placeholders and their expansion all come from the processor
(``apply_chat_template``, then the processor's own call). What is left per family is listed here:

- ``PER_SAMPLE_IMAGES``: processors whose ``pixel_values`` are batched per sample, not per image;
- ``load_processor``: the stand-in for the video sub-processor where torchvision is missing;
- ``check_model_type``: model types the trainer cannot train (encoder-decoders, text-only models).

Tested families (``tests/unit/selection/test_families.py`` on tiny random models built by ``tiny_models``):
Idefics3, SmolVLM, LLaVA-1.5, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL and Gemma 3.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from schemas import SftRecord

# Idefics2/3 and SmolVLM processors return ``pixel_values`` as (sample, image, channel, height, width): a batch
# stacks them per sample, padded with all-zero images; every other family returns one row per image (or patch).
PER_SAMPLE_IMAGES = frozenset({"Idefics2Processor", "Idefics3Processor", "SmolVLMProcessor"})


def images_per_sample(processor: Any) -> bool:
    return type(processor).__name__ in PER_SAMPLE_IMAGES


# ---- loading -------------------------------------------------------------------------------------
def _torchvision_available() -> bool:
    from transformers.utils.import_utils import is_torchvision_available

    return is_torchvision_available()


def no_video_processor(config: dict[str, Any] | None = None) -> Any:
    """A video sub-processor that refuses videos, for processors that require one (Qwen2-VL, LLaVA-OneVision,
    SmolVLM) where torchvision, which transformers' video processors need, is missing: our records carry no
    video. It saves the family's video-processor config unchanged (``config``), so a directory saved with it
    loads the real video processor where torchvision is installed."""
    import transformers.processing_utils as processing_utils
    from transformers.video_processing_utils import VideoProcessorMixin

    # transformers resolves the class it checks sub-processors against by name on its top-level module, which
    # only exports it when torchvision is installed.
    if not hasattr(processing_utils.transformers_module, "VideoProcessorMixin"):
        setattr(processing_utils.transformers_module, "VideoProcessorMixin", VideoProcessorMixin)  # noqa: B010

    class NoVideoProcessor(VideoProcessorMixin):
        def __init__(self, saved: dict[str, Any]) -> None:
            super().__init__()
            self.num_frames = self.fps = None  # read by some processors' apply_chat_template (SmolVLM)
            for key, value in saved.items():
                setattr(self, key, value)
            self._saved = saved

        def preprocess(self, videos: Any, **kwargs: Any) -> Any:
            raise CurationError("videos are not supported: install torchvision for a video processor")

        def to_dict(self) -> dict[str, Any]:
            return dict(self._saved)

    return NoVideoProcessor(dict(config or {}))


def _saved_video_config(path: Path) -> dict[str, Any]:
    """The video-processor config a processor directory holds (nested in processor_config.json, or its own
    file), or {}."""
    for name, key in (("processor_config.json", "video_processor"), ("video_preprocessor_config.json", None)):
        file = path / name
        if file.is_file():
            data = json.loads(file.read_text())
            data = data.get(key) if key else data
            if isinstance(data, dict):
                return data
    return {}


def _processor_class(path: Path) -> Any:
    """The processor class a directory names (processor_config.json, preprocessor_config.json,
    tokenizer_config.json), else the one transformers maps its model type to."""
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING, processor_class_from_name

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            cls_name = json.loads(file.read_text()).get("processor_class")
            if cls_name:
                return processor_class_from_name(cls_name)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return PROCESSOR_MAPPING.get(type(config), None)


def load_processor(model_dir: str | Path) -> Any:
    """The directory's processor (``AutoProcessor``, local files only); a processor that needs a video
    sub-processor gets ``no_video_processor`` where torchvision is missing."""
    from transformers import AutoProcessor

    path = Path(model_dir)
    kwargs: dict[str, Any] = {}
    try:
        cls = _processor_class(path)
        if cls is not None and "video_processor" in cls.get_attributes() and not _torchvision_available():
            kwargs["video_processor"] = no_video_processor(_saved_video_config(path))
        processor = AutoProcessor.from_pretrained(path, local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, ImportError, AttributeError) as exc:
        raise CurationError(f"cannot load a processor from {path}: {type(exc).__name__}: {exc}") from None
    for name in kwargs:  # transformers hands the sub-processor kwargs to the tokenizer too, which would save them
        processor.tokenizer.init_kwargs.pop(name, None)
    return processor


def check_model_type(model_dir: str | Path) -> Any:
    """The directory's config, if the reference trainer can train its model type; else a CurationError."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CurationError(f"no model directory at {path} (expected a config.json from save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CurationError(f"cannot read the model config in {path}: {exc}") from None
    model_type = getattr(config, "model_type", "?")
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise CurationError(
            f"{path}: model type {model_type!r} is not a vision-language model transformers can load with "
            "AutoModelForImageTextToText; the reference trainer cannot train it"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise CurationError(
            f"{path}: model type {model_type!r} is an encoder-decoder; the reference trainer trains decoder-only "
            "VLMs (answer-only labels on the input sequence)"
        )
    return config


def load_model(model_dir: str | Path, dtype: Any = None) -> Any:
    """The directory's model (``AutoModelForImageTextToText``, local files only), after ``check_model_type``."""
    from transformers import AutoModelForImageTextToText

    check_model_type(model_dir)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForImageTextToText.from_pretrained(Path(model_dir), local_files_only=True, **kwargs)


# ---- pre-flight ----------------------------------------------------------------------------------
def chat_template(processor: Any) -> str | dict | None:
    return getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)


def preflight(model_dir: str | Path, records: list[SftRecord], max_length: int = 2048, processor: Any = None) -> None:
    """Fail fast, before any trial, with a CurationError saying what is wrong, where ``model_dir`` cannot train
    on ``records`` (e.g. a mixture's first batch): a model type the trainer does not support, no loadable
    processor, no chat template, an image that does not decode, a record the processor refuses (its images vs
    the placeholders, an image size it cannot take), images whose tokens leave no room for the answer within
    ``max_length``, or images the chat template drops. Loads the config and processor, not the weights."""
    from PIL import Image

    from curation.selection.data import encode, image_token_ids

    check_model_type(model_dir)
    processor = processor if processor is not None else load_processor(model_dir)
    if not chat_template(processor):
        raise CurationError(
            f"{model_dir}: the processor has no chat template (chat_template.jinja / chat_template.json, or the "
            "tokenizer's); the trainer renders prompts with it"
        )
    image_ids = set(image_token_ids(processor))
    for record in records:
        for i, data in enumerate(record.images):
            try:
                Image.open(io.BytesIO(data)).verify()
            except Exception as exc:  # PIL raises many kinds (decompression bombs, struct errors, ...): any is a no
                raise CurationError(f"record {record.key!r}: image {i} does not decode: {exc}") from None
        try:
            encoded = encode(record, processor, max_length)
        except CurationError as exc:
            raise CurationError(f"record {record.key!r}: {exc}") from None
        except Exception as exc:  # the processor's own refusal, whatever its type: say which record and why
            raise CurationError(
                f"record {record.key!r} ({len(record.images)} images): {type(processor).__name__} cannot encode it: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if record.images and not image_ids & set(encoded.input_ids):
            raise CurationError(
                f"record {record.key!r} has {len(record.images)} images but no image tokens after the chat template: "
                "the template does not render {'type': 'image'} content"
            )
        positions = [pos for pos, token in enumerate(encoded.input_ids) if token in image_ids]
        if positions and positions[-1] + 1 >= max_length:
            raise CurationError(
                f"record {record.key!r}: its {len(record.images)} images take {len(positions)} tokens, ending at "
                f"token {positions[-1] + 1}: no room for the answer within max_length {max_length} (image tokens are "
                "never cut); raise max_length or drop such records"
            )
