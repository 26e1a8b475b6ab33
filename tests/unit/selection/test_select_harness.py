"""External evaluators: lmms-eval and VLMEvalKit result files in their documented layouts parsed to exact dicts;
commands run with placeholders and env, logged, failures reported with the log's tail."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
from curation.selection.harness import parse_lmms_eval, parse_metrics_json, parse_vlmevalkit, run_harness

# Shaped like lmms-eval's EvaluationTracker.save_results_aggregated output (trimmed): results per task with
# "<metric>,<filter>" keys, "<metric>_stderr,<filter>" entries and an alias; groups, configs and tracker fields.
LMMS_RESULTS = {
    "results": {
        "mme": {
            "alias": "mme",
            "mme_cognition_score,none": 312.5,
            "mme_cognition_score_stderr,none": "N/A",
            "mme_percetion_score,none": 1498.25,
            "mme_percetion_score_stderr,none": "N/A",
        },
        "scienceqa_img": {
            "alias": "scienceqa_img",
            "exact_match,none": 0.6931,
            "exact_match_stderr,none": 0.0103,
        },
        "docvqa_val": {"alias": "docvqa_val", "anls,none": 0.7421, "anls_stderr,none": 0.0051},
        "gsm8k_cot": {"alias": "gsm8k_cot", "exact_match,flexible-extract": 0.41, "exact_match,strict-match": 0.38},
    },
    "group_subtasks": {"mme": [], "scienceqa_img": [], "docvqa_val": []},
    "configs": {"mme": {"task": "mme", "output_type": "generate_until"}},
    "versions": {"mme": "Yaml", "scienceqa_img": "Yaml"},
    "n-shot": {"mme": 0},
    "n-samples": {"mme": {"original": 2374, "effective": 2374}},
    "config": {"model": "llava_onevision", "batch_size": "1"},
    "git_hash": "0e1f2a3",
    "date": "20240614_123456",
    "task_hashes": {},
    "model_name": "lmms-lab/llava-onevision-qwen2-0.5b-ov",
    "model_name_sanitized": "lmms-lab__llava-onevision-qwen2-0.5b-ov",
}


def _write_json(path: Path, obj: dict, mtime: float | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_parse_lmms_eval_newest_results(tmp_path: Path) -> None:
    model_dir = tmp_path / "lmms-lab__llava-onevision-qwen2-0.5b-ov"
    old = {"results": {"mme": {"alias": "mme", "mme_cognition_score,none": 1.0}}}
    _write_json(model_dir / "20240613_090000_results.json", old, mtime=1_700_000_000)
    _write_json(model_dir / "20240614_123456_results.json", LMMS_RESULTS, mtime=1_700_000_100)
    (model_dir / "20240614_123456_samples_mme.jsonl").write_text('{"doc_id": 0}\n')
    assert parse_lmms_eval(tmp_path) == {
        "mme/mme_cognition_score": 312.5,
        "mme/mme_percetion_score": 1498.25,
        "scienceqa_img/exact_match": 0.6931,
        "docvqa_val/anls": 0.7421,
        "gsm8k_cot/exact_match,flexible-extract": 0.41,
        "gsm8k_cot/exact_match,strict-match": 0.38,
    }


def test_parse_lmms_eval_errors(tmp_path: Path) -> None:
    with pytest.raises(CurationError, match=r"no \*_results\.json"):
        parse_lmms_eval(tmp_path)
    _write_json(tmp_path / "m" / "x_results.json", {"nothing": 1})
    with pytest.raises(CurationError, match="no 'results' object"):
        parse_lmms_eval(tmp_path)


def _csv(path: Path, text: str, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    os.utime(path, (mtime, mtime))
    return path


# VLMEvalKit's tables as `dump(df, "*.csv")` writes them (DataFrame.to_csv, index=False).
MMB_ACC = """\
    split,Overall,AR,CP,FP-C,FP-S,LR,RR
    dev,0.7164948453608247,0.7437185929648241,0.8243243243243243,0.6153846153846154,0.7406143344709898,0.4745762711864407,0.7130434782608696
"""
SEED_ACC = """\
    split,Overall,Instance Attributes,Scene Understanding
    none,0.6812,0.7001,0.7402
"""
SQA_ACC = """\
    split,Overall,natural science,social science
    val,0.701,0.72,0.65
    test,0.694,0.71,0.66
"""
DOCVQA_ACC = """\
    val
    74.21
"""
MME_SCORE = """\
    perception,reasoning,OCR,artwork,celebrity,code_reasoning,color,commonsense_reasoning,count,existence,landmark,numerical_calculation,position,posters,scene,text_translation
    1498.25,312.5,140.0,120.25,130.0,55.0,170.0,110.0,150.0,190.0,160.0,67.5,128.33333333333334,139.6666666666667,170.0,80.0
"""


def test_parse_vlmevalkit_layout(tmp_path: Path) -> None:
    work = tmp_path / "outputs"
    model = "Qwen2-VL-2B-Instruct"
    run = work / model / "T20250102_Gabcdef12"
    older = work / model / "T20241201_G11111111"
    _csv(older / f"{model}_MMBench_DEV_EN_acc.csv", MMB_ACC.replace("0.7164948453608247", "0.5"), 1_700_000_000)
    mmb = _csv(run / f"{model}_MMBench_DEV_EN_acc.csv", MMB_ACC, 1_700_000_100)
    _csv(run / f"{model}_SEEDBench_IMG_acc.csv", SEED_ACC, 1_700_000_100)
    _csv(run / f"{model}_ScienceQA_TEST_acc.csv", SQA_ACC, 1_700_000_100)
    _csv(run / f"{model}_DocVQA_VAL_acc.csv", DOCVQA_ACC, 1_700_000_100)
    mme = _csv(run / f"{model}_MME_score.csv", MME_SCORE, 1_700_000_100)
    (run / f"{model}_MME.xlsx").write_bytes(b"PK")  # predictions: not a result table
    for target in (mmb, mme):  # run.py links the latest results into the model folder
        (work / model / target.name).symlink_to(target)
    assert parse_vlmevalkit(work) == {
        "MMBench_DEV_EN/Overall": 0.7164948453608247,
        "SEEDBench_IMG/Overall": 0.6812,
        "ScienceQA_TEST/Overall_val": 0.701,
        "ScienceQA_TEST/Overall_test": 0.694,
        "DocVQA_VAL/val": 74.21,
        "MME/perception": 1498.25,
        "MME/reasoning": 312.5,
        "MME/total": 1810.75,
        "MME/OCR": 140.0,
        "MME/artwork": 120.25,
        "MME/celebrity": 130.0,
        "MME/code_reasoning": 55.0,
        "MME/color": 170.0,
        "MME/commonsense_reasoning": 110.0,
        "MME/count": 150.0,
        "MME/existence": 190.0,
        "MME/landmark": 160.0,
        "MME/numerical_calculation": 67.5,
        "MME/position": 128.33333333333334,
        "MME/posters": 139.6666666666667,
        "MME/scene": 170.0,
        "MME/text_translation": 80.0,
    }


def test_parse_vlmevalkit_flat_work_dir_and_errors(tmp_path: Path) -> None:
    """Older VLMEvalKit wrote straight into {work_dir}/{model}/."""
    _csv(tmp_path / "llava_v1.5_7b" / "llava_v1.5_7b_MMStar_acc.csv", SEED_ACC, 1_700_000_000)
    assert parse_vlmevalkit(tmp_path) == {"MMStar/Overall": 0.6812}
    with pytest.raises(CurationError, match=r"no \*_acc\.csv"):
        parse_vlmevalkit(tmp_path / "empty")


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_run_harness_lmms_eval(tmp_path: Path) -> None:
    body = f"""
        import json, os, sys
        from pathlib import Path
        model, out = sys.argv[1], Path(sys.argv[2])
        print("evaluating", model, os.environ["HARNESS_FLAG"], os.environ["HARNESS_OUT"])
        print("warning on stderr", file=sys.stderr)
        (out / "model").mkdir(parents=True)
        (out / "model" / "20240614_123456_results.json").write_text(json.dumps({LMMS_RESULTS!r}))
    """
    cfg = HarnessEvaluatorConfig(
        type="lmms_eval",
        command=[*_script(body), "{model}", "{output}"],
        env={"HARNESS_FLAG": "on", "HARNESS_OUT": "{output}/x"},
    )
    log = tmp_path / "logs" / "eval.log"
    log.parent.mkdir()
    log.write_text("earlier lines\n")
    metrics = run_harness(cfg, tmp_path / "trained", tmp_path / "eval", log)
    assert metrics["mme/mme_percetion_score"] == 1498.25 and len(metrics) == 6
    text = log.read_text()
    assert text.startswith("earlier lines\n$ ")  # appended
    assert f"evaluating {tmp_path / 'trained'} on {tmp_path / 'eval'}/x" in text
    assert "warning on stderr" in text


def test_run_harness_vlmevalkit(tmp_path: Path) -> None:
    body = f"""
        import sys
        from pathlib import Path
        run = Path(sys.argv[1]) / "m" / "T20250102_Gabcdef12"
        run.mkdir(parents=True)
        (run / "m_MME_score.csv").write_text({textwrap.dedent(MME_SCORE)!r})
    """
    cfg = HarnessEvaluatorConfig(type="vlmevalkit", command=[*_script(body), "{output}"])
    metrics = run_harness(cfg, tmp_path / "model", tmp_path / "out", tmp_path / "log.txt")
    assert metrics["MME/total"] == 1810.75 and metrics["MME/perception"] == 1498.25


def test_run_harness_command_metrics_json(tmp_path: Path) -> None:
    body = """
        import json, sys
        from pathlib import Path
        Path(sys.argv[1], "metrics.json").write_text(json.dumps({"vqa/accuracy": 61.5, "mme/total": 1500}))
    """
    cfg = CommandEvaluatorConfig(type="command", command=[*_script(body), "{output}"])
    assert run_harness(cfg, tmp_path / "m", tmp_path / "out", tmp_path / "log") == {
        "vqa/accuracy": 61.5,
        "mme/total": 1500.0,
    }


def test_run_harness_failure_shows_log_tail(tmp_path: Path) -> None:
    body = """
        import sys
        for i in range(2000):
            print("progress line", i)
        print("CUDA out of memory", file=sys.stderr)
        sys.exit(3)
    """
    cfg = CommandEvaluatorConfig(type="command", command=_script(body))
    with pytest.raises(CurationError, match="exited with 3") as err:
        run_harness(cfg, tmp_path / "m", tmp_path / "out", tmp_path / "log")
    message = str(err.value)
    assert message.rstrip().endswith("CUDA out of memory")
    assert "progress line 1999" in message and "progress line 0\n" not in message


def test_run_harness_missing_program_and_missing_metrics(tmp_path: Path) -> None:
    cfg = CommandEvaluatorConfig(type="command", command=[str(tmp_path / "no-such-program")])
    with pytest.raises(CurationError, match="cannot run"):
        run_harness(cfg, tmp_path / "m", tmp_path / "out", tmp_path / "log")
    cfg = CommandEvaluatorConfig(type="command", command=_script("pass"))
    with pytest.raises(CurationError, match="wrote no"):
        run_harness(cfg, tmp_path / "m", tmp_path / "out", tmp_path / "log")


def test_parse_metrics_json_refuses_non_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"a/b": "high"}))
    with pytest.raises(CurationError, match="'a/b' is 'high'"):
        parse_metrics_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CurationError, match="JSON object"):
        parse_metrics_json(path)
