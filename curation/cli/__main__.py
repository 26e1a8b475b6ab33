"""``python -m curation.cli``: the ``curate`` command."""

from curation.cli.app import main

main()
