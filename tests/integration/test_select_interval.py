"""The interval rule end to end: command trials whose per-item answers are noisy by construction (a known effect
per candidate plus item-level noise that changes with the mixture and the seed), sequential seeds for the
undecided, and the intervals in the report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from curation.errors import CurationError
from curation.recipe import validate_recipe
from curation.selection.decision_accuracy import markdown, measure, rules
from curation.selection.sweep import run_selection
from tests.integration.test_select import _dataset

TRAIN = r"""
import json, sys, pathlib
mixture, out, seed, trial = sys.argv[1:5]
names = [c["name"] for c in json.loads((pathlib.Path(trial) / "trial.json").read_text())["components"]]
pathlib.Path(out, "model.json").write_text(json.dumps({"components": sorted(names), "seed": int(seed)}))
pathlib.Path(out, "metrics.json").write_text("{}")
with open(pathlib.Path(trial).parent.parent / "trained.txt", "a") as f:
    f.write(f"{'+'.join(sorted(names))}@{seed}\n")
"""
# 400 items; an item is answered right with probability 0.5 + effect, drawn afresh per (mixture, seed, item):
# a neutral candidate differs from the baseline by noise alone.
EVALUATE = r"""
import hashlib, json, sys, pathlib
model, out = sys.argv[1:3]
m = json.loads(pathlib.Path(model, "model.json").read_text())
effect = {"strong": 0.25, "poison": -0.3, "neutral": 0.0}
p = 0.5 + sum(effect.get(c, 0.0) for c in m["components"])
rows, right = [], 0
for i in range(400):
    h = hashlib.sha256(f"{'+'.join(m['components'])}|{m['seed']}|{i}".encode()).digest()
    ok = int.from_bytes(h[:8], "little") / 2**64 < p
    right += ok
    rows.append({"benchmark": "quiz", "item": f"q{i}", "metric": "accuracy", "value": 100.0 * ok})
pathlib.Path(out, "metrics.json").write_text(json.dumps({"quiz/accuracy": 100.0 * right / 400}))
pathlib.Path(out, "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
"""


def _recipe(root: Path, rule: str) -> dict:
    (root / "train.py").write_text(TRAIN)
    (root / "evaluate.py").write_text(EVALUATE)
    names = ["base", "strong", "poison", "neutral"]

    def comp(name: str) -> dict:
        return {"name": name, "dataset": name, "target": {"epochs": 1}}

    return {
        "kind": "selection",
        "name": "noisy",
        "datasets": {n: _dataset(root, n) for n in names},
        "baseline": {"components": [comp("base")]},
        "categories": [{"name": "all", "candidates": [{"name": n, "components": [comp(n)]} for n in names[1:]]}],
        "trainer": {"type": "command", "command": [sys.executable, str(root / "train.py"), "{mixture}", "{output}",
                                                   "{seed}", "{trial_dir}"]},
        "evaluator": {"type": "command", "command": [sys.executable, str(root / "evaluate.py"), "{model}", "{output}"]},
        "score": {"metrics": {"quiz/accuracy": 1.0}},
        "decision": {"rule": rule, "tolerance": 1.0, "max_seeds": 3, "resamples": 1000},
        "launcher": {"type": "local", "max_concurrent": 2},
    }  # fmt: skip


def test_interval_rule_runs_more_seeds_only_for_the_undecided(tmp_path: Path) -> None:
    doc = run_selection(validate_recipe(_recipe(tmp_path, "interval")), tmp_path / "sweep", progress=False)
    rows = {c["name"]: c for c in doc["categories"][0]["candidates"]}
    assert rows["strong"]["decision"] == "accepted" and rows["strong"]["reason"] == "interval"
    assert rows["poison"]["decision"] == "rejected" and rows["poison"]["reason"] == "interval"
    assert rows["strong"]["seeds"] == rows["poison"]["seeds"] == [0]  # clear at once: one seed each
    assert rows["strong"]["ci_low"] > -1.0 and rows["poison"]["ci_high"] < -1.0
    neutral = rows["neutral"]
    assert neutral["seeds"] == [0, 1, 2] and neutral["undecided"] is True and neutral["reason"] == "undecided"
    assert neutral["ci_low"] < -1.0 <= neutral["ci_high"]  # still straddling -tolerance after three seeds
    assert neutral["interval_basis"] == "items and seeds" and neutral["paired_items"] == 400
    assert neutral["decision"] == ("accepted" if neutral["delta"] >= -1.0 else "rejected")  # the delta decides
    trained = (tmp_path / "sweep" / "trained.txt").read_text().split()
    # seed 0 of the baseline and the three candidates, then seeds 1 and 2 of the baseline and neutral only,
    # then the merged baseline (base + strong, and neutral when it was accepted) on seed 0
    assert sorted(t for t in trained if "@1" in t or "@2" in t) == [
        "base+neutral@1", "base+neutral@2", "base@1", "base@2"]  # fmt: skip
    report = json.loads((tmp_path / "sweep" / "report.json").read_text())
    assert report["decision"]["rule"] == "interval" and report["trials"] == len(trained)
    assert {"ci_low", "ci_high", "seeds", "trial_seconds", "gpu_seconds"} <= set(
        report["categories"][0]["candidates"][0]
    )
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "undecided" in md and "[" in md  # intervals and the fallback are shown


def test_tolerance_rule_decides_on_the_delta_with_one_seed(tmp_path: Path) -> None:
    doc = run_selection(validate_recipe(_recipe(tmp_path, "tolerance")), tmp_path / "sweep", progress=False)
    rows = {c["name"]: c for c in doc["categories"][0]["candidates"]}
    assert all(r["seeds"] == [0] and r["reason"] == "score" for r in rows.values())
    assert rows["strong"]["decision"] == "accepted" and rows["poison"]["decision"] == "rejected"
    assert rows["neutral"]["ci_low"] is not None  # the interval is reported even where the rule ignores it


def test_decision_accuracy_compares_the_rules_on_shared_trials(tmp_path: Path) -> None:
    truth = {"strong": "accepted", "poison": "rejected", "neutral": "accepted"}

    def make_world(directory: Path, seed: int) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        recipe = _recipe(directory, "tolerance")
        recipe["evaluator"]["env"] = {"WORLD": str(seed)}  # another world: other trial ids, other noise
        path = directory / "selection.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    doc = measure([0, 1], tmp_path, make_world, truth, rules(tolerance=1.0, max_seeds=3))
    summary = {s["rule"]: s for s in doc["summary"]}
    assert list(summary) == ["tolerance, 1 seed", "tolerance, mean of 3 seeds", "interval, up to 3 seeds"]
    for s in summary.values():
        assert s["per_candidate"]["strong"] == s["per_candidate"]["poison"] == 1.0
    assert summary["tolerance, 1 seed"]["trials_per_world"] == 4  # the baseline and three candidates, seed 0
    assert summary["tolerance, mean of 3 seeds"]["trials_per_world"] == 12
    assert 4 < summary["interval, up to 3 seeds"]["trials_per_world"] < 12  # extra seeds for the undecided only
    assert len(doc["runs"]) == 6 and {r["world"] for r in doc["runs"]} == {0, 1}
    trained = (tmp_path / "world-0" / "sweep" / "trained.txt").read_text().split()
    assert len([t for t in trained if t.startswith("base@")]) == 3  # each baseline trial trained once for all rules
    assert "| interval, up to 3 seeds |" in markdown(doc)


def _questions_dataset(root: Path, name: str, questions: list[str]) -> dict:
    path = root / f"{name}.jsonl"
    rows = [{"id": f"{name}{i}", "turns": [{"user": q, "assistant": "yes"}]} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"build": {"sources": [{"name": name, "reader": "jsonl", "record": "sft", "path": str(path),
                                   "fields": {"key": "id"}}], "output": {"kind": "sft"}}}  # fmt: skip


def _leaky_recipe(root: Path, action: str) -> dict:
    recipe = _recipe(root, "tolerance")
    clean = [f"is there a red {w} on the table in this picture" for w in ("cup", "pen", "car")]
    leaked = "how many people are standing near the blue bus"
    recipe["datasets"]["strong"] = _questions_dataset(root, "strong", [*clean, leaked])
    bench = root / "bench.jsonl"
    bench.write_text(json.dumps({"question": "How many people are standing near the blue bus?"}) + "\n")
    recipe["contamination"] = {"action": action, "benchmarks": [{"name": "quizbench", "questions": str(bench)}]}
    return recipe


def test_a_trial_trained_on_its_own_benchmark_is_flagged_with_the_overlap(tmp_path: Path) -> None:
    doc = run_selection(validate_recipe(_leaky_recipe(tmp_path, "flag")), tmp_path / "sweep", progress=False)
    rows = {c["name"]: c for c in doc["categories"][0]["candidates"]}
    found = rows["strong"]["contamination"]
    assert found["checked"] and found["samples"] == 1 and found["of"] == 10  # 6 base rows + 4 of its own
    assert found["by_benchmark"] == {"quizbench": 1}
    assert found["examples"] == [
        {"key": "strong3", "shard": "strong-000000.tar", "reason": "contaminated_question:quizbench"}]  # fmt: skip
    assert rows["neutral"]["contamination"]["samples"] == 0
    assert doc["categories"][0]["baseline_contamination"]["samples"] == 0
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "strong: 1 of 10 training samples overlap the evaluation benchmarks (quizbench: 1)" in md


def test_refuse_stops_the_sweep_before_the_contaminated_trial_trains(tmp_path: Path) -> None:
    with pytest.raises(CurationError, match=r"trial all/strong: 1 training samples overlap .*quizbench.*strong3"):
        run_selection(validate_recipe(_leaky_recipe(tmp_path, "refuse")), tmp_path / "sweep", progress=False)
    trained = tmp_path / "sweep" / "trained.txt"
    assert not trained.exists() or not any("strong" in t for t in trained.read_text().split())


def test_no_benchmark_data_means_not_checked_and_says_why(tmp_path: Path) -> None:
    doc = run_selection(validate_recipe(_recipe(tmp_path, "tolerance")), tmp_path / "sweep", progress=False)
    found = doc["categories"][0]["candidates"][0]["contamination"]
    assert found == {
        "check": "flag:unchecked",
        "checked": False,
        "why": "the evaluator names no benchmark data (contamination.benchmarks)",
    }


def test_a_model_without_a_chat_template_stops_the_sweep_before_any_trial(tmp_path: Path) -> None:
    from curation.selection.tiny_vlm import build_tiny_idefics3

    model = build_tiny_idefics3(tmp_path / "model")
    (model / "chat_template.jinja").unlink()
    recipe = _recipe(tmp_path, "tolerance")
    recipe["trainer"] = {"type": "reference", "model": str(model), "max_steps": 1, "device": "cpu"}
    with pytest.raises(CurationError, match=r"trial baseline: the pre-flight check .* no chat template"):
        run_selection(validate_recipe(recipe), tmp_path / "sweep", progress=False)
    assert not list((tmp_path / "sweep" / "trials").glob("*/trial.log"))  # nothing started


def test_min_seeds_makes_even_clear_cases_wait_for_a_second_seed(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "interval")
    recipe["decision"]["min_seeds"] = 2
    doc = run_selection(validate_recipe(recipe), tmp_path / "sweep", progress=False)
    rows = {c["name"]: c for c in doc["categories"][0]["candidates"]}
    assert rows["strong"]["seeds"] == rows["poison"]["seeds"] == [0, 1]
    assert rows["strong"]["decision"] == "accepted" and rows["poison"]["decision"] == "rejected"
    with pytest.raises(CurationError, match=r"min_seeds \(4\) exceeds max_seeds \(3\)"):
        validate_recipe({**recipe, "decision": {"rule": "interval", "min_seeds": 4, "max_seeds": 3}})


def test_unreadable_per_item_results_leave_the_trial_standing(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, "interval")
    broken = tmp_path / "broken_items.py"
    broken.write_text(
        EVALUATE + "pathlib.Path(out, 'items.jsonl').write_text('{not json\\n')\n"  # after the good file: broken
    )
    recipe["evaluator"]["command"][1] = str(broken)
    doc = run_selection(validate_recipe(recipe), tmp_path / "sweep", progress=False)
    rows = {c["name"]: c for c in doc["categories"][0]["candidates"]}
    assert all(not r["failed"] and r["paired_items"] == 0 for r in rows.values())  # the seeds alone, then
    assert rows["strong"]["interval_basis"] in ("seeds", "none")
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / "trials").glob("*/trial.log"))
    assert "warning: no per-item results" in logs and "line 1: not JSON" in logs


def test_an_attempt_evaluates_afresh_and_never_through_a_link_out_of_the_trial(tmp_path: Path) -> None:
    from curation.selection.run_trial import evaluate

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    trial_dir = tmp_path / "trial"
    (trial_dir / "train").mkdir(parents=True)
    (trial_dir / "eval").symlink_to(outside, target_is_directory=True)
    script = tmp_path / "ev.py"
    script.write_text(
        "import json, sys, pathlib\npathlib.Path(sys.argv[2], 'metrics.json').write_text('{\"q/a\": 1}')\n"
    )
    cfg = {"type": "command", "command": [sys.executable, str(script), "{model}", "{output}"], "env": {}}
    assert evaluate({"evaluator": cfg, "trainer": {}}, trial_dir) == {"q/a": 1.0}
    assert (outside / "keep.txt").read_text() == "not ours" and not (outside / "metrics.json").exists()
    assert not (trial_dir / "eval").is_symlink() and (trial_dir / "eval" / "metrics.json").is_file()
