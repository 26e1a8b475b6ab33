"""External evaluators: lmms-eval and VLMEvalKit result files in the layouts they write today (tests/harness_data.py)
parsed to exact dicts (metrics only; standard errors beside them); commands run with placeholders and env, logged,
failures reported with the log's tail."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.recipe.selection import CommandEvaluatorConfig, HarnessEvaluatorConfig
from curation.selection.harnesses import files, parse_metrics_json, run_harness
from curation.selection.harnesses.lmms_eval import lmms_eval_stderrs, parse_lmms_eval
from curation.selection.harnesses.vlmevalkit import parse_vlmevalkit
from tests.harness_data import (
    LmmsMetric,
    lmms_results_doc,
    lmms_task_config,
    lmms_task_entry,
    lmms_v06_run,
    mcq_rows,
    report_acc,
    vlm_dataset_status,
    vlm_dump,
    vlm_flatten,
    vlm_link_results,
    vlm_run_dir,
    write_lmms_eval,
    write_vlm_status,
)

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


V06_METRICS = {
    "mme/mme_perception_score": 1498.25,
    "mme/mme_cognition_score": 312.5,
    "scienceqa_full/exact_match": 0.6666666666666666,
    "scienceqa/exact_match": 0.75,
    "scienceqa_img/exact_match": 0.6,
    "docvqa_val/anls": 0.6142857142857143,
    "ai2d/exact_match,flexible-extract": 0.6666666666666666,
    "gsm8k_cot/exact_match,strict-match": 0.3333333333333333,
    "gsm8k_cot/exact_match,flexible-extract": 0.6666666666666666,
}


def test_parse_lmms_eval_v06_only_metrics(tmp_path: Path) -> None:
    """samples (an int), _stderr / _stderr_clt / _stderr_clustered, the --repeats statistics and the --baseline
    paired_* fields are not metrics; the group's aggregate is the group's metric."""
    doc, samples = lmms_v06_run()
    write_lmms_eval(tmp_path, doc, samples)
    assert parse_lmms_eval(tmp_path) == V06_METRICS


def test_lmms_eval_stderrs_beside_the_metrics(tmp_path: Path) -> None:
    doc, samples = lmms_v06_run()
    write_lmms_eval(tmp_path, doc, samples)
    assert lmms_eval_stderrs(tmp_path) == {
        "mme/mme_perception_score": {"stderr_clt": 0.0},
        "mme/mme_cognition_score": {"stderr_clt": 0.5},
        "scienceqa_full/exact_match": {"stderr": 0.16666666666666666},
        "scienceqa/exact_match": {"stderr": 0.25, "stderr_clt": 0.25},
        "scienceqa_img/exact_match": {
            "stderr": 0.24494897427831777,
            "stderr_clt": 0.24494897427831777,
            "stderr_clustered": 0.2,
        },
        "docvqa_val/anls": {"stderr": 0.22085178333914723, "stderr_clt": 0.22085178333914723},
        "ai2d/exact_match,flexible-extract": {"stderr": 0.3333333333333333, "stderr_clt": 0.3333333333333333},
        "gsm8k_cot/exact_match,strict-match": {"stderr": 0.3333333333333333},
        "gsm8k_cot/exact_match,flexible-extract": {"stderr": 0.3333333333333333},
    }


def test_parse_lmms_eval_newest_by_the_date_in_the_name(tmp_path: Path) -> None:
    """Two runs: the one whose name holds the later date wins, whatever the files' times (a copy resets them)."""
    doc, _ = lmms_v06_run(date_id="20250612_080000")
    write_lmms_eval(tmp_path, doc, mtime=1_700_000_000)
    old = lmms_results_doc(
        {"mme": lmms_task_entry("mme", [LmmsMetric("mme_perception_score", 1.0)])},
        {"mme": lmms_task_config("mme", [])},
        date_id="20250611_090000",
    )
    write_lmms_eval(tmp_path, old, mtime=1_700_000_500)
    assert parse_lmms_eval(tmp_path) == V06_METRICS
    assert lmms_eval_stderrs(tmp_path)["docvqa_val/anls"]["stderr"] == 0.22085178333914723


def test_parse_lmms_eval_groups(tmp_path: Path) -> None:
    """A group without aggregate_metric_list (its " " marker) has no metric; one only in "groups" is read."""
    doc = lmms_results_doc(
        {
            "mmbench_en": {" ": " ", "alias": "mmbench_en"},
            "mmbench_en_dev": lmms_task_entry(" - mmbench_en_dev", [LmmsMetric("gpt_eval_score", 79.3)]),
        },
        {"mmbench_en_dev": lmms_task_config("mmbench_en_dev", [])},
        groups={"mmstar_all": {"alias": "mmstar_all", "average,none": 0.52, "average_stderr,none": 0.01}},
    )
    write_lmms_eval(tmp_path, doc)
    assert parse_lmms_eval(tmp_path) == {"mmbench_en_dev/gpt_eval_score": 79.3, "mmstar_all/average": 0.52}
    assert lmms_eval_stderrs(tmp_path) == {"mmstar_all/average": {"stderr": 0.01}}


def test_parse_lmms_eval_hostile_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m"
    model.mkdir()
    path = model / "20250611_142233_results.json"
    path.write_text("[1, 2]")
    with pytest.raises(CurationError, match=r"must hold a JSON object, not a list"):
        parse_lmms_eval(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(CurationError, match="not readable JSON"):
        parse_lmms_eval(tmp_path)
    path.write_bytes(b'{"results": {"mme": {"alias": "\\u00e9\xff"}}}')
    with pytest.raises(CurationError, match="not UTF-8"):
        lmms_eval_stderrs(tmp_path)
    # NaN and Infinity (json.dumps writes them) are no numbers; "N/A" neither
    path.write_text('{"results": {"t": {"a,none": NaN, "b,none": Infinity, "c,none": 2, "c_stderr,none": NaN}}}')
    assert parse_lmms_eval(tmp_path) == {"t/c": 2.0}
    assert lmms_eval_stderrs(tmp_path) == {}
    monkeypatch.setattr(files, "MAX_SUMMARY_BYTES", 10)
    with pytest.raises(CurationError, match="over the 10-byte limit"):
        parse_lmms_eval(tmp_path)
    with pytest.raises(CurationError, match=r"no \*_results\.json"):
        parse_lmms_eval(tmp_path / "missing")


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


QWEN = "Qwen2-VL-2B-Instruct"


def _mcq_run(run: Path, dataset: str, hits: list[int], splits: list[str] | None = None) -> list[dict]:
    """A multiple-choice dataset's files in a run folder: predictions, the judge's per-item result, the acc table."""
    rows = mcq_rows(hits, splits=splits)
    vlm_dump([{k: v for k, v in r.items() if k not in ("hit", "log")} for r in rows], run / f"{QWEN}_{dataset}.xlsx")
    vlm_dump(rows, run / f"{QWEN}_{dataset}_exact_matching_result.tsv")
    vlm_dump(report_acc(rows), run / f"{QWEN}_{dataset}_acc.csv")
    return rows


def test_parse_vlmevalkit_new_run_folder_counts_once(tmp_path: Path) -> None:
    """A T%Y%m%d-%H%M%S run folder whose files run.py linked into the model folder: each dataset once, named by
    the model folder (the old parser took the run folder for the model and listed every metric twice)."""
    run = vlm_run_dir(tmp_path, QWEN, "T20260502-101500")
    _mcq_run(run, "MMBench_DEV_EN", [1, 0, 1, 1], ["dev"] * 4)
    _mcq_run(run, "ScienceQA_VAL", [1, 1, 0, 1])
    vlm_dump([{"perception": 1498.25, "reasoning": 312.5, "OCR": 140.0}], run / f"{QWEN}_MME_score.csv")
    for dataset in ("MMBench_DEV_EN", "ScienceQA_VAL", "MME"):
        vlm_link_results(run, QWEN, dataset)
    assert (tmp_path / QWEN / f"{QWEN}_MME_score.csv").is_symlink()
    assert parse_vlmevalkit(tmp_path) == {
        "MMBench_DEV_EN/Overall": 0.75,
        "ScienceQA_VAL/Overall": 0.75,
        "MME/perception": 1498.25,
        "MME/reasoning": 312.5,
        "MME/OCR": 140.0,
        "MME/total": 1810.75,
    }


def test_parse_vlmevalkit_status_runs_and_formats(tmp_path: Path) -> None:
    """The newest run's status.json gives its finished datasets (its metrics over the run's tables); a dataset that
    failed or was skipped there comes from an older run (old-style T..._G<commit> here, with an EVAL_FORMAT=json
    acc table); the newest run wins over older ones."""
    old = vlm_run_dir(tmp_path, QWEN, "T20260401_Ge8e78f05")
    _mcq_run(old, "MMBench_DEV_EN", [0, 0, 1, 1], ["dev"] * 4)
    _mcq_run(old, "MMStar", [1, 0, 0, 0])
    vlm_dump([{"Overall": 74.21, "val": 74.21}], old / f"{QWEN}_DocVQA_VAL_acc.json")
    for dataset in ("MMBench_DEV_EN", "MMStar", "DocVQA_VAL"):
        vlm_link_results(old, QWEN, dataset, absolute=True)

    new = vlm_run_dir(tmp_path, QWEN, "T20260502-101500")
    _mcq_run(new, "MMBench_DEV_EN", [1, 0, 1, 1], ["dev"] * 4)
    (new / f"{QWEN}_MMBench_DEV_EN_acc.csv").write_text('"split","Overall"\n"dev","0.1"\n')  # status.json wins
    _mcq_run(new, "ScienceQA_TEST", [1, 1, 0, 1, 0, 1], ["val", "val", "val", "test", "test", "test"])
    _mcq_run(new, "MMStar", [1, 1, 1, 1])  # its status says it failed: this table is not used
    mme = [{"perception": 1498.25, "reasoning": 312.5, "OCR": 140.0}]
    write_vlm_status(
        new,
        QWEN,
        {
            "MMBench_DEV_EN": vlm_dataset_status(
                metrics=vlm_flatten(report_acc(mcq_rows([1, 0, 1, 1], splits=["dev"] * 4))),
                primary_metric="split=dev|Overall",
            ),
            "ScienceQA_TEST": vlm_dataset_status(
                metrics=vlm_flatten(report_acc(mcq_rows([1, 1, 0, 1, 0, 1], splits=["val"] * 3 + ["test"] * 3)))
            ),
            "MME": vlm_dataset_status(metrics=vlm_flatten(mme)),
            "MMStar": vlm_dataset_status(error_message="CUDA out of memory"),
            "DocVQA_VAL": vlm_dataset_status(skip_reason="evaluate_returned_none"),
            "MathVista_MINI": vlm_dataset_status("infer"),
        },
    )
    for dataset in ("MMBench_DEV_EN", "ScienceQA_TEST", "MMStar"):
        vlm_link_results(new, QWEN, dataset)
    assert parse_vlmevalkit(tmp_path) == {
        "MMBench_DEV_EN/Overall": 0.75,
        "ScienceQA_TEST/Overall_val": 0.6666666666666666,
        "ScienceQA_TEST/Overall_test": 0.6666666666666666,
        "MME/perception": 1498.25,
        "MME/reasoning": 312.5,
        "MME/OCR": 140.0,
        "MME/total": 1810.75,
        "MMStar/Overall": 0.25,
        "DocVQA_VAL/Overall": 74.21,
    }


def test_parse_vlmevalkit_status_names_like_the_table_files(tmp_path: Path) -> None:
    """The same run read from status.json and from its tables gives the same keys: a yes/no _score table keeps
    every numeric column (Overall among them), an _acc table only its Overall."""
    run = vlm_run_dir(tmp_path, QWEN)
    pope = [{"split": "Overall", "Overall": 86.1, "acc": 87.0, "precision": 91.2, "recall": 81.5}]
    vlm_dump(pope, run / f"{QWEN}_POPE_score.csv")
    vqa = [{"Overall": 61.5, "val": 61.5}]
    vlm_dump(vqa, run / f"{QWEN}_TextVQA_VAL_acc.csv")
    expected = {
        "POPE/Overall": 86.1,
        "POPE/acc": 87.0,
        "POPE/precision": 91.2,
        "POPE/recall": 81.5,
        "TextVQA_VAL/Overall": 61.5,
    }
    assert parse_vlmevalkit(tmp_path) == expected
    datasets = {"POPE": vlm_flatten(pope), "TextVQA_VAL": vlm_flatten(vqa)}
    assert datasets["POPE"] == {
        "split=Overall|Overall": 86.1,
        "split=Overall|acc": 87.0,
        "split=Overall|precision": 91.2,
        "split=Overall|recall": 81.5,
    }
    write_vlm_status(run, QWEN, {name: vlm_dataset_status(metrics=m) for name, m in datasets.items()})
    for table in run.glob("*.csv"):
        table.write_text(table.read_text().replace("61.5", "1.0").replace("86.1", "1.0"))  # only status.json counts
    assert parse_vlmevalkit(tmp_path) == expected


def test_parse_vlmevalkit_status_keys_that_are_not_a_table(tmp_path: Path) -> None:
    """A dict result flattened with nested keys keeps VLMEvalKit's key; non-numbers are left out."""
    run = vlm_run_dir(tmp_path, QWEN)
    metrics = {"Overall": 61.5, "reasoning|math": 40, "reasoning|logic": "55.5", "note": "n/a", "flag": True}
    write_vlm_status(run, QWEN, {"MathVista_MINI": vlm_dataset_status(metrics=metrics)})
    assert parse_vlmevalkit(tmp_path) == {
        "MathVista_MINI/Overall": 61.5,
        "MathVista_MINI/reasoning|math": 40.0,
        "MathVista_MINI/reasoning|logic": 55.5,
    }


def test_parse_vlmevalkit_symlinked_model_folder_and_loops(tmp_path: Path) -> None:
    work = tmp_path / "outputs"
    run = vlm_run_dir(work, QWEN, "T20260502-101500")
    _mcq_run(run, "MMStar", [1, 0, 1, 1])
    vlm_link_results(run, QWEN, "MMStar")
    (work / "latest").symlink_to(work / QWEN, target_is_directory=True)  # a second name for the model folder
    (run / "up").symlink_to(work, target_is_directory=True)  # a loop
    (work / QWEN / "dangling_acc.csv").symlink_to(work / "gone.csv")
    assert parse_vlmevalkit(work) == {"MMStar/Overall": 0.75}


def test_parse_vlmevalkit_hostile_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = vlm_run_dir(tmp_path, QWEN)
    status = run / "status.json"
    status.write_text("[]")
    with pytest.raises(CurationError, match=r"status\.json has no 'datasets' object"):
        parse_vlmevalkit(tmp_path)
    status.write_bytes(b'{"datasets": {"\xff": 1}}')
    with pytest.raises(CurationError, match="not UTF-8"):
        parse_vlmevalkit(tmp_path)
    status.unlink()
    acc = run / f"{QWEN}_MMStar_acc.json"
    acc.write_text("[1, 2]")
    with pytest.raises(CurationError, match="must hold a list of row objects"):
        parse_vlmevalkit(tmp_path)
    acc.write_text('[{"split": "none", "Overall": NaN}]')
    assert parse_vlmevalkit(tmp_path) == {}
    acc.unlink()
    (run / f"{QWEN}_MMStar_acc.csv").write_bytes(b'"split","Overall"\n"\xff","0.5"\n')
    with pytest.raises(CurationError, match="not UTF-8"):
        parse_vlmevalkit(tmp_path)
    monkeypatch.setattr(files, "MAX_WALK_ENTRIES", 2)
    with pytest.raises(CurationError, match="more than 2 files and folders under"):
        parse_vlmevalkit(tmp_path)


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
