"""Mixture builds: targets by answer share, samples and epochs; deterministic up/down-sampling; a global
seeded out-of-core shuffle; exact accounting; achieved shares within 0.5 percentage points."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.errors import CurationError, RecipeError
from curation.mixture.build import build_mixture
from curation.recipe import validate_recipe
from curation.report.audit import audit
from shards import read_manifest, verify_dataset
from shards.reader import iter_dataset
from tests.builds import CLI, tree_digest, write_recipe
from tests.helpers import png

WORDS = [f"w{i}" for i in range(40)] + ["the", "a", "of", "chart", "value"]


def _conversations(path: Path, name: str, n: int, seed: int, images: bool = False) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
            row = {"id": f"{name}-{i}", "turns": [{"user": f"question {i} of {name}?", "assistant": answer}]}
            if images:
                img = path.parent / f"{name}-{i}.png"
                img.write_bytes(png(seed=seed * 1000 + i))
                row["images"] = [img.name]
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Two built sft datasets: `text` with sources alpha/beta (text-only) and `pics` with source gamma."""
    root = tmp_path_factory.mktemp("mixture-inputs")
    _conversations(root / "alpha.jsonl", "alpha", 300, 1)
    _conversations(root / "beta.jsonl", "beta", 120, 2)
    _conversations(root / "gamma.jsonl", "gamma", 60, 3, images=True)
    out = {}
    for name, sources in (("text", ["alpha", "beta"]), ("pics", ["gamma"])):
        recipe = validate_recipe(
            {
                "name": name,
                "sources": [
                    {
                        "name": s,
                        "reader": "jsonl",
                        "record": "sft",
                        "path": str(root / f"{s}.jsonl"),
                        "image_root": str(root),
                        "fields": {"key": "id"},
                        "partition_size": 100,
                        **({"category": "text_only"} if name == "text" else {}),
                    }
                    for s in sources
                ],
                "output": {"kind": "sft", "max_samples_per_shard": 50},
            }
        )
        out[name] = build(recipe, root / "built" / name, progress=False).out
    return out


def _mixture(built: dict[str, Path], components: list[dict], **extra) -> dict:
    return {
        "kind": "mixture",
        "name": "mix",
        "seed": 7,
        "datasets": {"text": {"path": str(built["text"])}, "pics": {"path": str(built["pics"])}},
        "components": components,
        "output": {"max_samples_per_shard": 64},
        **extra,
    }


SHARES = [
    {"name": "alpha", "dataset": "text", "target": {"answer_share": 20.0}},
    {"name": "beta", "dataset": "text", "target": {"answer_share": 50.0}},  # upsampled (~2.9 epochs)
    {"name": "gamma", "dataset": "pics", "target": {"answer_share": 30.0}, "category": "captioning"},
]


def test_answer_share_targets_are_hit_within_half_a_point(built, tmp_path):
    recipe = validate_recipe(_mixture(built, SHARES))
    result = build_mixture(recipe, tmp_path / "mix", progress=False)
    mix = result.manifest.mixture
    for name, c in mix["components"].items():
        assert abs(c["achieved_share"] - c["target_share"]) <= 0.5, (name, c)
    # beta is upsampled (whole repeats plus a subsample), alpha downsampled
    assert mix["components"]["beta"]["epochs"] > 1 and mix["components"]["alpha"]["epochs"] < 1
    # the manifest's per-component numbers are the shards' content
    samples = Counter(r.source for r in iter_dataset(result.out))
    assert {k: v["samples"] for k, v in mix["components"].items()} == dict(samples)
    assert verify_dataset(result.out).ok, verify_dataset(result.out).problems
    # exact accounting: available + repeated = output + not sampled, per component
    for name, c in result.manifest.accounting["sources"].items():
        assert c["input"] + sum(c.get("added", {}).values()) == c["output"] + sum(c["dropped"].values())
        assert c["input"] == mix["components"][name]["available_samples"]
    assert result.manifest.categories == {"alpha": "text_only", "beta": "text_only", "gamma": "captioning"}


def test_audit_shows_target_and_achieved(built, tmp_path):
    recipe = validate_recipe(_mixture(built, SHARES))
    out = build_mixture(recipe, tmp_path / "mix", progress=False).out
    report = audit(out)
    assert set(report["mixture"]) == {"alpha", "beta", "gamma"}
    for c in report["mixture"].values():
        assert abs(c["achieved_share"] - c["target_share"]) <= 0.5
    shown = subprocess.run([*CLI, "audit", str(out), "--format", "markdown"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "target" in shown.stdout and "achieved" in shown.stdout and "captioning" in shown.stdout


def test_sample_and_epoch_targets_and_unique_keys(built, tmp_path):
    components = [
        {"name": "alpha", "dataset": "text", "target": {"samples": 45}},
        {"name": "beta", "dataset": "text", "target": {"epochs": 2.5}},
        {"name": "gamma", "dataset": "pics", "target": {"answer_share": 25.0}},
    ]
    result = build_mixture(validate_recipe(_mixture(built, components)), tmp_path / "mix", progress=False)
    comps = result.manifest.mixture["components"]
    assert comps["alpha"]["samples"] == 45
    assert comps["beta"]["samples"] == 300  # 2 full epochs of 120 + 60 sampled
    assert abs(comps["gamma"]["achieved_share"] - 25.0) <= 0.5
    keys = [r.key for r in iter_dataset(result.out)]
    assert len(keys) == len(set(keys))
    repeats = [r for r in iter_dataset(result.out) if r.meta["mixture"].get("repeat")]
    assert repeats and all(r.key.endswith(f"__r{r.meta['mixture']['repeat']}") for r in repeats)


def test_deterministic_shuffled_and_independent_of_bucket_size(built, tmp_path):
    recipe = _mixture(built, SHARES)
    a = build_mixture(validate_recipe(recipe), tmp_path / "a", progress=False).out
    b = build_mixture(validate_recipe(recipe), tmp_path / "b", progress=False).out
    assert tree_digest(a) == tree_digest(b)
    # many small buckets (the out-of-core path) give the same shards as one big one
    recipe["output"]["bucket_bytes"] = 1 << 16
    c = build_mixture(validate_recipe(recipe), tmp_path / "c", progress=False).out
    digest_a = {k: v for k, v in tree_digest(a).items() if k.endswith((".tar", ".parquet"))}
    digest_c = {k: v for k, v in tree_digest(c).items() if k.endswith((".tar", ".parquet"))}
    assert digest_a == digest_c
    # globally shuffled: the first shard already mixes all components
    first = read_manifest(a).shards[0]
    assert set(json.loads((a / first.stats).read_text())["sources"]) == {"alpha", "beta", "gamma"}
    # another seed, another order and subsample
    recipe["seed"] = 8
    d = build_mixture(validate_recipe(recipe), tmp_path / "d", progress=False).out
    assert [r.key for r in iter_dataset(d)] != [r.key for r in iter_dataset(a)]


def test_mixture_recipe_builds_its_datasets_and_resumes(built, tmp_path):
    inputs = built["text"].parents[1]
    sub = {
        "name": "sub",
        "sources": [
            {"name": "alpha", "reader": "jsonl", "record": "sft", "path": str(inputs / "alpha.jsonl")},
            {"name": "beta", "reader": "jsonl", "record": "sft", "path": str(inputs / "beta.jsonl")},
        ],
        "output": {"kind": "sft"},
    }
    sub_path = write_recipe(tmp_path / "sub.yaml", sub)
    mixture = {
        "kind": "mixture",
        "name": "mix2",
        "datasets": {"sub": {"recipe": str(sub_path)}},
        "components": [
            {"name": "alpha", "dataset": "sub", "target": {"answer_share": 40}},
            {"name": "beta", "dataset": "sub", "target": {"answer_share": 60}},
        ],
    }
    path = write_recipe(tmp_path / "mix2.yaml", mixture)
    out = tmp_path / "out"
    first = subprocess.run([*CLI, "build", str(path), "--out", str(out), "-q"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (out / "_datasets" / "sub" / "dataset.json").is_file()
    again = subprocess.run([*CLI, "build", str(path), "--out", str(out), "-q"], capture_output=True, text=True)
    assert again.returncode == 0 and "already built" in again.stderr
    # killed in the middle of the mixing stage: the rerun reuses the sub-build, resumes the mixing stage from the
    # shards it finished (the scatter is not made again), and gives the same output
    killed = tmp_path / "killed"
    small = ["--set", "output.bucket_bytes=65536", "--set", "output.max_samples_per_shard=7"]
    cmd = [*CLI, "build", str(path), "--out", str(killed), "-q", *small]
    reference = subprocess.run([*cmd[:6], str(tmp_path / "ref"), *cmd[7:]], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    assert len(read_manifest(tmp_path / "ref").shards) > 3
    for n in (1, 3):
        env = {**os.environ, "VLM_CURATION_CRASH_AT": f"mixture_bucket:{n}"}
        crashed = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert crashed.returncode != 0 and not (killed / "dataset.json").exists()
        scattered = (killed / "_work" / "scattered.json").stat().st_mtime_ns
        written = json.loads((killed / "_work" / "written.json").read_text())
        kept = {s["name"]: (killed / s["name"]).stat().st_mtime_ns for s in written["shards"]}
        assert written["next"] > 0 and kept, "a bucket was written: some shards are finished"
        sub_manifest = (killed / "_datasets" / "sub" / "dataset.json").stat().st_mtime_ns
        env["VLM_CURATION_CRASH_AT"] = f"mixture_bucket:{n + 1}"  # killed again, one bucket later
        again = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert again.returncode != 0
        assert (killed / "_work" / "scattered.json").stat().st_mtime_ns == scattered  # pass 1 not made again
        assert {name: (killed / name).stat().st_mtime_ns for name in kept} == kept  # finished shards kept
        rerun = subprocess.run(cmd, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert (killed / "_datasets" / "sub" / "dataset.json").stat().st_mtime_ns == sub_manifest
        assert tree_digest(killed) == tree_digest(tmp_path / "ref")
        shutil.rmtree(killed)


def test_bad_mixtures_are_clear_errors(built, tmp_path):
    with pytest.raises(RecipeError, match="should add up to 100%"):
        validate_recipe(
            _mixture(
                built,
                [
                    {"name": "alpha", "dataset": "text", "target": {"answer_share": 70}},
                    {"name": "beta", "dataset": "text", "target": {"answer_share": 40}},
                ],
            )
        )
    with pytest.raises(RecipeError, match="exactly one of answer_share, samples or epochs"):
        validate_recipe(_mixture(built, [{"name": "alpha", "dataset": "text", "target": {"samples": 3, "epochs": 1}}]))
    with pytest.raises(RecipeError, match="did you mean 'text'"):
        validate_recipe(_mixture(built, [{"name": "alpha", "dataset": "txt", "target": {"samples": 3}}]))
    recipe = validate_recipe(_mixture(built, [{"name": "delta", "dataset": "text", "target": {"samples": 3}}]))
    with pytest.raises(CurationError, match="has no source"):
        build_mixture(recipe, tmp_path / "x", progress=False)


def test_components_from_sources_built_inline(built, tmp_path):
    """A mixture can name its sources directly: an inline build, made first into _datasets/<alias>."""
    inputs = built["text"].parents[1]
    recipe = validate_recipe(
        {
            "kind": "mixture",
            "name": "inline",
            "datasets": {
                "raw": {
                    "build": {
                        "sources": [
                            {"name": s, "reader": "jsonl", "record": "sft", "path": str(inputs / f"{s}.jsonl")}
                            for s in ("alpha", "beta")
                        ],
                        "steps": [{"step": "qa_filter"}],
                        "output": {"kind": "sft"},
                    }
                }
            },
            "components": [
                {"name": "alpha", "dataset": "raw", "target": {"answer_share": 30}},
                {"name": "beta", "dataset": "raw", "target": {"answer_share": 70}},
            ],
        }
    )
    result = build_mixture(recipe, tmp_path / "out", progress=False)
    assert read_manifest(tmp_path / "out" / "_datasets" / "raw").name == "raw"
    for c in result.manifest.mixture["components"].values():
        assert abs(c["achieved_share"] - c["target_share"]) <= 0.5
    assert verify_dataset(result.out).ok
