"""Judge overhead: the ``judge`` step around the openai engine against calling the engine directly on the same
requests, against the loopback OpenAI-compatible server (``tests/openai_server.py``), in one process.

- ``direct``: the requests the step makes (built by the step's own ``_plan``: system prompt, criterion template,
  images), in the step's batches, through ``engine.generate``; nothing else;
- ``judge``: ``Judge.process_batch`` over the same samples (prompts, cache keys, the generation cache read and
  written as batches finish, parsing, meta), with a fresh cache each repeat so every request goes to the server;
- ``cached``: the judge again over a filled cache (the server is asked nothing), for the record.

The server answers each request after ``--latency`` seconds (a model's time; 0 measures the bare loopback, the
worst case for the ratio) with ``Rating: N``. Samples: ``--samples`` sft records of 2 turns and one 128x128 PNG,
judged on the four presets (8 requests a sample). Interleaved repeats, medians.

Target: judge time <= 1.10x direct (overhead <= 10%) at the default latency. Results:
``tests/perf/results/bench_judge.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from curation.generation.engines import Generation, make_engine  # noqa: E402
from curation.generation.judge.presets import PRESETS  # noqa: E402
from curation.generation.judge.step import Judge  # noqa: E402
from curation.recipe import JudgeStep  # noqa: E402
from curation.sample import Sample  # noqa: E402
from curation.steps.contract import StepContext  # noqa: E402
from schemas import SftRecord, Turn  # noqa: E402
from tests.openai_server import ScriptedOpenAIServer  # noqa: E402


def make_samples(n: int) -> list[Sample]:
    samples = []
    for i in range(n):
        out = io.BytesIO()
        Image.new("RGB", (128, 128), ((i * 37) % 256, (i * 91) % 256, 128)).save(out, "PNG")
        turns = [
            Turn(user=f"How many shapes are in image {i}?", assistant=f"There are {i % 7 + 1} shapes."),
            Turn(user="What colour is the first shape?", assistant=f"It is colour number {i}."),
        ]
        samples.append(Sample(SftRecord(key=f"s{i:06d}", source="bench", images=[out.getvalue()], turns=turns), ""))
    return samples


def fresh(samples: list[Sample]) -> list[Sample]:
    """Copies: the judge writes into each record's meta."""
    return [Sample(s.record.model_copy(update={"meta": {}}), s.origin) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16, help="samples per engine call (the step's batch_size)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds the server takes per request")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load_before = os.getloadavg()
    samples = make_samples(args.samples)

    def answer(body: dict) -> object:
        reply = f"Clear enough.\nRating: {1 + len(json.dumps(body['messages'])) % 5}"
        return ("sleep", args.latency, reply) if args.latency > 0 else reply

    with tempfile.TemporaryDirectory() as tmp, ScriptedOpenAIServer(answer) as server:
        root = Path(tmp)
        engine_cfg = {"type": "openai", "base_url": server.base_url, "model": "judge", "concurrency": args.concurrency}

        def config(cache: Path) -> JudgeStep:
            return JudgeStep.model_validate(
                {"step": "judge", "engine": engine_cfg, "criteria": list(PRESETS), "batch_size": args.batch,
                 "cache_dir": str(cache)}
            )  # fmt: skip

        # the step's own requests, per batch
        planner = Judge(config(root / "plan"), StepContext("judge", root))
        batches = [
            [ask.request for s in fresh(samples[i : i + args.batch]) for ask in planner._plan(s).asks]
            for i in range(0, len(samples), args.batch)
        ]
        planner.close()
        n_requests = sum(len(b) for b in batches)

        def direct() -> dict:
            engine = make_engine(config(root / "unused").engine)
            started = time.perf_counter()
            results = [r for batch in batches for r in engine.generate(batch)]
            seconds = time.perf_counter() - started
            engine.close()
            assert all(isinstance(r, Generation) for r in results)
            return {"seconds": seconds}

        def judge(cache: Path) -> dict:
            step = Judge(config(cache), StepContext("judge", root))
            copies = fresh(samples)
            started = time.perf_counter()
            for i in range(0, len(copies), args.batch):
                step.process_batch(copies[i : i + args.batch])
            seconds = time.perf_counter() - started
            report = step.report()
            step.close()
            assert report["rated"] == n_requests and report["judge_unparsed"] == 0
            return {"seconds": seconds, "report": report}

        runs: dict[str, list[dict]] = {"direct": [], "judge": [], "cached": []}
        direct()  # warm-up: connections, imports
        for r in range(args.repeats):  # interleaved, so machine noise hits both alike
            runs["direct"].append(direct())
            cache = root / f"cache{r}"
            runs["judge"].append(judge(cache))
            runs["cached"].append(judge(cache))
            assert runs["cached"][-1]["report"]["generated_requests"] == 0
        served = len(server.chat_requests)
    medians = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    ratio = medians["judge"] / medians["direct"]
    report = {
        "benchmark": "bench_judge",
        "params": vars(args),
        "requests_per_run": n_requests,
        "server_requests": served,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "requests_per_s": {k: round(n_requests / v, 1) for k, v in medians.items()},
        "judge_over_direct_time": round(ratio, 4),
        "overhead_pct": round(100 * (ratio - 1), 2),
        "target": {"max_ratio": 1.10, "met": ratio <= 1.10},
        "judge_report": runs["judge"][-1]["report"],
        "runs": {k: [round(x["seconds"], 4) for x in v] for k, v in runs.items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    name = "bench_judge" if args.latency == 0.02 else f"bench_judge_latency{args.latency:g}"
    out = ROOT / "tests" / "perf" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        f"judge: {n_requests} requests, server latency {args.latency * 1000:g} ms, concurrency {args.concurrency}: "
        f"direct {medians['direct']:.3f} s, judge {medians['judge']:.3f} s -> {ratio:.3f}x "
        f"({100 * (ratio - 1):+.1f}%; target <= 1.10: {'MET' if ratio <= 1.10 else 'NOT MET'}); "
        f"all cached {medians['cached']:.3f} s -> {out}"
    )


if __name__ == "__main__":
    main()
