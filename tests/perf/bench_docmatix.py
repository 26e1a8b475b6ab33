"""Docmatix generation overhead: the ``docmatix_generate`` step around the transformers engine against calling
``model.generate`` directly on the same prompts with the same batch size, in one process.

- ``direct``: the step's own prompts (chat template applied), left-padded batches of ``--batch``,
  ``model.generate(max_new_tokens=--max-tokens)``, greedy;
- ``pipeline``: ``DocmatixGenerate.process_batch`` over the same documents (page text, chunking with the model's
  tokenizer, prompt variants, the generation cache written as batches finish, parsing, filtering), with a fresh
  cache each repeat so everything is generated;
- ``render``: pages/s of the 150 dpi renderer, separately: a random model writes no Q#/A# pairs, so the pipeline
  renders nothing here, while a real model's kept documents are rendered after generation.

Target: pipeline throughput >= 0.9x direct. Results: ``tests/perf/results/bench_docmatix.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curation.generation.docmatix.step import DocmatixGenerate  # noqa: E402
from curation.generation.docmatix.text import build_messages, choose_variant, page_texts  # noqa: E402
from curation.recipe import load_recipe  # noqa: E402
from curation.sample import Sample  # noqa: E402
from curation.steps.contract import StepContext  # noqa: E402
from curation.steps.pdf import render_pages  # noqa: E402
from schemas import Page, PageLine, PdfRecord  # noqa: E402
from tests.llm_models import make_tiny_causal_lm  # noqa: E402
from tests.pdfa_data import PdfPage, make_pdf, text_lines  # noqa: E402


def documents(n: int) -> list[PdfRecord]:
    docs = []
    for i in range(n):
        pages = [text_lines(f"Report {i} section {p}: revenue grew by {p + 2} percent", 12) for p in range(1 + i % 3)]
        docs.append(
            PdfRecord(
                key=f"{i:06d}",
                source="pdfa",
                meta={},
                pdf=make_pdf([PdfPage(lines) for lines in pages]),
                pages=[Page(lines=[PageLine(text=t, bbox=b) for t, b in lines]) for lines in pages],
            )
        )
    return docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_tiny_causal_lm(root / "model")
        docs = documents(args.docs)
        engine = f"{{type: transformers, model: '{model_dir}', device: cpu, batch_size: {args.batch}}}"
        recipe = load_recipe(
            "docmatix",
            [
                f"steps.0.engine={engine}",
                f"steps.0.sampling={{max_tokens: {args.max_tokens}, temperature: 0.0, top_p: 1.0, seed: 0}}",
                f"steps.0.batch_documents={args.batch}",
            ],
        )
        cfg = recipe.steps[0]
        import torch

        torch.set_num_threads(os.cpu_count() or 1)

        def pipeline(repeat: int) -> dict:
            data = cfg.model_copy(update={"cache_dir": str(root / f"cache{repeat}")})
            step = DocmatixGenerate(data, StepContext("docmatix_generate", Path(".")))
            started = time.perf_counter()
            for i in range(0, len(docs), args.batch):
                step.process_batch([Sample(d, "") for d in docs[i : i + args.batch]])
            seconds = time.perf_counter() - started
            report = step.report()
            step.close()
            return {"seconds": seconds, "report": report}

        # the same prompts, built by the step's own functions (one chunk per document at these sizes)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        prompts = []
        for d in docs:
            text = "\nNEW PAGE\n".join(page_texts(d))
            messages = build_messages(cfg.prompts, choose_variant(d.key, cfg.prompts.variants), text)
            prompts.append(
                tokenizer.apply_chat_template(
                    [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
                )
            )

        def direct() -> dict:
            started = time.perf_counter()
            generated = 0
            with torch.inference_mode():
                for i in range(0, len(prompts), args.batch):
                    batch = tokenizer(prompts[i : i + args.batch], return_tensors="pt", padding=True)
                    out = model.generate(
                        **batch, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                    )
                    generated += int((out[:, batch["input_ids"].shape[1] :] != tokenizer.pad_token_id).sum())
            return {"seconds": time.perf_counter() - started, "generated_tokens": generated}

        runs = {"direct": [], "pipeline": []}
        last_report = None
        for r in range(args.repeats):  # interleaved, so machine noise hits both alike
            runs["direct"].append(direct())
            p = pipeline(r)
            runs["pipeline"].append(p)
            last_report = p["report"]
        t_direct = float(np.median([x["seconds"] for x in runs["direct"]]))
        t_pipe = float(np.median([x["seconds"] for x in runs["pipeline"]]))
        # rendering, measured on its own
        started = time.perf_counter()
        n_pages = 0
        for d in docs[:12]:
            n_pages += len(render_pages(d.pdf, [(i, "") for i in range(len(d.pages))], 150, 2940, "png"))
        render_s = time.perf_counter() - started
    ratio = t_direct / t_pipe
    report = {
        "benchmark": "bench_docmatix",
        "params": vars(args),
        "direct_median_s": round(t_direct, 3),
        "pipeline_median_s": round(t_pipe, 3),
        "documents_per_s": {"direct": round(args.docs / t_direct, 2), "pipeline": round(args.docs / t_pipe, 2)},
        "pipeline_over_direct_throughput": round(ratio, 3),
        "target": {"min_ratio": 0.9, "met": ratio >= 0.9},
        "pipeline_report": last_report,
        "direct_generated_tokens": runs["direct"][-1]["generated_tokens"],
        "render_pages_per_s_150dpi": round(n_pages / render_s, 1),
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out = ROOT / "tests" / "perf" / "results" / "bench_docmatix.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        f"docmatix: pipeline {args.docs / t_pipe:.2f} docs/s vs direct generate {args.docs / t_direct:.2f} docs/s: "
        f"{ratio:.3f}x (target >= 0.9: {'MET' if ratio >= 0.9 else 'NOT MET'}); rendering "
        f"{report['render_pages_per_s_150dpi']} pages/s at 150 dpi -> {out}"
    )


if __name__ == "__main__":
    main()
