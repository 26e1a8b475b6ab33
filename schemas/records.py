"""Record kinds: ``pair``, ``interleaved``, ``pdf`` and ``sft``.

Records are pydantic models so that validation names the bad field. Trusted code paths (our own
shard reader) build them with ``model_construct`` and skip validation.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from schemas.errors import RecordError

# No dots (webdataset splits member names at the first dot) and no slashes (tar paths).
KEY_PATTERN = r"^[A-Za-z0-9_\-]{1,200}$"

Key = Annotated[str, Field(pattern=KEY_PATTERN, description="Sample key: letters, digits, '_' and '-'.")]
ImageBytes = Annotated[bytes, Strict(), Field(description="Encoded image bytes (JPEG, PNG, WebP, ...).")]


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False, ser_json_bytes="base64")

    kind: ClassVar[str]
    key: Key
    source: Annotated[str, Field(min_length=1, description="Name of the source this sample came from.")]
    meta: dict[str, JsonValue] = Field(default_factory=dict, description="Free, JSON-serialisable metadata.")

    def image_list(self) -> list[bytes]:
        """All images of the record, in order."""
        return []

    def texts_for_tokens(self) -> tuple[list[str], list[str]]:
        """(all texts, answer texts): what token accounting counts."""
        return [], []

    def num_turns(self) -> int:
        return 0


class PairRecord(_RecordBase):
    """One image and its caption (LAION-style)."""

    kind: ClassVar[str] = "pair"
    image: ImageBytes = Field(repr=False)
    caption: str

    def image_list(self) -> list[bytes]:
        return [self.image]

    def texts_for_tokens(self) -> tuple[list[str], list[str]]:
        return [self.caption], [self.caption]

    def num_turns(self) -> int:
        return 1


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    assistant: str


class SftRecord(_RecordBase):
    """Zero or more images and a conversation; text-only when ``images`` is empty."""

    kind: ClassVar[str] = "sft"
    images: list[ImageBytes] = Field(default_factory=list, repr=False)
    turns: Annotated[list[Turn], Field(min_length=1)]

    def image_list(self) -> list[bytes]:
        return list(self.images)

    def texts_for_tokens(self) -> tuple[list[str], list[str]]:
        answers = [t.assistant for t in self.turns]
        return [t.user for t in self.turns] + answers, answers

    def num_turns(self) -> int:
        return len(self.turns)


class InterleavedRecord(_RecordBase):
    """An ordered document: at each position exactly one of ``texts[i]`` / ``images[i]`` is set."""

    kind: ClassVar[str] = "interleaved"
    texts: list[str | None]
    images: list[ImageBytes | None] = Field(repr=False)

    # A field validator (not a model validator) so that the error names the field: ``images``.
    @field_validator("images")
    @classmethod
    def _parallel(cls, images: list[bytes | None], info: ValidationInfo) -> list[bytes | None]:
        if "texts" not in info.data:  # texts itself is invalid; that error is reported
            return images
        texts = info.data["texts"]
        if len(texts) != len(images):
            raise ValueError(f"texts has {len(texts)} items but images has {len(images)}")
        if not texts:
            raise ValueError("an interleaved document needs at least one item")
        for i, (t, im) in enumerate(zip(texts, images, strict=True)):
            if (t is None) == (im is None):
                raise ValueError(f"position {i} must hold exactly one of a text or an image")
        return images

    def image_list(self) -> list[bytes]:
        return [im for im in self.images if im is not None]

    def texts_for_tokens(self) -> tuple[list[str], list[str]]:
        texts = [t for t in self.texts if t is not None]
        return texts, texts


class PageLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    bbox: tuple[float, float, float, float] = Field(description="[x, y, width, height], normalised to [0, 1].")


class Page(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lines: list[PageLine] = Field(default_factory=list)


class PdfRecord(_RecordBase):
    """A PDF document with its OCR lines per page (PDFA / IDL style)."""

    kind: ClassVar[str] = "pdf"
    pdf: Annotated[bytes, Strict()] = Field(repr=False)
    pages: list[Page]

    def texts_for_tokens(self) -> tuple[list[str], list[str]]:
        texts = [line.text for page in self.pages for line in page.lines]
        return texts, texts


Record = PairRecord | SftRecord | InterleavedRecord | PdfRecord
RECORD_CLASSES: dict[str, type[_RecordBase]] = {
    cls.kind: cls for cls in (PairRecord, InterleavedRecord, PdfRecord, SftRecord)
}
KINDS: tuple[str, ...] = tuple(RECORD_CLASSES)
_ADAPTERS: dict[str, TypeAdapter[Any]] = {k: TypeAdapter(c) for k, c in RECORD_CLASSES.items()}


def parse_record(kind: str, data: dict[str, Any]) -> Record:
    """Validate ``data`` as a record of ``kind``; raise :class:`RecordError` naming the first bad field."""
    if kind not in RECORD_CLASSES:
        raise RecordError("kind", "unknown_kind", f"unknown record kind {kind!r}; expected one of {KINDS}")
    try:
        return _ADAPTERS[kind].validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "record"
        value = err.get("input")
        shown = f" (got {type(value).__name__})" if not isinstance(value, dict | bytes) else ""
        raise RecordError(field, err["type"], f"{err['msg']}{shown}") from None
