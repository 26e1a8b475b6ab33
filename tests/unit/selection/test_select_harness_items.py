"""Per-item rows from the harnesses' own per-item files (tests/harness_data.py layouts): lmms-eval's
``{date}_samples_{task}.jsonl`` and VLMEvalKit's judge / yes-no / VQA result tables. Every row's
``benchmark/metric`` is a key of the matching parser whose value is the mean of the rows; bad input is a
CurationError naming the file and line."""

from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from curation.errors import CurationError
from curation.selection.harnesses import files, harness_items
from curation.selection.harnesses.lmms_eval import lmms_eval_items, parse_lmms_eval
from curation.selection.harnesses.vlmevalkit import parse_vlmevalkit, vlmevalkit_items
from curation.selection.items import ItemScore, items_table
from tests.harness_data import (
    AI2D_HITS,
    DOCVQA_ANLS,
    GSM8K_FLEXIBLE,
    GSM8K_STRICT,
    SQA_HITS,
    SQA_IMG_HITS,
    docvqa_hit,
    lmms_results_doc,
    lmms_sample,
    lmms_task_config,
    lmms_task_entry,
    lmms_v06_run,
    mcq_rows,
    mean,
    mme_rows,
    mme_score_table,
    report_acc,
    vlm_dataset_status,
    vlm_dump,
    vlm_flatten,
    vlm_link_results,
    vlm_run_dir,
    vqa_rows,
    write_lmms_eval,
    write_vlm_status,
)

QWEN = "Qwen2-VL-2B-Instruct"


def _rows(benchmark: str, metric: str, values: list[float], items: list[str] | None = None) -> list[ItemScore]:
    ids = items if items is not None else [str(i) for i in range(len(values))]
    return [ItemScore(benchmark, item, metric, float(v)) for item, v in zip(ids, values, strict=True)]


def _sorted(rows: list[ItemScore]) -> list[ItemScore]:
    return sorted(rows, key=lambda r: (r.benchmark, r.metric, r.item))


def _assert_means_match(rows: list[ItemScore], metrics: dict[str, float]) -> None:
    by_key: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        by_key[row.key].append(row.value)
    for key, values in by_key.items():
        assert math.isclose(math.fsum(values) / len(values), metrics[key], rel_tol=1e-12), key
    items_table(rows)  # finite, no (benchmark, item, metric) twice


# ---- lmms-eval ---------------------------------------------------------------------------------------------------


def test_lmms_eval_items_v06(tmp_path: Path) -> None:
    """Mean-aggregated metrics give rows (a named filter in the metric's name, two filters told apart by line
    order); MME's dict values, summed per category, give none; the group has no samples file."""
    doc, samples = lmms_v06_run()
    write_lmms_eval(tmp_path, doc, samples)
    rows = lmms_eval_items(tmp_path)
    assert _sorted(rows) == _sorted(
        [
            *_rows("scienceqa_img", "exact_match", SQA_IMG_HITS),
            *_rows("scienceqa", "exact_match", SQA_HITS),
            *_rows("docvqa_val", "anls", DOCVQA_ANLS),
            *_rows("ai2d", "exact_match,flexible-extract", AI2D_HITS),
            *_rows("gsm8k_cot", "exact_match,strict-match", GSM8K_STRICT),
            *_rows("gsm8k_cot", "exact_match,flexible-extract", GSM8K_FLEXIBLE),
        ]
    )
    _assert_means_match(rows, parse_lmms_eval(tmp_path))
    assert harness_items("lmms_eval", tmp_path) == rows


def test_lmms_eval_items_without_log_samples(tmp_path: Path) -> None:
    doc, samples = lmms_v06_run()
    write_lmms_eval(tmp_path, doc)
    assert lmms_eval_items(tmp_path) == []
    with pytest.raises(CurationError, match=r"no \*_results\.json"):
        lmms_eval_items(tmp_path / "none")
    # a run that died before saving its results: samples files alone are no run
    results = write_lmms_eval(tmp_path / "partial", doc, samples)
    results.unlink()
    with pytest.raises(CurationError, match=r"no \*_results\.json"):
        lmms_eval_items(tmp_path / "partial")


def _one_task(tmp_path: Path, lines: list[dict], value: float, metric_list: list[dict] | None = None) -> Path:
    from tests.harness_data import LmmsMetric

    doc = lmms_results_doc(
        {"vqav2_val": lmms_task_entry("vqav2_val", [LmmsMetric("exact_match", value)])},
        {"vqav2_val": lmms_task_config("vqav2_val", metric_list or [{"metric": "exact_match", "aggregation": "mean"}])},
    )
    results = write_lmms_eval(tmp_path, doc, {"vqav2_val": lines})
    return results.parent / f"{doc['date']}_samples_vqav2_val.jsonl"


def test_lmms_eval_items_values(tmp_path: Path) -> None:
    """Bools count 0/1 (as lmms-eval's mean counts them); a metric whose items do not average to the results
    file's value, or with a non-number item, or not a mean, gives no rows."""
    lines = [lmms_sample(i, "yes", "yes", {"exact_match": v}) for i, v in enumerate([True, False, True, True])]
    _one_task(tmp_path / "a", lines, 0.75)
    assert lmms_eval_items(tmp_path / "a") == _rows("vqav2_val", "exact_match", [1, 0, 1, 1])
    _one_task(tmp_path / "b", lines, 0.5)  # not the mean of the lines
    assert lmms_eval_items(tmp_path / "b") == []
    lines[2]["exact_match"] = "1"
    _one_task(tmp_path / "c", lines, 0.75)
    assert lmms_eval_items(tmp_path / "c") == []
    lines[2]["exact_match"] = 1
    _one_task(tmp_path / "d", lines, 0.75, [{"metric": "exact_match", "aggregation": "median"}])
    assert lmms_eval_items(tmp_path / "d") == []
    _one_task(tmp_path / "e", lines, 0.75, [{"metric": "exact_match"}])  # registered default: mean
    assert len(lmms_eval_items(tmp_path / "e")) == 4


def test_lmms_eval_items_bad_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = [json.dumps(lmms_sample(i, "a", "a", {"exact_match": 1.0})) for i in range(3)]
    path = _one_task(tmp_path, [], 1.0)
    for text, message in [
        ([good[0], good[1], "{not json"], r"samples_vqav2_val\.jsonl:3: not JSON"),
        ([good[0], "[1, 2]"], r"samples_vqav2_val\.jsonl:2: a JSON object was expected, not list"),
        ([good[0], '{"target": "a"}'], r"samples_vqav2_val\.jsonl:2: no doc_id"),
        ([good[0], good[0]], r"samples_vqav2_val\.jsonl:2: doc_id 0 appears 2 times; task vqav2_val has 1 filter"),
    ]:
        path.write_text("\n".join(text) + "\n")
        with pytest.raises(CurationError, match=message):
            lmms_eval_items(tmp_path)
    path.write_bytes(good[0].encode() + b'\n{"doc_id": 1, "target": "\xff"}\n')
    with pytest.raises(CurationError, match=r"samples_vqav2_val\.jsonl:2: not UTF-8"):
        lmms_eval_items(tmp_path)
    path.write_text("\n".join(good) + "\n\n")  # blank lines are fine
    assert len(lmms_eval_items(tmp_path)) == 3
    monkeypatch.setattr(files, "MAX_ITEMS_BYTES", 100)
    with pytest.raises(CurationError, match=r"samples_vqav2_val\.jsonl is \d+ bytes, over the 100-byte limit"):
        lmms_eval_items(tmp_path)


def test_lmms_eval_items_filters_need_one_line_each(tmp_path: Path) -> None:
    doc, samples = lmms_v06_run()
    samples["gsm8k_cot"] = samples["gsm8k_cot"][:-1]  # the last doc's second filter line is missing
    write_lmms_eval(tmp_path, doc, samples)
    with pytest.raises(CurationError, match=r"doc_id 2 has 1 line\(s\); task gsm8k_cot has 2 filter\(s\)"):
        lmms_eval_items(tmp_path)


# ---- VLMEvalKit --------------------------------------------------------------------------------------------------

MME_PAIRS = {
    "OCR": [(True, True), (True, False)],
    "artwork": [(False, False), (True, True), (False, True)],
    "code_reasoning": [(True, True)],
    "commonsense_reasoning": [(True, False), (True, True)],
}
DOC_MATCHES = [[0.0, 0.2], [0.4], [0.75, 0.6], [1.0]]  # DocVQA: ANLS distances per reference answer


def _work_dir(work: Path, pred_format: str = "tsv") -> None:
    """A run with every per-item kind: MCQ (one split, and two), MME yes/no, DocVQA, and a POPE yes/no whose
    score is not a mean of items; status.json; everything linked into the model folder."""
    run = vlm_run_dir(work, QWEN, "T20260502-101500")
    mmb = mcq_rows([1, 0, 1, 1], splits=["dev"] * 4)
    vlm_dump(mmb, run / f"{QWEN}_MMBench_DEV_EN_exact_matching_result.{pred_format}")
    vlm_dump(report_acc(mmb), run / f"{QWEN}_MMBench_DEV_EN_acc.csv")
    # A longer dataset name that starts with a shorter one, and a file of the PRINT_VANILLA check
    mmb_all = mcq_rows([0, 0, 0, 1])
    vlm_dump(mmb_all, run / f"{QWEN}_MMBench_DEV_EN_V11_exact_matching_result.{pred_format}")
    vlm_dump(report_acc(mmb_all), run / f"{QWEN}_MMBench_DEV_EN_V11_acc.csv")
    vlm_dump(mmb_all, run / f"{QWEN}_MMBench_DEV_EN_exact_matching_vanilla_circ0_result.{pred_format}")
    sqa = mcq_rows([1, 1, 0, 1, 0, 1], splits=["val"] * 3 + ["test"] * 3, start=100)
    vlm_dump(sqa, run / f"{QWEN}_ScienceQA_TEST_gpt-4o-mini_result.{pred_format}")
    vlm_dump(report_acc(sqa), run / f"{QWEN}_ScienceQA_TEST_acc.csv")
    mme = mme_rows(MME_PAIRS)
    vlm_dump(mme, run / f"{QWEN}_MME_auxmatch.{pred_format}")
    vlm_dump(mme_score_table(mme), run / f"{QWEN}_MME_score.csv")
    doc = vqa_rows(DOC_MATCHES)
    vlm_dump(doc, run / f"{QWEN}_DocVQA_VAL_results.{pred_format}")
    vlm_dump([{"Overall": 100 * mean([docvqa_hit(m) for m in DOC_MATCHES])}], run / f"{QWEN}_DocVQA_VAL_acc.json")
    pope = [dict(r, category="adversarial") for r in mme_rows({"x": [(True, False)]})]
    vlm_dump(pope, run / f"{QWEN}_POPE_auxmatch.{pred_format}")
    vlm_dump([{"split": "Overall", "Overall": 50.0, "acc": 50.0}], run / f"{QWEN}_POPE_score.csv")
    write_vlm_status(
        run,
        QWEN,
        {
            "ScienceQA_TEST": vlm_dataset_status(judge_model="gpt-4o-mini", metrics=vlm_flatten(report_acc(sqa))),
            "MMBench_DEV_EN": vlm_dataset_status(metrics=vlm_flatten(report_acc(mmb))),
        },
    )
    for dataset in ("MMBench_DEV_EN", "MMBench_DEV_EN_V11", "ScienceQA_TEST", "MME", "DocVQA_VAL", "POPE"):
        vlm_link_results(run, QWEN, dataset)


def _expected_vlm_rows() -> list[ItemScore]:
    mme = []
    for category, pairs in MME_PAIRS.items():
        for n, (a, b) in enumerate(pairs):
            mme.append(ItemScore("MME", f"MME/{category}/{n:04d}.jpg", category, 100 * ((a + b) / 2 + a * b)))
    return [
        *_rows("MMBench_DEV_EN", "Overall", [1, 0, 1, 1]),
        *_rows("MMBench_DEV_EN_V11", "Overall", [0, 0, 0, 1]),
        *_rows("ScienceQA_TEST", "Overall_val", [1, 1, 0], ["100", "101", "102"]),
        *_rows("ScienceQA_TEST", "Overall_test", [1, 0, 1], ["103", "104", "105"]),
        *mme,
        *_rows("DocVQA_VAL", "Overall", [100.0, 60.0, 0.0, 0.0]),
    ]


@pytest.mark.parametrize("pred_format", ["tsv", "json"])
def test_vlmevalkit_items(tmp_path: Path, pred_format: str) -> None:
    _work_dir(tmp_path, pred_format)
    rows = vlmevalkit_items(tmp_path)
    assert _sorted(rows) == _sorted(_expected_vlm_rows())
    metrics = parse_vlmevalkit(tmp_path)
    _assert_means_match(rows, metrics)
    assert "POPE/Overall" in metrics and not any(r.benchmark == "POPE" for r in rows)
    assert harness_items("vlmevalkit", tmp_path) == rows


def test_vlmevalkit_items_xlsx(tmp_path: Path) -> None:
    """VLMEvalKit's default PRED_FORMAT: read with openpyxl; without it a clear error naming the file and the
    fixes; a damaged workbook is a CurationError."""
    _work_dir(tmp_path, "xlsx")
    if importlib.util.find_spec("openpyxl") is None:
        fixes = r"\.xlsx is an \.xlsx file and openpyxl is not installed: `pip install openpyxl`.*PRED_FORMAT=tsv"
        with pytest.raises(CurationError, match=fixes):
            vlmevalkit_items(tmp_path)
        return
    assert _sorted(vlmevalkit_items(tmp_path)) == _sorted(_expected_vlm_rows())
    (tmp_path / QWEN / "T20260502-101500" / f"{QWEN}_MME_auxmatch.xlsx").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(CurationError, match=r"MME_auxmatch\.xlsx is not a readable \.xlsx file"):
        vlmevalkit_items(tmp_path)


def test_vlmevalkit_items_that_do_not_reproduce_the_score(tmp_path: Path) -> None:
    """A per-item file whose mean is not the score file's value (the score came from elsewhere), an MME image
    without its pair, and an MMT dataset (scored otherwise) give no rows."""
    run = vlm_run_dir(tmp_path, QWEN)
    rows = mcq_rows([1, 0, 1, 1])
    vlm_dump(rows, run / f"{QWEN}_MMStar_exact_matching_result.tsv")
    vlm_dump([{"split": "none", "Overall": 0.5}], run / f"{QWEN}_MMStar_acc.csv")
    vlm_dump(rows, run / f"{QWEN}_MMT-Bench_VAL_exact_matching_result.tsv")
    vlm_dump(report_acc(rows), run / f"{QWEN}_MMT-Bench_VAL_acc.csv")
    mme = mme_rows({"OCR": [(True, True)], "artwork": [(True, False)]})[:-1]  # artwork's image has one question
    vlm_dump(mme, run / f"{QWEN}_MME_auxmatch.tsv")
    vlm_dump([{"OCR": 200.0, "artwork": 100.0}], run / f"{QWEN}_MME_score.csv")
    assert vlmevalkit_items(tmp_path) == [ItemScore("MME", "MME/OCR/0000.jpg", "OCR", 200.0)]


def test_vlmevalkit_items_bad_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = vlm_run_dir(tmp_path, QWEN)
    vlm_dump(report_acc(mcq_rows([1, 0])), run / f"{QWEN}_MMStar_acc.csv")
    result = run / f"{QWEN}_MMStar_exact_matching_result.tsv"
    rows = mcq_rows([1, 0])
    rows[1]["hit"] = "maybe"
    vlm_dump(rows, result)
    with pytest.raises(CurationError, match=r"_result\.tsv: row 3: hit 'maybe' is not a number"):
        vlmevalkit_items(tmp_path)
    rows[1].update(hit=0, index=0)
    vlm_dump(rows, result)
    with pytest.raises(CurationError, match=r"row 3: item '0' appears twice for Overall"):
        vlmevalkit_items(tmp_path)
    rows[1]["index"] = None
    vlm_dump(rows, result)
    with pytest.raises(CurationError, match=r"row 3: no index"):
        vlmevalkit_items(tmp_path)
    result.unlink()
    vqa = vqa_rows([[0.0], [1.0]])
    vqa[1]["eval_match"] = "[0.5, oops]"
    vlm_dump(vqa, run / f"{QWEN}_DocVQA_VAL_results.tsv")
    vlm_dump([{"Overall": 50.0}], run / f"{QWEN}_DocVQA_VAL_acc.csv")
    with pytest.raises(CurationError, match=r"row 3: eval_match '\[0.5, oops\]' is not a list of numbers"):
        vlmevalkit_items(tmp_path)
    monkeypatch.setattr(files, "MAX_ITEMS_BYTES", 50)
    with pytest.raises(CurationError, match=r"DocVQA_VAL_results\.tsv is \d+ bytes, over the 50-byte limit"):
        vlmevalkit_items(tmp_path)


def test_vlmevalkit_items_from_the_dataset_s_newest_run(tmp_path: Path) -> None:
    old = vlm_run_dir(tmp_path, QWEN, "T20260401_Ge8e78f05")
    rows = mcq_rows([0, 0, 0, 1])
    vlm_dump(rows, old / f"{QWEN}_MMStar_exact_matching_result.tsv")
    vlm_dump(report_acc(rows), old / f"{QWEN}_MMStar_acc.csv")
    new = vlm_run_dir(tmp_path, QWEN, "T20260502-101500")
    rows = mcq_rows([1, 1, 0, 1])
    vlm_dump(rows, new / f"{QWEN}_MMStar_exact_matching_result.tsv")
    vlm_dump(report_acc(rows), new / f"{QWEN}_MMStar_acc.csv")
    assert vlmevalkit_items(tmp_path) == _rows("MMStar", "Overall", [1, 1, 0, 1])


def test_harness_items_dispatch(tmp_path: Path) -> None:
    assert harness_items("command", tmp_path) == []  # a command evaluator need not write per-item values
    (tmp_path / "items.jsonl").write_text(
        '{"benchmark": "quiz", "item": "q1", "metric": "accuracy", "value": 100}\n\n'
        '{"benchmark": "quiz", "item": "q2", "metric": "accuracy", "value": 0.0}\n'
    )
    assert harness_items("command", tmp_path) == [
        ItemScore("quiz", "q1", "accuracy", 100.0), ItemScore("quiz", "q2", "accuracy", 0.0)]  # fmt: skip
    # beside its metrics, only metrics whose items average to the reported value keep their items
    assert len(harness_items("command", tmp_path, {"quiz/accuracy": 50.0})) == 2
    assert harness_items("command", tmp_path, {"quiz/accuracy": 0.5}) == []  # another scale: not the same metric
    assert harness_items("command", tmp_path, {"other/accuracy": 50.0}) == []
    for bad, message in [
        ('{"benchmark": "quiz", "item": "q1", "metric": "accuracy", "value": NaN}', "line 1: value nan"),
        ('{"benchmark": "quiz", "item": "q1", "metric": "accuracy"}', "line 1: want an object with exactly"),
        ('{"benchmark": "a/b", "item": "q1", "metric": "m", "value": 1}', "no '/' in benchmark"),
        ("[1, 2", "line 1: not JSON"),
        ('{"benchmark": "q", "item": "1", "metric": "m", "value": 1}\n' * 2, "item '1' appears twice"),
        ('{"benchmark": "q", "item": "1", "metric": "m", "value": 1' + "0" * 400 + "}", "is not a finite number"),
        ('{"benchmark": "q", "item": "1", "metric": "m", "value": 1' + "0" * 5000 + "}", "line 1: not JSON"),
        ("[" * 60_000, "line 1: not JSON"),
        ('{"benchmark": "q", "item": "1", "metric": "m", "value": 1}\n' + "x" * 70_000, "line 2: longer than"),
    ]:
        (tmp_path / "items.jsonl").write_text(bad)
        with pytest.raises(CurationError, match=message):
            harness_items("command", tmp_path)
    with pytest.raises(CurationError, match="no per-item reader for evaluator type 'builtin'"):
        harness_items("builtin", tmp_path)
    with pytest.raises(CurationError, match=r"VLMEvalKit: no \*_acc\.csv"):
        harness_items("vlmevalkit", tmp_path)


def test_a_json_result_table_with_a_row_missing_its_hit_is_a_clear_error(tmp_path: Path) -> None:
    run = vlm_run_dir(tmp_path, QWEN, "T20260502-101500")
    rows = mcq_rows([1, 0, 1])
    vlm_dump(report_acc(rows), run / f"{QWEN}_MMStar_acc.csv")
    del rows[1]["hit"]
    path = run / f"{QWEN}_MMStar_exact_matching_result.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(CurationError, match=r"row 3: hit None is not a number"):
        vlmevalkit_items(tmp_path)
