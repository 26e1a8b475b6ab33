"""User-facing errors: the CLI prints their message on one line, never a traceback."""

from __future__ import annotations

import errno

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""No space left, over the disk quota, over the file-size limit (RLIMIT_FSIZE): the environment, never the
data. Code that turns OSErrors into drops must let these through, or a full disk would look like bad input."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of space (see :data:`DISK_FULL`)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


class CurationError(Exception):
    """A problem the user can fix (bad recipe, missing input, refused output directory)."""


class RecipeError(CurationError):
    """A recipe (or a ``--set`` override) does not validate."""
