"""The selection engine with command trainers/evaluators whose outcomes are known by construction (fast), then
the toy world with a real tiny VLM trained per trial (slow): decisions, reports, cache hits, a crashing trial,
resume after a killed sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from curation.recipe import validate_recipe
from curation.selection.sweep import run_selection
from tests.builds import CLI

# A "trainer" that records what it trained on; an "evaluator" that scores a mixture by construction:
# helpful components +10 each on their skill, poisoned -20, others 0 (the base scores 50 on each skill).
TRAIN = r"""
import json, os, sys, pathlib, collections
import pyarrow.parquet as pq
mixture, out, seed, trial = sys.argv[1:5]
counter = pathlib.Path(os.environ["COUNTER"])
with open(counter, "a") as f:
    f.write(trial + "\n")
crash = pathlib.Path(trial) / "crash-once"
names = [c["name"] for c in json.loads((pathlib.Path(trial) / "trial.json").read_text())["components"]]
if os.environ.get("CRASH_ON") in names:
    if os.environ.get("CRASH_ALWAYS") or not crash.exists():
        crash.write_text("x")
        sys.exit(3)
comps = collections.Counter(pq.read_table(mixture, columns=["component"]).column("component").to_pylist())
pathlib.Path(out, "components.json").write_text(json.dumps(sorted(comps)))
pathlib.Path(out, "metrics.json").write_text(json.dumps({"samples": sum(comps.values())}))
"""
EVALUATE = r"""
import json, sys, pathlib
model, out = sys.argv[1:3]
comps = json.loads(pathlib.Path(model, "components.json").read_text())
effect = {"color_good": ("color", 10), "color_poison": ("color", -20), "shape_good": ("shape", 10)}
skills = {"color": 50.0, "shape": 50.0}
for c in comps:
    if c in effect:
        skills[effect[c][0]] += effect[c][1]
pathlib.Path(out, "metrics.json").write_text(json.dumps({f"{k}/accuracy": v for k, v in skills.items()}))
"""


def _dataset(root: Path, name: str, n: int = 6) -> dict:
    path = root / f"{name}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"{name}{i}", "turns": [{"user": f"q{i}?", "assistant": f"a {i}"}]}) + "\n"
            for i in range(n)
        )
    )
    return {"build": {"sources": [{"name": name, "reader": "jsonl", "record": "sft", "path": str(path),
                                   "fields": {"key": "id"}}], "output": {"kind": "sft"}}}  # fmt: skip


def _recipe(root: Path, counter: Path, **extra) -> dict:
    (root / "train.py").write_text(TRAIN)
    (root / "evaluate.py").write_text(EVALUATE)
    names = ["base", "color_good", "color_poison", "shape_good", "neutral"]

    def comp(name: str) -> dict:
        return {"name": name, "dataset": name, "target": {"epochs": 1}}

    return {
        "kind": "selection",
        "name": "known",
        "datasets": {n: _dataset(root, n) for n in names},
        "baseline": {"components": [comp("base")]},
        "categories": [
            {"name": "color", "candidates": [{"name": "color_good", "components": [comp("color_good")]},
                                             {"name": "color_poison", "components": [comp("color_poison")]}]},
            {"name": "shape", "candidates": [{"name": "shape_good", "components": [comp("shape_good")]},
                                             {"name": "neutral", "components": [comp("neutral")]}]},
        ],
        "trainer": {"type": "command", "command": [sys.executable, str(root / "train.py"), "{mixture}", "{output}",
                                                   "{seed}", "{trial_dir}"], "env": {"COUNTER": str(counter)}},
        "evaluator": {"type": "command", "command": [sys.executable, str(root / "evaluate.py"), "{model}", "{output}"]},
        "score": {"metrics": {"color/accuracy": 1.0, "shape/accuracy": 1.0}},
        "decision": {"tolerance": 0.0},
        "launcher": {"type": "local", "max_concurrent": 2},
        "final_all_candidates": True,
        **extra,
    }  # fmt: skip


def _decisions(doc: dict) -> dict[str, str]:
    return {c["name"]: c["decision"] for cat in doc["categories"] for c in cat["candidates"]}


def test_decisions_reports_and_cache_hits(tmp_path):
    counter = tmp_path / "trained.txt"
    recipe = validate_recipe(_recipe(tmp_path, counter))
    doc = run_selection(recipe, tmp_path / "sweep", progress=False)
    assert _decisions(doc) == {
        "color_good": "accepted",
        "color_poison": "rejected",
        "shape_good": "accepted",
        "neutral": "accepted",
    }  # fmt: skip  (neutral is comparable: the tolerance is 0)
    assert [p["score"] for p in doc["progression"]] == [50.0, 55.0, 60.0]
    assert doc["all_candidates"]["score"] < doc["all_candidates"]["selected_score"]  # poison hurts the lot
    assert [c["name"] for c in doc["selected_components"]] == ["base", "color_good", "shape_good", "neutral"]
    report = json.loads((tmp_path / "sweep" / "report.json").read_text())
    cat = report["categories"][0]
    assert {c["name"]: (c["score"], c["baseline_score"], c["decision"]) for c in cat["candidates"]} == {
        "color_good": (55.0, 50.0, "accepted"), "color_poison": (40.0, 50.0, "rejected")}  # fmt: skip
    assert cat["candidates"][1]["metric_deltas"] == {"color/accuracy": -20.0, "shape/accuracy": 0.0}
    for name in ("report.md", "report.html", "progression.png", "selected_mixture.yaml"):
        assert (tmp_path / "sweep" / name).stat().st_size > 0
    selected = yaml.safe_load((tmp_path / "sweep" / "selected_mixture.yaml").read_text())
    assert validate_recipe(selected).kind == "mixture"
    trained = counter.read_text().splitlines()
    # baseline, 2 color candidates, 2 shape candidates, the merged baseline after shape, all candidates: the
    # merged baseline after color (base + color_good) is the color_good trial itself, a cache hit
    assert len(trained) == len(set(trained)) == 7
    again = run_selection(validate_recipe(_recipe(tmp_path, counter)), tmp_path / "sweep", progress=False)
    assert counter.read_text().splitlines() == trained  # every trial was a cache hit
    assert _decisions(again) == _decisions(doc)


def test_a_crashing_trial_is_retried_and_a_failing_one_recorded(tmp_path):
    counter = tmp_path / "trained.txt"
    data = _recipe(tmp_path, counter, retries=1)
    data["trainer"]["env"].update(CRASH_ON="color_good")  # crashes once, then succeeds on the retry
    doc = run_selection(validate_recipe(data), tmp_path / "once", progress=False)
    assert _decisions(doc)["color_good"] == "accepted"
    data["trainer"]["env"].update(CRASH_ON="shape_good", CRASH_ALWAYS="1")
    doc = run_selection(validate_recipe(data), tmp_path / "always", progress=False)
    shape = {c["name"]: c for c in doc["categories"][1]["candidates"]}["shape_good"]
    assert shape["decision"] == "rejected" and shape["reason"] == "failed"
    assert shape["failed"][0]["attempts"] == 2 and Path(shape["failed"][0]["log"]).is_file()
    assert _decisions(doc)["neutral"] == "accepted"  # the sweep went on


def test_a_killed_sweep_resumes_without_retraining(tmp_path):
    counter = tmp_path / "trained.txt"
    path = tmp_path / "known.yaml"
    data = _recipe(tmp_path, counter)
    data["launcher"]["max_concurrent"] = 1
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "sweep"
    proc = subprocess.Popen([*CLI, "select", str(path), "--out", str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and (not counter.exists() or len(counter.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name for p in (out / "trials").glob("*/result.json")}
    assert 0 < len(done_before) < 7
    rerun = subprocess.run([*CLI, "select", str(path), "--out", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    trained = counter.read_text().splitlines()
    retrained = [t for t in trained if Path(t).name in done_before]
    assert len(retrained) == len(done_before)  # finished trials ran once, in the killed sweep only
    assert json.loads((out / "report.json").read_text())["categories"][0]["accepted"] == ["color_good"]


@pytest.mark.slow
def test_toy_world_accepts_the_helpful_and_rejects_the_poisoned(tmp_path):
    """`curate demo --select`: a tiny Idefics3 model trained per trial on 2 CPU cores."""
    run = subprocess.run([*CLI, "demo", "--select", "--out", str(tmp_path)], capture_output=True, text=True,
                         timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((tmp_path / "sweep" / "report.json").read_text())
    decisions = _decisions(doc)
    assert decisions["color_good"] == "accepted" and decisions["shape_good"] == "accepted"
    assert decisions["color_poison"] == "rejected"
    assert doc["progression"][-1]["score"] > doc["progression"][0]["score"]
    # indiscriminately training on every candidate (the poisoned one included) is worse: the paper's Table 5
    assert doc["all_candidates"]["score"] < doc["all_candidates"]["selected_score"]
    rerun = subprocess.run([*CLI, "demo", "--select", "--out", str(tmp_path)], capture_output=True, text=True)
    assert rerun.returncode == 0 and " started" not in rerun.stderr and "cached" in rerun.stderr


PLANS = Path(__file__).parents[1] / "fixtures" / "ablation_plans"  # three real ablation plans
ABLATION_TRAIN = r"""
import json, os, sys, pathlib
out = sys.argv[1]
metrics = {"encoder": os.environ["ENCODER"], "seqlen": os.environ["SEQLEN"]}
pathlib.Path(out, "metrics.json").write_text(json.dumps(metrics))
"""
ABLATION_EVAL = r"""
import json, sys, pathlib
model, out = sys.argv[1:3]
m = json.loads(pathlib.Path(model, "metrics.json").read_text())
vqa = 60.0 + (5.0 if m["encoder"] == "ViT" else 0.0) + int(m["seqlen"]) / 1024
pathlib.Path(out, "metrics.json").write_text(json.dumps({"vqav2/accuracy": vqa, "gqa/accuracy": vqa - 10}))
"""


def test_ablation_plan_sweep_reports_each_replacement_against_the_unablated_trial(tmp_path):
    plan = PLANS / "ablation-plan-vlm-pretraining-with-image-data.md"
    (tmp_path / "train.py").write_text(ABLATION_TRAIN)
    (tmp_path / "evaluate.py").write_text(ABLATION_EVAL)
    spec = {
        "name": "pretraining-ablation",
        "base": {
            "datasets": {"base": _dataset(tmp_path, "base")},
            "components": [{"name": "base", "dataset": "base", "target": {"epochs": 1}}],
            "trainer": {"type": "command", "command": [sys.executable, str(tmp_path / "train.py"), "{output}"],
                        "env": {"ENCODER": "SigLIP", "SEQLEN": "1024"}},
            "evaluator": {"type": "command", "command": [sys.executable, str(tmp_path / "evaluate.py"), "{model}",
                                                         "{output}"]},
            "score": {"metrics": {"vqav2/accuracy": 1.0, "gqa/accuracy": 1.0}},
            "launcher": {"type": "local", "max_concurrent": 2},
        },
        "parts": {
            "image encoder": {"key": "trainer.env.ENCODER"},
            "sequence length": {"key": "trainer.env.SEQLEN", "values": {"512": "512", "2048": "2048"}},
        },
        "metrics": {"VQA-v2": "vqav2/accuracy", "GQA": "gqa/accuracy"},
    }  # fmt: skip
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run = subprocess.run([*CLI, "sweep", str(plan), "--spec", str(spec_path), "--out", str(tmp_path / "sweep")],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "sweep" / "ablation_report.json").read_text())
    assert doc["unablated"]["score"] == pytest.approx(56.0)
    got = {(v["part"], v["replacement"]): (v["score"], v["metric_deltas"]["vqav2/accuracy"]) for v in doc["variants"]}
    assert got == {
        ("image encoder", "ViT"): (pytest.approx(61.0), pytest.approx(5.0)),
        ("image encoder", "ResNet"): (pytest.approx(56.0), pytest.approx(0.0)),
        ("sequence length", "512"): (pytest.approx(55.5), pytest.approx(-0.5)),
        ("sequence length", "2048"): (pytest.approx(57.0), pytest.approx(1.0)),
    }
    assert doc["unmapped_metrics"] == ["TextVQA"]
    assert "| ViT |" in run.stdout
    unmapped = dict(spec, parts={"image encoder": {"key": "trainer.env.ENCODER"}})
    spec_path.write_text(yaml.safe_dump(unmapped))
    bad = subprocess.run([*CLI, "sweep", str(plan), "--spec", str(spec_path), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "'sequence length' is not mapped in the spec" in bad.stderr
