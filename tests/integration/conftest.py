"""Fixtures of the object-storage tests: moto's server on loopback (``tests/s3_server.py``), one per test module
that asks for it, and this process pointed at it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def s3():
    from tests.s3_server import start_moto

    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    """This process's environment (and so its workers') pointed at the server, without the ``storage:`` options
    an earlier test's recipe left in this process."""
    from curation.storage.inputs import set_options
    from tests.s3_server import use_server

    set_options(None)
    return use_server(s3, monkeypatch)
