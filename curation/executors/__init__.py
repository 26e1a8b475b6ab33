"""Executors run partition tasks: ``local`` (process pool) for now; Ray comes with the scale-out issue."""

from curation.executors.local import run_local

__all__ = ["run_local"]
