"""The audit report a data team reviews before training: statistics, distributions, quality, previews.

``write_audit_report`` is imported on first use: the table renderers (:mod:`curation.report.table`) are
imported by the audit and the card, which must not pull in matplotlib or the report's own imports of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curation.report.html import write_audit_report

__all__ = ["write_audit_report"]


def __getattr__(name: str) -> Any:
    if name == "write_audit_report":
        from curation.report.html import write_audit_report

        return write_audit_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
