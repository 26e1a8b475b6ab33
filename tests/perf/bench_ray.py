"""Benchmark: the Ray executor against the local one on this machine: same recipe, same inputs, same bytes.

Inputs: the demo inputs (``curation.cli.demo.make_demo_inputs``) scaled up to ``--captions`` (15,000) captions
and ``--conversations`` (4,500) conversations. Recipe: ``recipes/demo.yaml`` (its steps and output) plus a
global ``near_dup_images`` step (phash, max distance 4, scope all), in two partitionings of those inputs:

- ``big``: ``--caption-partition`` (1,000) / ``--conversation-partition`` (300) rows per partition (31);
- ``tiny``: ``--tiny-caption-partition`` (100) / ``--tiny-conversation-partition`` (90) (189 partitions).

Timed: ``curation.build.runner.build`` in this process, wall seconds from the call to its return; ``--repeats`` (3)
rounds, each one build of every (partitioning, variant) pair below, interleaved with the order rotated each
round (load drifting on the machine touches every variant alike); medians reported.

1. ``big`` with (a) ``local``: ``executor="local", workers=2``; (b) ``ray_fresh``: ``executor="ray"`` with no
   address, so the build starts (and at the end stops) a Ray of its own on this machine; (c)
   ``ray_cluster``: ``executor="ray", address=`` a Ray cluster that is already running
   (``tests/ray_cluster.py``: a head and one worker node, 1 CPU each, started outside the timing; the
   build's connect and disconnect are timed). Reported: median seconds, ratio to ``local``, and the fixed
   overhead ``b - a`` and ``c - a``.
2. ``tiny`` with ``local`` (workers=2) and ``ray_cluster``: the overhead per partition, as the extra seconds
   of Ray over local divided by the partitions (whole build, and the partition phase alone), and as the
   marginal cost of one more partition, ``((c - a)_tiny - (c - a)_big) / (partitions_tiny - partitions_big)``
   (fixed costs cancel; noisy: a difference of differences of a few seconds' noise).

The Ray builds run with the default ``workers`` (as many partitions at once as the cluster has CPUs: 2 here,
like the local ``workers=2``). Phases of every build are timed by wrapping the executor's methods in this
process (nothing in ``curation`` is changed): ``connect`` (``ray.init``: in (b), Ray's start-up),
``partitions`` (the partition tasks, less ``connect``), ``commit`` (the commit's per-shard work: Ray tasks on
Ray, in-process locally), ``shutdown`` (``ray.shutdown``: stops the build's own Ray in (b)) and ``driver``
(the rest: planning, the global steps, manifest, card). The running cluster's idle CPU use is sampled once
(it runs during every variant). ``ray_fresh`` runs with ``RAY_ADDRESS=local``, so that a ``RAY_ADDRESS`` in
the caller's environment cannot send it to another cluster (with no address the executor starts a Ray of
its own).

Checks (the script exits 1 if one fails, loudly): ``tests.builds.tree_digest`` (every file's sha256, run
logs excepted) of every Ray output equals that of the local output of the same recipe, and the local
repeats agree with each other. Machine facts (CPUs, Ray, Python, load) and the command go in the results:
``tests/perf/results/bench_ray.json``. Never ``ray stop``: only the processes this script started are ended.

Run: ``python tests/perf/bench_ray.py [--captions 15000] [--conversations 4500] [--repeats 3]`` (~4 min on
the 2-core machine)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from _common import environment, loadavg, median, write_result

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from curation.build.executors import LocalExecutor  # noqa: E402
from curation.build.executors.ray_executor import RayExecutor  # noqa: E402
from curation.build.runner import build  # noqa: E402
from curation.recipe import validate_recipe  # noqa: E402
from tests.builds import demo_recipe, make_inputs, tree_digest  # noqa: E402
from tests.ray_cluster import ENV, LocalRayCluster, start_cluster  # noqa: E402

NEAR_DUP = {"step": "near_dup_images", "hash": "phash", "max_distance": 4, "scope": "all"}
PHASES = ("connect", "partitions", "commit", "shutdown", "driver")


# -- phase timing: wrappers around the executors' methods, in this process only --------------------------------

_phase_s: dict[str, float] = defaultdict(float)


def _add(phase: str, started: float) -> None:
    _phase_s[phase] += time.perf_counter() - started


def _wrap_call(cls: type, name: str, phase: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            _add(phase, started)

    setattr(cls, name, timed)


def _wrap_imap(cls: type) -> None:
    original = cls.imap

    @functools.wraps(original)
    def timed(self, *args, **kwargs) -> Iterator[Any]:
        started = time.perf_counter()
        items = iter(original(self, *args, **kwargs))
        _add("commit", started)
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                _add("commit", started)
                return
            _add("commit", started)
            yield item

    cls.imap = timed


def instrument_executors() -> None:
    _wrap_call(RayExecutor, "connect", "connect")  # nested in run: subtracted from it below
    _wrap_call(RayExecutor, "run", "run")
    _wrap_call(RayExecutor, "__exit__", "shutdown")
    _wrap_call(LocalExecutor, "run", "run")
    _wrap_imap(RayExecutor)
    _wrap_imap(LocalExecutor)


def phases_of(total: float) -> dict[str, float]:
    """The last build's phases (seconds); ``driver`` is what the executor's methods do not account for."""
    ph = {k: _phase_s.get(k, 0.0) for k in ("connect", "commit", "shutdown")}
    ph["partitions"] = _phase_s.get("run", 0.0) - ph["connect"]
    ph["driver"] = total - sum(ph.values())
    return {k: round(ph[k], 3) for k in PHASES}


# -- builds -----------------------------------------------------------------------------------------------------


def recipe_for(inputs: Path, captions: int, conversations: int) -> Any:
    recipe = demo_recipe(inputs, sources__0__partition_size=captions, sources__1__partition_size=conversations)
    recipe["steps"].append(dict(NEAR_DUP))
    return validate_recipe(recipe)


@contextlib.contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def timed_build(recipe: Any, out: Path, variant: str, address: str | None) -> dict[str, Any]:
    """One build into a fresh ``out``: wall seconds, phases, what the build log says, and the output's digest."""
    _phase_s.clear()
    if variant == "local":
        kwargs: dict[str, Any] = {"executor": "local", "workers": 2}
    elif variant == "ray_fresh":
        kwargs = {"executor": "ray"}
    else:
        kwargs = {"executor": "ray", "address": address}
    env = env_set("RAY_ADDRESS", "local") if variant == "ray_fresh" else contextlib.nullcontext()
    with env:
        started = time.perf_counter()
        result = build(recipe, out, progress=False, **kwargs)
        seconds = time.perf_counter() - started
    log = json.loads(result.log.read_text()) if result.log else {}
    digest = tree_digest(out)
    run = {
        "seconds": round(seconds, 3),
        "phases": phases_of(seconds),
        "partitions": result.partitions,
        "shards": len(result.manifest.shards),
        "samples": result.manifest.totals["samples"],
        "executor": log.get("executor"),
        "files": len(digest),
    }
    shutil.rmtree(out)
    return run | {"digest": digest}


def diff_digests(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def run_rounds(
    configs: dict[str, tuple[Any, list[str]]], repeats: int, work: Path, address: str, failures: list[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``repeats`` rounds, each one build of every (config, variant) pair, interleaved (the order rotated each
    round, so drifting load on the machine touches every variant alike). Every output is compared with the
    first local output of its config."""
    pairs = [(name, v) for name, (_, variants) in configs.items() for v in variants]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {v: [] for v in vs} for name, (_, vs) in configs.items()}
    digests: dict[tuple[str, str, int], dict[str, str]] = {}
    for rnd in range(repeats):
        for name, variant in pairs[rnd % len(pairs) :] + pairs[: rnd % len(pairs)]:
            load = loadavg()[0]
            run = timed_build(configs[name][0], work / f"{name}-{variant}-{rnd}", variant, address)
            digests[name, variant, rnd] = run.pop("digest")
            runs[name][variant].append(run | {"round": rnd + 1, "loadavg_1min_before": load})
            ph = run["phases"]
            print(
                f"  round {rnd + 1} {name:<4} {variant:<11} {run['seconds']:7.2f}s  "
                f"({run['partitions']} partitions, {run['shards']} shards; "
                + ", ".join(f"{k} {ph[k]:.2f}" for k in PHASES)
                + ")",
                flush=True,
            )
    for name, by_variant in runs.items():
        reference = digests[name, "local", 0]
        for variant, vruns in by_variant.items():
            for rnd, run in enumerate(vruns):
                digest = digests[name, variant, rnd]
                run["digest_sha256"] = _digest_id(digest)
                bad = diff_digests(reference, digest)
                run["parity"] = not bad
                if bad:
                    msg = (
                        f"PARITY FAILED: {name} {variant} round {rnd + 1} differs from the local build in "
                        f"{len(bad)} of {len(reference)} files: {', '.join(bad[:8])}"
                    )
                    print(msg, file=sys.stderr, flush=True)
                    failures.append(msg)
    return runs


def _digest_id(digest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:16]


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {v: median([r["seconds"] for r in rs]) for v, rs in runs.items()}
    local = med["local"]
    out: dict[str, Any] = {
        "median_s": {v: round(s, 3) for v, s in med.items()},
        "ratio_vs_local": {v: round(s / local, 3) for v, s in med.items()},
        "overhead_s": {v: round(s - local, 3) for v, s in med.items() if v != "local"},
        "median_phases_s": {
            v: {k: round(median([r["phases"][k] for r in rs]), 3) for k in PHASES} for v, rs in runs.items()
        },
        "partitions": runs["local"][0]["partitions"],
        "shards": runs["local"][0]["shards"],
        "samples": runs["local"][0]["samples"],
        "parity": all(r["parity"] for rs in runs.values() for r in rs),
    }
    return out


def per_partition_overhead(big: dict[str, Any], tiny: dict[str, Any]) -> dict[str, Any]:
    """Ray's overhead per partition on the running cluster: over the tiny build, and per extra partition."""
    extra = tiny["partitions"] - big["partitions"]
    over_tiny, over_big = tiny["overhead_s"]["ray_cluster"], big["overhead_s"]["ray_cluster"]
    phases = tiny["median_phases_s"]

    def per_extra(seconds: float) -> float | None:
        return round(seconds / extra, 4) if extra > 0 else None

    return {
        "partitions_big": big["partitions"],
        "partitions_tiny": tiny["partitions"],
        "ray_overhead_tiny_s": over_tiny,
        "ray_overhead_per_partition_tiny_s": round(over_tiny / tiny["partitions"], 4),
        "partition_phase_overhead_per_partition_tiny_s": round(
            (phases["ray_cluster"]["partitions"] - phases["local"]["partitions"]) / tiny["partitions"], 4
        ),
        "marginal_ray_overhead_per_partition_s": per_extra(over_tiny - over_big),
        "marginal_local_cost_per_partition_s": per_extra(tiny["median_s"]["local"] - big["median_s"]["local"]),
        "marginal_ray_cost_per_partition_s": per_extra(
            tiny["median_s"]["ray_cluster"] - big["median_s"]["ray_cluster"]
        ),
    }


def cluster_idle_cpu(cluster: LocalRayCluster, seconds: float = 5.0) -> dict[str, Any]:
    """CPU used by the idle cluster's processes (all its nodes' process trees) over ``seconds``."""
    procs: list[psutil.Process] = []
    for node in cluster.nodes:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(node.pid)
            procs += [root, *root.children(recursive=True)]
    before = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            before[p.pid] = sum(p.cpu_times()[:2])
    time.sleep(seconds)
    used = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            used += sum(p.cpu_times()[:2]) - before.get(p.pid, 0.0)
    return {"processes": len(procs), "window_s": seconds, "cpu_percent_of_one_core": round(100 * used / seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captions", type=int, default=15_000)
    ap.add_argument("--conversations", type=int, default=4_500)
    ap.add_argument("--caption-partition", type=int, default=1_000, help="rows per captions partition (big)")
    ap.add_argument("--conversation-partition", type=int, default=300, help="rows per conversations partition (big)")
    ap.add_argument("--tiny-caption-partition", type=int, default=100)
    ap.add_argument("--tiny-conversation-partition", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tiny", action="store_true", help="skip the per-partition overhead measurement")
    ap.add_argument("--tmp", type=Path, default=None, help="directory for inputs and outputs (system temp)")
    args = ap.parse_args()
    command = shlex.join(["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load_before = loadavg()
    started_all = time.perf_counter()
    os.environ.update(ENV)  # what tests/ray_cluster.py's cluster needs (no token auth, no usage stats)
    instrument_executors()
    failures: list[str] = []

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray-", dir=args.tmp))
    cluster: LocalRayCluster | None = None
    try:
        t = time.perf_counter()
        planted = make_inputs(tmp / "inputs", args.captions, args.conversations)
        inputs_s = time.perf_counter() - t
        print(f"inputs: {args.captions:,} captions + {args.conversations:,} conversations in {inputs_s:.1f}s")
        big = recipe_for(tmp / "inputs", args.caption_partition, args.conversation_partition)
        tiny = recipe_for(tmp / "inputs", args.tiny_caption_partition, args.tiny_conversation_partition)

        t = time.perf_counter()
        cluster = start_cluster(workers=1)
        cluster_start_s = time.perf_counter() - t
        print(f"cluster: head + 1 worker node at {cluster.address}, started in {cluster_start_s:.1f}s (untimed)")
        idle = cluster_idle_cpu(cluster)
        print(f"  idle cluster CPU: {idle['cpu_percent_of_one_core']}% of one core ({idle['processes']} processes)")

        configs = {"big": (big, ["local", "ray_fresh", "ray_cluster"])}
        if not args.no_tiny:
            configs["tiny"] = (tiny, ["local", "ray_cluster"])
        print(f"{args.repeats} rounds of: " + "; ".join(f"{n}: {', '.join(vs)}" for n, (_, vs) in configs.items()))
        runs = run_rounds(configs, args.repeats, tmp, cluster.address, failures)
        big_runs, tiny_runs = runs["big"], runs.get("tiny", {})
        big_sum = summarize(big_runs)
        tiny_sum = summarize(tiny_runs) if tiny_runs else {}
        per_partition = per_partition_overhead(big_sum, tiny_sum) if tiny_runs else {}
    finally:
        if cluster is not None:
            cluster.shutdown()  # only the nodes started above; never `ray stop`
        shutil.rmtree(tmp, ignore_errors=True)

    checks = {
        "big_ray_fresh_equals_local": all(r["parity"] for r in big_runs["ray_fresh"]),
        "big_ray_cluster_equals_local": all(r["parity"] for r in big_runs["ray_cluster"]),
        "big_local_repeats_agree": all(r["parity"] for r in big_runs["local"]),
    }
    if tiny_runs:
        checks["tiny_ray_cluster_equals_local"] = all(r["parity"] for r in tiny_runs["ray_cluster"])
        checks["tiny_local_repeats_agree"] = all(r["parity"] for r in tiny_runs["local"])
    import ray

    cpu_count = os.cpu_count()
    doc: dict[str, Any] = {
        "benchmark": "bench_ray",
        "description": "build with the local executor (workers=2) vs Ray (own Ray; running 2-node cluster), "
        "same recipe and inputs: wall time, fixed and per-partition overhead, byte parity",
        "command": command,
        "loadavg_before": load_before,
        "params": {
            "captions": args.captions,
            "conversations": args.conversations,
            "planted_defects": planted,
            "big_partition_rows": {"captions": args.caption_partition, "conversations": args.conversation_partition},
            "tiny_partition_rows": {
                "captions": args.tiny_caption_partition,
                "conversations": args.tiny_conversation_partition,
            },
            "recipe": "recipes/demo.yaml steps and output + " + json.dumps(NEAR_DUP),
            "repeats": args.repeats,
            "local_workers": 2,
            "ray_workers": "default (cluster CPUs)",
            "cluster": "tests/ray_cluster.py start_cluster(workers=1): head + 1 worker node, 1 CPU each",
        },
        "setup_s": {"inputs": round(inputs_s, 2), "cluster_start_untimed": round(cluster_start_s, 2)},
        "cluster_idle_cpu": idle,
        "big": big_sum | {"runs": big_runs},
        "tiny": (tiny_sum | {"runs": tiny_runs}) if tiny_runs else None,
        "per_partition_overhead": per_partition or None,
        "checks": checks,
        "failures": failures,
        "total_script_s": round(time.perf_counter() - started_all, 1),
        "machine": {
            "cpu_count": cpu_count,
            "sched_cpus": len(os.sched_getaffinity(0)),
            "ray": ray.__version__,
            "python": sys.version.split()[0],
        },
        "environment": environment() | {"versions_ray": {"ray": metadata.version("ray")}},
    }
    path = write_result("bench_ray", doc)

    print()
    print(f"{'variant':<22}{'median s':>9}{'x local':>9}{'overhead s':>12}")
    rows: list[tuple[str, dict[str, Any]]] = [("big", big_sum)] + ([("tiny", tiny_sum)] if tiny_sum else [])
    for name, s in rows:
        for v, sec in s["median_s"].items():
            over = s["overhead_s"].get(v)
            print(
                f"{name + ' ' + v:<22}{sec:>9.2f}{s['ratio_vs_local'][v]:>9.2f}"
                f"{'' if over is None else f'{over:+.2f}':>12}"
            )
        print(f"  ({name}: {s['partitions']} partitions, {s['shards']} shards, {s['samples']:,} samples)")
    if per_partition:
        pp = per_partition
        marginal = pp["marginal_ray_overhead_per_partition_s"]
        print(
            f"Ray overhead per partition on the cluster: {pp['ray_overhead_per_partition_tiny_s'] * 1000:.0f} ms"
            f" (overhead / partitions, tiny build); marginal: "
            f"{'n/a' if marginal is None else f'{marginal * 1000:.0f} ms'} per extra partition"
        )
    print(f"checks: {checks}")
    print(f"results: {path} (script {doc['total_script_s']:.0f}s)")
    if failures:
        print("\n".join(failures), file=sys.stderr)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
