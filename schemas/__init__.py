"""What a sample is: record kinds, their validation, sidecar Arrow schemas and exported JSON Schemas."""

from schemas.errors import RecordError
from schemas.records import (
    KINDS,
    InterleavedRecord,
    Page,
    PageLine,
    PairRecord,
    PdfRecord,
    Record,
    SftRecord,
    Turn,
    parse_record,
)
from schemas.sidecar import SIDECAR_SCHEMA

__all__ = [
    "KINDS",
    "SIDECAR_SCHEMA",
    "InterleavedRecord",
    "Page",
    "PageLine",
    "PairRecord",
    "PdfRecord",
    "Record",
    "RecordError",
    "SftRecord",
    "Turn",
    "parse_record",
]
