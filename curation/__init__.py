"""What we do with samples: sources, steps, the build runner, the audit and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vlm-curation")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
