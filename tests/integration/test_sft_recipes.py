"""The three built-in SFT recipes build on test inputs in the real layouts, through the CLI, as a user runs them:
cauldron_filtered (50 configs, filtered, deduplicated, decontaminated), idefics3_sft (the full Table 3
mixture), llava665k (the LLaVA-1.5 baseline)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from curation.sources.cauldron_catalog import cauldron_configs, table3_rows
from shards import read_manifest, verify_dataset
from tests.builds import CLI, tree_digest
from tests.idefics3_data import make_all

pytestmark = pytest.mark.slow


def _curate(*args: str) -> subprocess.CompletedProcess:
    run = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return make_all(tmp_path_factory.mktemp("sft-inputs"))


def _sets(inputs: dict, *names: str) -> list[str]:
    out = []
    for name in names:
        out += ["--set", f"vars.{name}={inputs['vars'][name]}"]
    return out


@pytest.fixture(scope="module")
def idefics3(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("idefics3") / "mix"
    _curate(
        "build", "idefics3_sft", "--out", str(out), "-w", "2", "-q",
        *_sets(inputs, "cauldron", "benchmarks", "sft_root", "docmatix"),
        "--set", "total_answer_tokens=400000",
    )  # fmt: skip
    return out


def test_cauldron_filtered_builds_with_exact_accounting_and_planted_cases(idefics3, inputs):
    cauldron = idefics3 / "_datasets" / "cauldron"  # the mixture built it with the recipe cauldron_filtered
    m = read_manifest(cauldron)
    assert m.recipe["name"] == "cauldron_filtered"
    sources = m.accounting["sources"]
    assert set(sources) == set(cauldron_configs())
    for config, want in inputs["cauldron"].items():
        c = sources[config]
        assert c["input"] == want["rows"] == c["output"] + sum(c["dropped"].values()), config
        assert c["dropped"] == {k: v for k, v in want.items() if k != "rows"}, config
    assert m.categories == cauldron_configs()
    assert verify_dataset(cauldron).ok
    audit = json.loads(_curate("audit", str(cauldron), "-f", "json").stdout)
    assert audit["contamination"] == {
        "mathvista": {"chartqa": {"question": 1}},
        "mmmu": {"ai2d": {"image": 1}},
    }
    assert audit["duplicates"]["near_dup_images"] == {"vqav2": {"vqav2": 1}}


def test_idefics3_sft_hits_every_table3_share(idefics3, inputs):
    m = read_manifest(idefics3)
    comps = m.mixture["components"]
    rows = table3_rows()
    assert set(comps) == {r.name for r in rows}
    printed = sum(r.paper.mix_percent for r in rows)
    for r in rows:
        c = comps[r.name]
        assert c["category"] == r.category
        assert c["target"] == {"answer_share": r.paper.mix_percent}
        assert c["target_share"] == pytest.approx(100 * r.paper.mix_percent / printed, abs=1e-3)
        assert abs(c["achieved_share"] - c["target_share"]) <= 0.5, (r.name, c)
    # exact accounting (available + repeats = output + not sampled) and a valid dataset
    for name, c in m.accounting["sources"].items():
        assert c["input"] + sum(c.get("added", {}).values()) == c["output"] + sum(c["dropped"].values()), name
    assert verify_dataset(idefics3).ok
    shown = _curate("audit", str(idefics3)).stdout
    assert "target versus achieved" in shown and "sharegpt4o" in shown and "text_only" in shown
    extras = read_manifest(idefics3 / "_datasets" / "extras")
    assert {k: v["input"] for k, v in extras.accounting["sources"].items()} == inputs["extras"]
    assert all(v["output"] == v["input"] for v in extras.accounting["sources"].values())


def test_llava665k_builds(tmp_path):
    from tests.llava_data import make_llava_tree

    tree = make_llava_tree(tmp_path / "llava")
    want = tree.expected["llava665k"]
    out = tmp_path / "out"
    _curate(
        "build", "llava665k", "--out", str(out), "-q", "--set", f"vars.llava={tree.llava665k.parent}",
        "--set", f"sources.llava665k.image_root={tree.image_root}",
    )  # fmt: skip
    m = read_manifest(out)
    c = m.accounting["sources"]["llava665k"]
    assert c["input"] == want.input and c["output"] == want.output
    assert c["dropped"] == want.dropped  # the missing OCR-VQA image and the malformed records, by reason
    assert verify_dataset(out).ok


def test_cauldron_filtered_on_ray_is_the_local_build(idefics3, inputs, tmp_path):
    """The same recipe with --executor ray (a Ray started by the build): decontamination indexes, near-duplicate
    and text-dedup global steps, the commit on Ray; every file equals the local build's."""
    pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
    out = tmp_path / "cauldron"
    _curate(
        "build",
        "cauldron_filtered",
        "--out",
        str(out),
        "-q",
        "--executor",
        "ray",
        *_sets(inputs, "cauldron", "benchmarks"),
    )
    assert tree_digest(out) == tree_digest(idefics3 / "_datasets" / "cauldron")
