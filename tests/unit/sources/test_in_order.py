"""``in_order``: the rows of a partition made a few at once (images under an ``image_root`` URL are one GET each),
their items still in input order, nothing lost or left running."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest

from curation.sources.base import fetches_at_once, in_order


def _slow(i: int, running: list[int], peak: list[int], lock: threading.Lock) -> int:
    with lock:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
    time.sleep(0.01 * ((i * 7) % 5))  # later calls often finish first
    with lock:
        running[0] -= 1
    return i


@pytest.mark.parametrize("at_once", [1, 4, 16])
def test_results_come_in_input_order_with_at_most_at_once_running(at_once):
    running, peak, lock = [0], [0], threading.Lock()
    calls = (partial(_slow, i, running, peak, lock) for i in range(60))
    assert list(in_order(calls, at_once)) == list(range(60))
    assert peak[0] <= at_once
    assert (peak[0] > 1) == (at_once > 1)  # several at once only when asked


def test_a_failing_call_raises_in_its_place():
    def call(i: int) -> int:
        if i == 5:
            raise RuntimeError("the store failed")
        return i

    got: list[int] = []
    with pytest.raises(RuntimeError, match="the store failed"):
        for item in in_order((partial(call, i) for i in range(20)), 4):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_an_input_that_fails_gives_the_calls_made_before_it_first():
    def calls() -> Iterator:
        for i in range(7):
            yield partial(int, i)
        raise OSError("the file is cut off")

    got: list[int] = []
    with pytest.raises(OSError, match="cut off"):
        for item in in_order(calls(), 16):
            got.append(item)
    assert got == list(range(7))  # as one at a time would give


def test_a_consumer_that_stops_early_leaves_nothing_running():
    started: list[int] = []

    def call(i: int) -> int:
        started.append(i)
        time.sleep(0.01)
        return i

    items = in_order((partial(call, i) for i in range(1000)), 4)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    settled = len(started)
    time.sleep(0.1)
    assert len(started) == settled <= 3 + 4  # what was submitted, no more


def test_rows_are_made_at_once_only_when_their_images_are_in_a_bucket():
    assert fetches_at_once(None) == 1
    assert fetches_at_once("/data/images") == 1
    assert fetches_at_once("s3://bucket/images") > 1
