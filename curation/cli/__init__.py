"""The ``curate`` command."""

from curation.cli.app import main

__all__ = ["main"]
