"""Accounting: per step and source, input (+ added) = output + Σ dropped; mergeable, serialisable, checked."""

from __future__ import annotations

import json
import random

import pytest

from curation.build.accounting import Accounting

STEPS = ["read", "filter", "write"]


def count_events(acc: Accounting, events: list[tuple[str, str, str]]) -> None:
    """Count one sample per event (source, step it is dropped at or "kept", reason) through STEPS."""
    for source, drop_at, reason in events:
        for step in STEPS:
            acc.inp(step, source)
            if step == drop_at:
                acc.drop(step, source, reason)
                break
            acc.out(step, source)


def random_events(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        at = rng.choice(["read", "filter", "filter", "kept", "kept", "kept"])
        reason = {"read": "undecodable", "filter": rng.choice(["too_short", "too_long"])}.get(at, "")
        events.append((rng.choice(["cauldron", "laion", "docmatix"]), at, reason))
    return events


def test_identity_holds_per_step_and_source():
    acc = Accounting(STEPS)
    count_events(acc, [("a", "kept", ""), ("a", "filter", "too_short"), ("b", "read", "undecodable")])
    assert acc.check() == []
    steps = {s["step"]: s["sources"] for s in acc.to_dict()["steps"]}
    assert steps["read"] == {
        "a": {"input": 2, "output": 2, "dropped": {}},
        "b": {"input": 1, "output": 0, "dropped": {"undecodable": 1}},
    }
    assert steps["filter"]["a"] == {"input": 2, "output": 1, "dropped": {"too_short": 1}}
    assert steps["write"] == {"a": {"input": 1, "output": 1, "dropped": {}}}


def test_check_names_the_step_and_source_of_a_broken_identity():
    acc = Accounting(["filter"])
    acc.inp("filter", "good", 2)
    acc.out("filter", "good", 2)
    acc.inp("filter", "leaky", 3)
    acc.out("filter", "leaky")
    acc.drop("filter", "leaky", "too_short")  # one sample vanished
    problems = acc.check()
    assert len(problems) == 1
    assert "step filter" in problems[0] and "source leaky" in problems[0]
    assert "3" in problems[0]


def test_check_names_both_steps_of_a_broken_chain():
    acc = Accounting(["read", "filter"])
    acc.inp("read", "a", 5)
    acc.out("read", "a", 5)
    acc.inp("filter", "a", 4)  # one sample left read but never reached filter
    acc.out("filter", "a", 4)
    problems = acc.check()
    assert len(problems) == 1
    assert "source a" in problems[0] and "read output 5" in problems[0] and "filter input" in problems[0]


def test_a_source_missing_from_the_next_step_breaks_the_chain():
    acc = Accounting(["read", "filter"])
    acc.inp("read", "b", 2)
    acc.out("read", "b", 2)
    assert acc.check() == ["source b: read output 2 != filter input"]


def test_added_samples_balance_the_identity():
    acc = Accounting(["select"])
    acc.inp("select", "a", 3)
    acc.out("select", "a", 5)
    assert acc.check() != []  # two samples out of nowhere
    acc.steps["select"].added["a"]["repeated"] += 2
    assert acc.check() == []


def test_bulk_drops_count_every_row():
    acc = Accounting(["read", "write"])
    acc.inp("read", "laion", 50)
    acc.drop("read", "laion", "metadata_filter", n=40)
    acc.drop("read", "laion", "metadata_filter", n=2)
    acc.drop("read", "laion", "nsfw")
    acc.out("read", "laion", 7)
    acc.inp("write", "laion", 7)
    acc.out("write", "laion", 7)
    assert acc.check() == []
    assert acc.to_dict()["steps"][0]["sources"]["laion"]["dropped"] == {"metadata_filter": 42, "nsfw": 1}
    assert acc.summary()["sources"]["laion"] == {
        "input": 50,
        "output": 7,
        "dropped": {"metadata_filter": 42, "nsfw": 1},
    }


@pytest.mark.parametrize("parts", [1, 2, 5])
def test_merging_partitions_equals_counting_everything_at_once(parts: int):
    events = random_events(300)
    whole = Accounting(STEPS)
    count_events(whole, events)
    merged = Accounting(STEPS)
    for i in range(parts):
        part = Accounting(STEPS)
        count_events(part, events[i::parts])
        merged.merge(part)
    assert merged.to_dict() == whole.to_dict()
    assert merged.summary() == whole.summary()
    assert merged.check() == []


def test_merge_appends_unknown_steps_in_their_order_and_copies_their_counts():
    acc = Accounting(["read", "write"])
    other = Accounting(["read", "write", "unique_key", "exact_image_dedup"])
    other.inp("unique_key", "a", 4)
    other.drop("unique_key", "a", "duplicate_key")
    other.steps["unique_key"].added["a"]["repeated"] += 1
    acc.merge(other)
    acc.merge(Accounting(["merge_qa"]))
    assert acc.step_names == ["read", "write", "unique_key", "exact_image_dedup", "merge_qa"]
    assert acc.steps["unique_key"].input["a"] == 4
    assert acc.steps["unique_key"].dropped["a"] == {"duplicate_key": 1}
    assert acc.steps["unique_key"].added["a"] == {"repeated": 1}
    other.inp("unique_key", "a", 100)  # the merged counts are copies
    assert acc.steps["unique_key"].input["a"] == 4


def test_to_dict_and_from_dict_round_trip_through_json():
    acc = Accounting(["read", "select", "write"])
    acc.inp("read", "b", 3)
    acc.drop("read", "b", "undecodable")
    acc.out("read", "b", 2)
    acc.inp("select", "b", 2)
    acc.steps["select"].added["b"]["repeated"] += 4
    acc.out("select", "b", 6)
    acc.inp("write", "b", 6)
    acc.out("write", "b", 6)
    data = json.loads(json.dumps(acc.to_dict()))
    back = Accounting.from_dict(data)
    assert back.step_names == acc.step_names
    assert back.to_dict() == acc.to_dict() == data
    assert data["steps"][1]["sources"]["b"]["added"] == {"repeated": 4}
    assert "added" not in data["steps"][0]["sources"]["b"]
    assert back.check() == [] and back.summary() == acc.summary()


def test_summary_totals_per_source():
    acc = Accounting(["read", "filter", "select", "write"])
    for source, n in (("zeta", 10), ("alpha", 4)):
        acc.inp("read", source, n)
    acc.inp("read", "cut_off", 0)  # a source --limit left without rows still shows
    acc.drop("read", "zeta", "undecodable")
    acc.out("read", "zeta", 9)
    acc.out("read", "alpha", 4)
    acc.inp("filter", "zeta", 9)
    acc.drop("filter", "zeta", "too_short", n=2)
    acc.drop("filter", "zeta", "undecodable")
    acc.out("filter", "zeta", 6)
    acc.inp("filter", "alpha", 4)
    acc.out("filter", "alpha", 4)
    acc.inp("select", "zeta", 6)
    acc.steps["select"].added["zeta"]["repeated"] += 3
    acc.out("select", "zeta", 9)
    acc.inp("select", "alpha", 4)
    acc.drop("select", "alpha", "not_selected", n=4)
    acc.inp("write", "zeta", 9)
    acc.out("write", "zeta", 9)
    assert acc.check() == []
    summary = acc.summary()
    assert list(summary["sources"]) == ["alpha", "cut_off", "zeta"]
    assert summary["sources"] == {
        "alpha": {"input": 4, "output": 0, "dropped": {"not_selected": 4}},
        "cut_off": {"input": 0, "output": 0, "dropped": {}},
        "zeta": {"input": 10, "output": 9, "dropped": {"too_short": 2, "undecodable": 2}, "added": {"repeated": 3}},
    }
    assert summary["steps"] == acc.to_dict()["steps"]


def test_sources_and_reasons_are_sorted_whatever_the_counting_order():
    one, two = Accounting(["read"]), Accounting(["read"])
    for acc, order in ((one, ["c", "a", "b"]), (two, ["b", "c", "a"])):
        for s in order:
            acc.inp("read", s, 2)
            acc.drop("read", s, f"r_{order.index(s)}")
            acc.drop("read", s, "common")
    for acc in (one, two):
        sources = acc.to_dict()["steps"][0]["sources"]
        assert list(sources) == ["a", "b", "c"]
        assert all(list(c["dropped"]) == sorted(c["dropped"]) for c in sources.values())
    assert list(one.summary()["sources"]) == list(two.summary()["sources"]) == ["a", "b", "c"]


def test_a_source_with_only_added_samples_is_checked_and_kept():
    acc = Accounting(["select"])
    acc.steps["select"].added["a"]["repeated"] += 2
    assert acc.check() != []
    assert "a" in acc.to_dict()["steps"][0]["sources"]
