"""The one error type for a record that does not fit its kind."""

from __future__ import annotations


class RecordError(ValueError):
    """A record failed validation. `field` is a dotted path (``turns.2.assistant``), `reason` a short slug."""

    def __init__(self, field: str, reason: str, detail: str = "") -> None:
        self.field = field
        self.reason = reason
        self.detail = detail
        super().__init__(f"{field}: {detail or reason}")

    @property
    def drop_reason(self) -> str:
        """A stable reason string for accounting, e.g. ``invalid_record:turns``."""
        top = self.field.split(".", 1)[0] or "record"
        return f"invalid_record:{top}"
