"""Golden outputs: the demo build and one test build per built-in recipe must keep every output byte.

``tests/golden.py`` builds them (under a fixed absolute directory, with deterministic inputs);
``tests/fixtures/golden/hashes.json`` holds the sha256 of every tar, sidecar and ``dataset.json`` recorded from
the code before the redesign. Re-record only for a deliberate, named change of output: docs/development.md
("Golden outputs")."""

from __future__ import annotations

import pytest

from tests import golden

pytestmark = pytest.mark.slow


def test_every_output_byte_is_the_recorded_one():
    fixture = golden.load_fixture()
    differing = golden.version_differences(fixture["versions"])
    if differing:
        pytest.skip(
            "the golden hashes were recorded with other releases of packages that change output bytes ("
            + "; ".join(differing)
            + "); install constraints.txt to compare"
        )
    actual = golden.build_all()
    diff = golden.compare(fixture["builds"], actual)
    if diff:
        pytest.fail("output bytes differ from tests/fixtures/golden/hashes.json:\n" + "\n".join(diff), pytrace=False)
