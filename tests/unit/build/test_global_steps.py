"""The global steps over staged shards: ``unique_key`` always first, then the recipe's global steps in order,
each over what the previous ones kept, with exact accounting and per-source-pair duplicate counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from curation.build.accounting import Accounting
from curation.build.global_steps import UNIQUE_KEY, GlobalOutcome, global_steps, run_global_steps
from curation.build.messages import PartitionStats, Staged, partition_dir, staged_stem
from curation.recipe import validate_recipe
from curation.sources import Partition
from curation.steps.dedup import ExactImageDedup, UniqueKey
from schemas import SftRecord, Turn
from shards import ShardWriter
from shards.manifest import ShardInfo
from tests.helpers import png

Row = tuple[str, str, int | None]  # key, source, image seed (None: text-only)

# partition -> staged shards -> rows, in dataset order
LAYOUT: dict[int, list[list[Row]]] = {
    0: [[("k0", "a", 1), ("k1", "b", 2)], [("k2", "a", None), ("k3", "b", 5)]],
    1: [
        [("k0", "b", 1), ("k4", "b", 3)],  # k0 again (same image too): a duplicate key of a's k0
        [("k1", "a", 6), ("k5", "a", 1), ("k6", "a", 2), ("k7", "a", None)],  # k1 again; k5, k6: images again
    ],
    2: [[("k8", "b", 6), ("k2", "b", None)]],  # k8: the image of the dropped k1 (a); k2 again
}


def record(key: str, source: str, seed: int | None) -> SftRecord:
    images = [] if seed is None else [png(seed=seed)]
    return SftRecord(key=key, source=source, meta={}, images=images, turns=[Turn(user=f"q {key}", assistant="a")])


def stage(work: Path, layout: dict[int, list[list[Row]]]) -> tuple[Staged, Accounting]:
    """Stage partitions as ``process_partition`` does (shards named by ``staged_stem``, then stats.json), and
    the accounting of a ``read`` step that kept every row."""
    acc = Accounting(["read"])
    n = 0
    for gid, shards in layout.items():
        folder = partition_dir(work, gid)
        infos: list[ShardInfo] = []
        for number, rows in enumerate(shards):
            with ShardWriter(folder, staged_stem, start_index=number) as writer:
                for key, source, seed in rows:
                    writer.write(record(key, source, seed), origin=f"in.jsonl:{n}")
                    acc.inp("read", source)
                    acc.out("read", source)
                    n += 1
            infos += writer.shards
        stats = PartitionStats(
            gid=gid, partition=Partition("a", gid, 0), accounting={}, shards=infos, rejects=[], reports={}, seconds=0
        )
        stats.write(folder)
    return Staged.read(work, sorted(layout)), acc


def recipe(*steps: dict[str, Any]):
    return validate_recipe(
        {
            "kind": "build",
            "name": "r",
            "sources": [{"name": s, "reader": "jsonl", "path": f"{s}.jsonl", "record": "sft"} for s in ("a", "b")],
            "steps": [{"step": "text_length"}, *steps],
            "output": {"kind": "sft"},
        },
        "t",
    )


def dropped(outcome: GlobalOutcome) -> dict[tuple[int, int, str], tuple[str, str, str, str | None]]:
    return {
        (*where, key): (d.step, d.reason, d.source, d.other_source)
        for where, drops in outcome.drops.items()
        for key, d in drops.items()
    }


def counts(acc: Accounting, step: str) -> dict[str, Any]:
    return acc.steps[step].to_dict()


KEY_DROPS = {
    (1, 0, "k0"): (UNIQUE_KEY, "duplicate_key", "b", "a"),
    (1, 1, "k1"): (UNIQUE_KEY, "duplicate_key", "a", "b"),
    (2, 0, "k2"): (UNIQUE_KEY, "duplicate_key", "b", "a"),
}


def test_global_steps_are_unique_key_then_the_recipes_in_order():
    assert global_steps(recipe()) == [(UNIQUE_KEY, UniqueKey, None)]
    r = recipe({"step": "exact_image_dedup"})
    assert global_steps(r) == [(UNIQUE_KEY, UniqueKey, None), ("exact_image_dedup", ExactImageDedup, r.steps[1])]
    named = recipe({"step": "exact_image_dedup", "name": "same_pixels"})
    assert [label for label, _, _ in global_steps(named)] == [UNIQUE_KEY, "same_pixels"]


def test_duplicate_keys_are_dropped_and_the_first_in_dataset_order_wins(tmp_path: Path):
    staged, acc = stage(tmp_path / "_work", LAYOUT)
    outcome = run_global_steps(recipe(), staged, acc)
    assert dropped(outcome) == KEY_DROPS  # no image duplicates without the step
    assert outcome.rewrites == []
    detail = outcome.drops[(1, 0)]["k0"].detail
    assert detail == "key also used by in.jsonl:0"  # the first k0 (partition 0) is kept
    assert outcome.drops[(2, 0)]["k2"].detail == "key also used by in.jsonl:2"
    assert acc.step_names == ["read", UNIQUE_KEY]
    assert counts(acc, UNIQUE_KEY) == {
        "a": {"input": 6, "output": 5, "dropped": {"duplicate_key": 1}},
        "b": {"input": 6, "output": 4, "dropped": {"duplicate_key": 2}},
    }
    assert acc.check() == []
    assert outcome.duplicate_pairs == {UNIQUE_KEY: {"a": {"b": 1}, "b": {"a": 2}}}


def test_image_duplicates_are_dropped_after_key_duplicates(tmp_path: Path):
    staged, acc = stage(tmp_path / "_work", LAYOUT)
    outcome = run_global_steps(recipe({"step": "exact_image_dedup"}), staged, acc)
    assert dropped(outcome) == {
        **KEY_DROPS,
        (1, 1, "k5"): ("exact_image_dedup", "duplicate_image", "a", "a"),  # the image of k0 (a)
        (1, 1, "k6"): ("exact_image_dedup", "duplicate_image", "a", "b"),  # the image of k1 (b)
    }
    # k0 of partition 1 has k0's image too, but unique_key dropped it: exact_image_dedup never sees it;
    # k8 has the image of partition 1's k1, which unique_key dropped: k8 is the first with it and stays.
    assert outcome.drops[(1, 1)]["k5"].detail == "same images as k0 (in.jsonl:0)"
    assert acc.step_names == ["read", UNIQUE_KEY, "exact_image_dedup"]
    assert counts(acc, "exact_image_dedup") == {
        "a": {"input": 5, "output": 3, "dropped": {"duplicate_image": 2}},
        "b": {"input": 4, "output": 4, "dropped": {}},
    }
    assert acc.check() == []
    assert outcome.duplicate_pairs == {
        UNIQUE_KEY: {"a": {"b": 1}, "b": {"a": 2}},
        "exact_image_dedup": {"a": {"a": 1, "b": 1}},
    }
    kept = {
        key
        for gid, shards in LAYOUT.items()
        for number, rows in enumerate(shards)
        for key, _, _ in rows
        if key not in outcome.drops.get((gid, number), {})
    }
    assert kept == {"k0", "k1", "k2", "k3", "k4", "k7", "k8"}
    assert sum(acc.steps["exact_image_dedup"].output.values()) == len(kept)


def test_each_global_step_takes_the_previous_output_as_input(tmp_path: Path):
    staged, acc = stage(tmp_path / "_work", LAYOUT)
    r = recipe({"step": "exact_image_dedup", "name": "img1"}, {"step": "exact_image_dedup", "name": "img2"})
    outcome = run_global_steps(r, staged, acc)
    assert acc.step_names == ["read", UNIQUE_KEY, "img1", "img2"]
    for before, after in zip(acc.step_names, acc.step_names[1:], strict=False):
        assert acc.steps[after].input == acc.steps[before].output
    assert counts(acc, "img2") == {  # img1 dropped every image duplicate: nothing left for img2
        "a": {"input": 3, "output": 3, "dropped": {}},
        "b": {"input": 4, "output": 4, "dropped": {}},
    }
    assert set(outcome.duplicate_pairs) == {UNIQUE_KEY, "img1"}
    assert acc.check() == []


def test_text_only_samples_are_never_image_duplicates(tmp_path: Path):
    layout: dict[int, list[list[Row]]] = {0: [[("t0", "a", None), ("t1", "a", None)]], 1: [[("t2", "b", None)]]}
    staged, acc = stage(tmp_path / "_work", layout)
    outcome = run_global_steps(recipe({"step": "exact_image_dedup"}), staged, acc)
    assert outcome.drops == {} and outcome.duplicate_pairs == {}
    assert counts(acc, "exact_image_dedup") == {
        "a": {"input": 2, "output": 2, "dropped": {}},
        "b": {"input": 1, "output": 1, "dropped": {}},
    }
    assert acc.check() == []


@pytest.mark.parametrize("with_image_step", [False, True])
def test_a_dataset_without_duplicates_passes_unchanged(tmp_path: Path, with_image_step: bool):
    layout: dict[int, list[list[Row]]] = {0: [[("x0", "a", 10)], [("x1", "b", 11)]], 3: [[("x2", "a", 12)]]}
    staged, acc = stage(tmp_path / "_work", layout)
    steps = [{"step": "exact_image_dedup"}] if with_image_step else []
    outcome = run_global_steps(recipe(*steps), staged, acc)
    assert outcome.drops == {} and outcome.duplicate_pairs == {}
    assert acc.steps[acc.step_names[-1]].output == acc.steps["read"].output
    assert acc.check() == []
