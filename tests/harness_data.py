"""Evaluation-harness output in the layouts lmms-eval and VLMEvalKit write today, by writers of our own (no harness
code is copied). Each writer names the upstream function whose output it reproduces; read at
EvolvingLMMs-Lab/lmms-eval 75571cf (0.7.2, 2026-08; the same code in the v0.6 and v0.7 tags) and
open-compass/VLMEvalKit e8e78f0 (2026-08).

lmms-eval (``lmms-eval --output_path OUT --log_samples``):
- ``OUT/{sanitize_model_name(model)}/{date}_results.json``: ``EvaluationTracker.save_results_aggregated``
  (lmms_eval/loggers/evaluation_tracker.py), ``json.dumps(indent=2, ensure_ascii=False)`` of
  ``evaluator.evaluate``'s ``results_dict`` + ``simple_evaluate``'s config / git / date fields + ``task_hashes`` +
  the ``GeneralConfigTracker`` fields; ``date`` is ``utils.get_datetime_str()`` (``%Y%m%d_%H%M%S``).
- ``OUT/{model}/{date}_samples_{task}.jsonl`` per task of ``configs``: ``EvaluationTracker.save_results_samples``.
- a task's entry of ``results``: :func:`lmms_task_entry` (``evaluator_utils.consolidate_results``, then
  ``prepare_print_tasks``'s copy); a group's: :func:`lmms_group_entry` (``consolidate_group_results``).
  ``prepare_print_tasks`` pops each entry's ``samples`` count from the copy it writes; FORMATS.md lists it, so the
  writers add it when asked (``samples=``), to show that the parser skips it either way.

VLMEvalKit (``python run.py --work-dir WORK --model M --data D ...``):
- run folders ``WORK/M/T%Y%m%d-%H%M%S/`` (``vlmeval.smp.file.build_eval_id``), before 2026-04
  ``WORK/M/T%Y%m%d_G<commit>/``; after each dataset run.py links the dataset's files and ``status.json`` into
  ``WORK/M/`` (:func:`vlm_link_results`).
- tables: :func:`vlm_dump` (``vlmeval.smp.file.dump``); ``status.json``: :func:`write_vlm_status`
  (``vlmeval.smp.status_report.upsert_run_status`` / ``upsert_dataset_status``), metrics flattened by
  :func:`vlm_flatten` (``flatten_summary_metrics``).
- per-item files: ``{M}_{D}_{judge}_result.{fmt}`` with ``hit`` (``ImageMCQDataset.evaluate_heuristic``),
  ``{M}_{D}_auxmatch.{fmt}`` with ``score`` (``ImageYORNDataset.evaluate``), ``{M}_{D}_results.{fmt}`` with
  ``eval_match`` / ``eval_score`` (``ImageVQADataset.evaluate_heuristic``); ``fmt`` is PRED_FORMAT (xlsx default,
  tsv, json). Scores: MCQ ``{M}_{D}_acc.csv`` (always csv), VQA ``{M}_{D}_acc.{EVAL_FORMAT}`` (csv or json),
  yes/no ``{M}_{D}_score.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import statistics
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

# ---- lmms-eval ------------------------------------------------------------------------------------------------------


def sanitize_model_name(model_name: str) -> str:
    """lmms_eval/utils.py ``sanitize_model_name``: the last two parts of the model path, joined by ``__``."""
    parts = model_name.split("/")
    return re.sub(r"[\"<>:/\|\\?\*\[\]]+", "__", "/".join(parts[-2:]))


def function_repr(name: str) -> str:
    """How a ``!function`` of a task YAML lands in the results file: ``handle_non_serializable`` -> ``str(fn)``."""
    return f"<function {name} at 0x7f3c5a2e1d30>"


def mean(values: list[float]) -> float:
    """lmms_eval/api/metrics.py ``mean``: ``sum(arr) / len(arr)``."""
    return sum(values) / len(values)


def clt_stderr(values: list[float]) -> float:
    """``TaskOutput.calculate_clt_aggregate_metric``: ``np.std(x, ddof=1) / sqrt(n)`` (also ``mean_stderr``)."""
    return statistics.stdev(values) / math.sqrt(len(values))


@dataclass(frozen=True)
class LmmsMetric:
    """One ``<metric>,<filter>`` of a task with its standard errors ("N/A" where lmms-eval has none)."""

    metric: str
    value: float
    filter: str = "none"
    stderr: float | str = "N/A"
    stderr_clt: float | str = "N/A"
    stderr_clustered: float | str = "N/A"
    stability: dict[str, float] | None = None  # --repeats > 1: expected_accuracy, consensus_accuracy, ...


def lmms_task_entry(
    alias: str, metrics: list[LmmsMetric], *, samples: int | None = None, paired: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A task's entry of ``results``: ``consolidate_results`` writes ``alias``, then per (metric, filter) the
    value, ``samples``, ``_stderr``, ``_stderr_clt``, ``_stderr_clustered`` and the stability statistics;
    ``evaluate`` adds the ``--baseline`` ``paired_*`` fields (:func:`lmms_paired`) after ``prepare_print_tasks``."""
    entry: dict[str, Any] = {"alias": alias}
    for m in metrics:
        entry[f"{m.metric},{m.filter}"] = m.value
        if samples is not None:
            entry["samples"] = samples
        entry[f"{m.metric}_stderr,{m.filter}"] = m.stderr
        entry[f"{m.metric}_stderr_clt,{m.filter}"] = m.stderr_clt
        entry[f"{m.metric}_stderr_clustered,{m.filter}"] = m.stderr_clustered
        for stat, value in (m.stability or {}).items():
            entry[f"{m.metric}_{stat},{m.filter}"] = value
    entry.update(paired or {})
    return entry


def lmms_group_entry(alias: str, metrics: dict[str, tuple[float, float | str]]) -> dict[str, Any]:
    """A group with ``aggregate_metric_list`` (``consolidate_group_results``): per ``<metric>,<filter>`` the
    size-weighted mean of its subtasks and the pooled ``_stderr``; a group without one is
    ``{"alias": ..., " ": " "}``."""
    entry: dict[str, Any] = {}
    for key, (value, stderr) in metrics.items():
        metric, _, filt = key.partition(",")
        entry[key] = value
        entry[f"{metric}_stderr,{filt}"] = stderr
    entry["alias"] = alias
    return entry


def lmms_paired(baseline: str, baseline_mean: float, ci_lower: float, ci_upper: float, p_value: float) -> dict:
    """``evaluate``'s ``--baseline`` fields (``compute_baseline_comparison``'s fractions x 100)."""
    return {
        "paired_baseline": baseline,
        "paired_baseline_score": baseline_mean * 100,
        "paired_ci_lower": ci_lower * 100,
        "paired_ci_upper": ci_upper * 100,
        "paired_pvalue": p_value,
    }


def lmms_task_config(
    task: str, metric_list: list[dict[str, Any]], *, filter_list: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``configs[task]``: ``TaskConfig.to_dict`` (None fields dropped, callables as ``str``; nested ones by
    ``handle_non_serializable``)."""
    config: dict[str, Any] = {
        "task": task,
        "dataset_path": f"lmms-lab/{task}",
        "dataset_kwargs": {"token": True},
        "test_split": "test",
        "full_docs": False,
        "process_results_use_image": False,
        "doc_to_visual": function_repr(f"{task}_doc_to_visual"),
        "doc_to_text": function_repr(f"{task}_doc_to_text"),
        "doc_to_target": "answer",
        "description": "",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "num_fewshot": 0,
        "metric_list": metric_list,
        "output_type": "generate_until",
        "generation_kwargs": {"max_new_tokens": 16, "temperature": 0.0, "do_sample": False, "until": ["\n\n"]},
        "repeats": 1,
        "should_decontaminate": False,
        "metadata": [{"version": 0.0}],
    }
    if filter_list is not None:
        config["filter_list"] = filter_list
    return config


def lmms_filter(name: str, *functions: str) -> dict[str, Any]:
    """A ``filter_list`` entry as dumped."""
    return {"name": name, "filter": [{"function": f} for f in functions]}


def lmms_sample(doc_id: int, target: Any, response: str, metrics: dict[str, Any], *, prompt: str = "") -> dict:
    """One line of ``save_results_samples``: ``evaluate``'s example (``doc_id``, ``doc``, ``target``,
    ``arguments``, ``resps``, ``filtered_resps``, ``token_counts``, ``doc_hash``, then ``process_results``'s
    metrics) after the tracker's clean-up: ``input`` = the first argument, one-instance lists unwrapped, ``resps``
    dropped when it equals ``filtered_resps``, ``target`` as ``str``, ``doc`` and ``arguments`` removed."""
    return {
        "doc_id": doc_id,
        "target": str(target),
        "filtered_resps": response,
        "token_counts": [None],
        "doc_hash": hashlib.sha256(f"doc {doc_id}".encode()).hexdigest(),
        **metrics,
        "input": prompt or f"<image>\nQuestion {doc_id}?",
    }


def lmms_results_doc(
    results: dict[str, dict[str, Any]],
    configs: dict[str, dict[str, Any]],
    *,
    groups: dict[str, dict[str, Any]] | None = None,
    group_subtasks: dict[str, list[str]] | None = None,
    date_id: str = "20250611_142233",
    model_name: str = "lmms-lab/llava-onevision-qwen2-0.5b-ov",
    n_samples: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The whole results file, keys in the order lmms-eval writes them."""
    doc: dict[str, Any] = {"results": results}
    if groups:
        doc["groups"] = groups
    subtasks = group_subtasks if group_subtasks is not None else {t: [] for t in configs}
    doc.update(
        {
            "group_subtasks": subtasks,
            "configs": dict(sorted(configs.items())),
            "versions": {t: ("Yaml" if t in configs else None) for t in sorted(results)},
            "n-shot": {t: 0 for t in sorted(configs)},
            "higher_is_better": {
                t: {m["metric"]: True for m in c.get("metric_list", [])} for t, c in sorted(configs.items())
            },
            "n-samples": {t: {"original": n, "effective": n} for t, n in (n_samples or {}).items()},
            "config": {
                "model": "llava_onevision",
                "model_args": f"pretrained={model_name},conv_template=qwen_1_5",
                "batch_size": "1",
                "batch_sizes": [],
                "device": None,
                "use_cache": None,
                "limit": None,
                "bootstrap_iters": 100000,
                "gen_kwargs": "",
                "random_seed": 0,
                "numpy_seed": 1234,
                "torch_seed": 1234,
                "fewshot_seed": 1234,
            },
            "git_hash": "75571cf",
            "git_branch": "main",
            "lmms_eval_version": "0.7.2",
            "date": date_id,
            "usage": {},
            "task_hashes": {t: hashlib.sha256(t.encode()).hexdigest() for t in sorted(configs)},
            "model_source": "llava_onevision",
            "model_name": model_name,
            "model_name_sanitized": sanitize_model_name(model_name),
            "system_instruction": None,
            "system_instruction_sha": None,
            "fewshot_as_multiturn": False,
            "chat_template": None,
            "chat_template_sha": None,
            "start_time": 1182.4,
            "end_time": 1519.9,
            "total_evaluation_time_seconds": "337.5",
        }
    )
    return doc


def write_lmms_eval(
    output_path: Path,
    doc: dict[str, Any],
    samples: dict[str, list[dict[str, Any]]] | None = None,
    *,
    mtime: float | None = None,
) -> Path:
    """Write a run as lmms-eval does (results, then one samples file per task of ``configs`` that has samples);
    returns the results file."""
    folder = Path(output_path) / doc["model_name_sanitized"]
    folder.mkdir(parents=True, exist_ok=True)
    date_id = doc["date"].replace(":", "-")
    results = folder / f"{date_id}_results.json"
    results.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    written = [results]
    for task in doc["configs"]:
        if samples and task in samples:
            path = folder / f"{date_id}_samples_{task}.jsonl"
            with open(path, "a", encoding="utf-8") as f:
                for sample in samples[task]:
                    f.write(json.dumps(sample, ensure_ascii=False) + "\n")
            written.append(path)
    if mtime is not None:
        for path in written:
            os.utime(path, (mtime, mtime))
    return results


# Per-item values of the lmms-eval run below (doc order).
SQA_IMG_HITS = [1.0, 0.0, 1.0, 1.0, 0.0]
SQA_HITS = [1.0, 1.0, 0.0, 1.0]
DOCVQA_ANLS = [1.0, 0.8571428571428572, 0.0, 0.6]
AI2D_HITS = [1.0, 1.0, 0.0]
GSM8K_STRICT = [0.0, 1.0, 0.0]
GSM8K_FLEXIBLE = [1.0, 1.0, 0.0]


def lmms_v06_run(date_id: str = "20250611_142233") -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A 0.6/0.7 run of mme (custom aggregation, dict items), scienceqa_img (with ``--baseline``), scienceqa and
    their group scienceqa_full (with an ``aggregate_metric_list``), docvqa_val (ANLS), ai2d (one named filter,
    ``--repeats`` statistics) and gsm8k_cot (two filters): (results file, samples per task). The MME scores are
    not recomputed from its four sample lines."""
    mean_metric = [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True}]
    mme_agg = function_repr("mme_aggregate_results")
    configs = {
        "mme": lmms_task_config(
            "mme",
            [
                {"metric": "mme_perception_score", "aggregation": mme_agg, "higher_is_better": True},
                {"metric": "mme_cognition_score", "aggregation": mme_agg, "higher_is_better": True},
            ],
        ),
        "scienceqa_img": lmms_task_config("scienceqa_img", mean_metric),
        "scienceqa": lmms_task_config("scienceqa", mean_metric),
        "docvqa_val": lmms_task_config("docvqa_val", [{"metric": "anls", "aggregation": "mean"}]),
        "ai2d": lmms_task_config(
            "ai2d", mean_metric, filter_list=[lmms_filter("flexible-extract", function_repr("MultiChoiceRegexFilter"))]
        ),
        "gsm8k_cot": lmms_task_config(
            "gsm8k_cot",
            [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
            filter_list=[lmms_filter("strict-match", "regex", "take_first"), lmms_filter("flexible-extract", "regex")],
        ),
    }
    mme_scores = [1.0, 1.0, 0.0, 1.0]
    sqa_group = (mean(SQA_IMG_HITS) * 5 + mean(SQA_HITS) * 4) / 9
    results = {
        "mme": lmms_task_entry(
            "mme",
            [
                LmmsMetric("mme_perception_score", 1498.25, stderr_clt=clt_stderr(mme_scores[:2])),
                LmmsMetric("mme_cognition_score", 312.5, stderr_clt=clt_stderr(mme_scores[2:])),
            ],
            samples=4,
        ),
        "scienceqa_full": lmms_group_entry("scienceqa_full", {"exact_match,none": (sqa_group, 0.16666666666666666)}),
        "scienceqa": lmms_task_entry(
            " - scienceqa",
            [LmmsMetric("exact_match", mean(SQA_HITS), stderr=clt_stderr(SQA_HITS), stderr_clt=clt_stderr(SQA_HITS))],
            samples=4,
        ),
        "scienceqa_img": lmms_task_entry(
            " - scienceqa_img",
            [
                LmmsMetric(
                    "exact_match",
                    mean(SQA_IMG_HITS),
                    stderr=clt_stderr(SQA_IMG_HITS),
                    stderr_clt=clt_stderr(SQA_IMG_HITS),
                    stderr_clustered=0.2,
                )
            ],
            samples=5,
            paired=lmms_paired("qwen25vl", 0.4, -0.35, 0.75, 0.4226),
        ),
        "docvqa_val": lmms_task_entry(
            "docvqa_val",
            [LmmsMetric("anls", mean(DOCVQA_ANLS), stderr=clt_stderr(DOCVQA_ANLS), stderr_clt=clt_stderr(DOCVQA_ANLS))],
            samples=4,
        ),
        "ai2d": lmms_task_entry(
            "ai2d",
            [
                LmmsMetric(
                    "exact_match",
                    mean(AI2D_HITS),
                    filter="flexible-extract",
                    stderr=clt_stderr(AI2D_HITS),
                    stderr_clt=clt_stderr(AI2D_HITS),
                    stability={
                        "expected_accuracy": 0.6,
                        "consensus_accuracy": 0.6666666666666666,
                        "internal_variance": 0.05,
                        "consistency_rate": 0.9,
                    },
                )
            ],
            samples=3,
        ),
        "gsm8k_cot": lmms_task_entry(
            "gsm8k_cot",
            [
                LmmsMetric("exact_match", mean(GSM8K_STRICT), filter="strict-match", stderr=0.3333333333333333),
                LmmsMetric("exact_match", mean(GSM8K_FLEXIBLE), filter="flexible-extract", stderr=0.3333333333333333),
            ],
            samples=3,
        ),
    }
    groups = {"scienceqa_full": results["scienceqa_full"]}
    subtasks = {t: [] for t in ("mme", "docvqa_val", "ai2d", "gsm8k_cot")} | {
        "scienceqa_full": ["scienceqa", "scienceqa_img"]
    }
    doc = lmms_results_doc(
        results,
        configs,
        groups=groups,
        group_subtasks=subtasks,
        date_id=date_id,
        n_samples={"mme": 4, "scienceqa_img": 5, "scienceqa": 4, "docvqa_val": 4, "ai2d": 3, "gsm8k_cot": 3},
    )
    categories = ["OCR", "OCR", "code_reasoning", "code_reasoning"]
    samples = {
        "mme": [
            lmms_sample(
                i,
                "Yes",
                "Yes",
                {
                    ("mme_perception_score" if i < 2 else "mme_cognition_score"): {
                        "question_id": f"{categories[i]}/{i // 2}.png",
                        "category": categories[i],
                        "score": mme_scores[i],
                    }
                },
            )
            for i in range(4)
        ],
        "scienceqa_img": [
            lmms_sample(i, "B", "B" if v else "C", {"exact_match": v}) for i, v in enumerate(SQA_IMG_HITS)
        ],
        "scienceqa": [lmms_sample(i, "A", "A" if v else "D", {"exact_match": v}) for i, v in enumerate(SQA_HITS)],
        "docvqa_val": [lmms_sample(i, ["1999", "1,999"], "1999", {"anls": v}) for i, v in enumerate(DOCVQA_ANLS)],
        "ai2d": [lmms_sample(i, "C", "C", {"exact_match": v}) for i, v in enumerate(AI2D_HITS)],
        # two filters: one line per filter and doc, all docs of the first filter first
        "gsm8k_cot": [lmms_sample(i, "18", "18", {"exact_match": v}) for i, v in enumerate(GSM8K_STRICT)]
        + [lmms_sample(i, "18", "18", {"exact_match": v}) for i, v in enumerate(GSM8K_FLEXIBLE)],
    }
    return doc, samples


# ---- VLMEvalKit -----------------------------------------------------------------------------------------------------


def vlm_cell(value: Any) -> str:
    """A DataFrame cell as ``to_csv`` writes it: floats by ``repr``, None / NaN empty, bools and lists by ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def vlm_dump(rows: list[dict[str, Any]], path: Path) -> Path:
    """``vlmeval.smp.file.dump`` of a DataFrame, by the file's suffix: ``.csv`` / ``.tsv``:
    ``to_csv(index=False, encoding='utf-8', quoting=csv.QUOTE_ALL)`` (tsv with ``sep='\\t'``); ``.json``:
    ``json.dump(df.to_dict('records'), indent=4, ensure_ascii=False)``; ``.xlsx``: :func:`write_xlsx`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if path.suffix == ".json":
        records = [{c: row.get(c) for c in columns} for row in rows]
        path.write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".xlsx":
        write_xlsx(path, columns, [[row.get(c) for c in columns] for row in rows])
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_ALL)
            writer.writerow(columns)
            writer.writerows([vlm_cell(row.get(c)) for c in columns] for row in rows)
    return path


def write_xlsx(path: Path, columns: list[str], rows: list[list[Any]]) -> None:
    """A one-sheet workbook (pandas ``to_excel(index=False)``: a header row, then the rows), as a minimal OOXML
    package (inline strings)."""

    def ref(r: int, c: int) -> str:
        letters = ""
        c += 1
        while c:
            c, rem = divmod(c - 1, 26)
            letters = chr(65 + rem) + letters
        return f"{letters}{r + 1}"

    def cell(r: int, c: int, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return f'<c r="{ref(r, c)}" t="b"><v>{int(value)}</v></c>'
        if isinstance(value, int | float):
            return f'<c r="{ref(r, c)}"><v>{value!r}</v></c>'
        return f'<c r="{ref(r, c)}" t="inlineStr"><is><t>{escape(str(value))}</t></is></c>'

    sheet_rows = [columns, *rows]
    body = "".join(
        f'<row r="{r + 1}">' + "".join(cell(r, c, v) for c, v in enumerate(values)) + "</row>"
        for r, values in enumerate(sheet_rows)
    )
    ns = "http://schemas.openxmlformats.org"
    files = {
        "[Content_Types].xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="{ns}/package/2006/content-types">'
            f'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            f'<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" '
            f'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" '
            f'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'
        ),
        "_rels/.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/officeDocument" '
            f'Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{ns}/spreadsheetml/2006/main" '
            f'xmlns:r="{ns}/officeDocument/2006/relationships"><sheets>'
            f'<sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{ns}/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{ns}/officeDocument/2006/relationships/worksheet" '
            f'Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": (
            f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{ns}/spreadsheetml/2006/main">'
            f"<sheetData>{body}</sheetData></worksheet>"
        ),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)


def vlm_run_dir(work_dir: Path, model: str, eval_id: str = "T20260502-101500") -> Path:
    """``{work_dir}/{model}/{eval_id}``: ``T%Y%m%d-%H%M%S`` (``build_eval_id``) or the legacy
    ``T%Y%m%d_G<commit>``."""
    run = Path(work_dir) / model / eval_id
    run.mkdir(parents=True, exist_ok=True)
    return run


def vlm_link_results(run: Path, model: str, dataset: str, *, absolute: bool = False) -> list[Path]:
    """run.py after a dataset's evaluation: each file of the run folder whose name contains ``{model}_{dataset}``,
    and ``status.json`` (not ``*_checkpoint.pkl``, ``*_PREV.pkl``, ``*_structs.pkl``), linked into the model
    folder, replacing what was there: relative links (``link.symlink_to(file.relative_to(model_folder))``); the
    pre-2026-04 run.py made absolute ones (``os.symlink(file, link)``)."""
    meta = run.parent
    links = []
    for path in sorted(run.iterdir()):
        if not path.is_file() or not (f"{model}_{dataset}" in path.name or path.name == "status.json"):
            continue
        if path.name.endswith(("_checkpoint.pkl", "_PREV.pkl", "_structs.pkl")):
            continue
        link = meta / path.name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(path if absolute else path.relative_to(meta))
        links.append(link)
    return links


def vlm_flatten(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``flatten_summary_metrics`` of a DataFrame: its numeric columns per row, each keyed
    ``col=val|...|<numeric col>`` by the row's non-numeric cells."""

    def numeric(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)

    columns = list(dict.fromkeys(k for row in rows for k in row))
    numeric_cols = [c for c in columns if any(numeric(row.get(c)) for row in rows)]
    dim_cols = [c for c in columns if c not in numeric_cols]
    out: dict[str, Any] = {}
    for i, row in enumerate(rows):
        prefix = "|".join(f"{c}={str(row[c]).strip()}" for c in dim_cols if row.get(c) not in (None, ""))
        for c in numeric_cols:
            if numeric(row.get(c)):
                key = f"{prefix}|{c}" if prefix else c
                out[f"{key}#{i}" if key in out else key] = row[c]
    return out


def vlm_dataset_status(
    status: str = "done",
    *,
    prediction_file: str | None = None,
    judge_model: str | None = "exact_matching",
    metrics: dict[str, Any] | None = None,
    primary_metric: str | list[str] | None = None,
    skip_reason: str | None = None,
    error_message: str | None = None,
) -> dict[str, Any]:
    """A dataset's entry of ``status.json`` as ``upsert_dataset_status`` leaves it (empty fields popped)."""
    entry: dict[str, Any] = {"status": status}
    for key, value in (
        ("prediction_file", prediction_file),
        ("judge_model", judge_model),
        ("reuse_aux", True),
        ("skip_reason", skip_reason),
        ("error_message", error_message),
        ("primary_metric", primary_metric),
        ("metrics", metrics),
    ):
        if value is not None and value != {}:
            entry[key] = value
    entry["updated_at"] = "2026-05-02T10:31:07.551203+08:00"
    return entry


def write_vlm_status(run: Path, model: str, datasets: dict[str, dict[str, Any]]) -> Path:
    """``{run}/status.json`` (``upsert_run_status`` + ``upsert_dataset_status``, ``json.dump(indent=2)``)."""
    doc = {
        "schema_version": "1.0",
        "eval_id": run.name,
        "created_at": "2026-05-02T10:15:00.114508+08:00",
        "datasets": datasets,
        "model_name": model,
        "updated_at": "2026-05-02T10:31:07.553910+08:00",
        "commit": "e8e78f05",
        "argv": ["run.py", "--model", model, "--data", *datasets],
        "api_mode": False,
        "world_size": 1,
        "pred_format": "xlsx",
        "eval_format": "csv",
        "mode": "all",
        "reuse": False,
        "reuse_aux": True,
    }
    path = run / "status.json"
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def mcq_rows(hits: list[int], *, splits: list[str] | None = None, start: int = 0) -> list[dict[str, Any]]:
    """``{M}_{D}_{judge}_result`` rows (``mcq_vanilla_eval``: the prediction file's columns, lower-cased, + hit,
    log), index order."""
    rows = []
    for i, hit in enumerate(hits):
        row: dict[str, Any] = {
            "index": start + i,
            "question": f"Which option is right ({i})?",
            "hint": None,
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": "white",
            "answer": "B",
            "category": "attribute_recognition" if i % 2 else "image_scene",
            "l2-category": "finegrained_perception (instance-level)" if i % 2 else "coarse_perception",
        }
        if splits is not None:
            row["split"] = splits[i]
        row.update({"prediction": "B" if hit else "C", "hit": hit, "log": f"Match Log: {'B' if hit else 'C'}. "})
        rows.append(row)
    return rows


def report_acc(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``_acc`` table of MCQ rows (``multiple_choice.report_acc``, our own code): ``split``, ``Overall`` per
    split, then each category's accuracy."""
    splits = list(dict.fromkeys(r.get("split", "none") for r in rows))
    out = []
    for sp in splits:
        sub = [r for r in rows if r.get("split", "none") == sp]
        row: dict[str, Any] = {"split": sp, "Overall": mean([r["hit"] for r in sub])}
        for group in ("l2-category", "category"):
            for ab in sorted({r[group] for r in rows}):
                cat = [r["hit"] for r in sub if r[group] == ab]
                row[ab] = mean(cat) if cat else float("nan")
        out.append(row)
    return out


MME_CATEGORIES = ("OCR", "artwork", "code_reasoning", "commonsense_reasoning")


def mme_rows(scores: dict[str, list[tuple[bool, bool]]]) -> list[dict[str, Any]]:
    """``{M}_MME_auxmatch`` rows: per category, per image its two questions (index, image_path, question, answer,
    category, prediction, extracted, score)."""
    rows = []
    index = 0
    for category, images in scores.items():
        for n, pair in enumerate(images):
            for answer, right in zip(("Yes", "No"), pair, strict=True):
                said = answer if right else ("No" if answer == "Yes" else "Yes")
                rows.append(
                    {
                        "index": index,
                        "image_path": f"MME/{category}/{n:04d}.jpg",
                        "question": f"Is this {category}? Please answer yes or no.",
                        "answer": answer,
                        "category": category,
                        "prediction": said,
                        "extracted": said,
                        "score": right,
                    }
                )
                index += 1
    return rows


def mme_score_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``_score.csv`` row of MME rows (``yorn.MME_rating``, our own code: per subtask acc + acc+, x 100;
    ``perception`` and ``reasoning`` the sums of the subtasks present)."""
    per: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        per.setdefault(r["category"], {}).setdefault(r["image_path"], []).append(r["score"])
    scores = {}
    for cat, images in per.items():
        acc = mean([float(s) for pair in images.values() for s in pair]) * 100
        acc_plus = mean([float(p[0] and p[1]) for p in images.values()]) * 100
        scores[cat] = acc + acc_plus
    perception = sum(v for k, v in scores.items() if k in ("OCR", "artwork"))
    reasoning = sum(v for k, v in scores.items() if k in ("code_reasoning", "commonsense_reasoning"))
    return [{"perception": perception, "reasoning": reasoning, **scores}]


def vqa_rows(matches: list[list[float]]) -> list[dict[str, Any]]:
    """``{M}_{D}_results`` rows (``ImageVQADataset.evaluate_heuristic``: + eval_gt, eval_pred, eval_match,
    eval_score = mean of eval_match)."""
    return [
        {
            "index": i,
            "question": f"What is the date in document {i}?",
            "answer": str(["1999", "1,999"][: len(m)]),
            "prediction": "1999",
            "eval_gt": str(["1999", "1,999"][: len(m)]),
            "eval_pred": "1999",
            "eval_match": m,
            "eval_score": mean(m),
        }
        for i, m in enumerate(matches)
    ]


def docvqa_hit(match: list[float]) -> float:
    """``vqa_eval.hit_calculate`` for DocVQA (our own code): 1 - the smallest distance, 0 below 0.5."""
    anls = 1 - min(match)
    return 0.0 if anls < 0.5 else anls
