"""User-facing errors: the CLI prints their message on one line, never a traceback."""


class CurationError(Exception):
    """A problem the user can fix (bad recipe, missing input, refused output directory)."""


class RecipeError(CurationError):
    """A recipe (or a ``--set`` override) does not validate."""
