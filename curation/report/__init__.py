"""The audit report a data team reviews before training: statistics, distributions, quality, previews."""

from curation.report.html import write_audit_report

__all__ = ["write_audit_report"]
