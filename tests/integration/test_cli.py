"""The CLI as a user meets it: help, one-line errors without tracebacks, the demo, audit formats."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.builds import CLI


def curate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("command", ["build", "audit", "inspect", "verify", "recipes", "schema", "demo", "export"])
def test_help(command):
    res = curate(command, "--help")
    assert res.returncode == 0 and "Usage" in res.stdout


def test_top_level_help_lists_commands():
    res = curate("--help")
    for command in ["build", "audit", "inspect", "verify", "recipes", "schema", "demo", "export"]:
        assert command in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "no_such_recipe"], "no recipe file or built-in recipe named 'no_such_recipe'"),
        (["build", "demo", "--set", "stepz.0.min_side=1"], "no 'stepz' list to index into; did you mean 'steps'?"),
        (["build", "demo", "--set", "outptu.kind=sft"], "outptu: unknown key 'outptu'; did you mean 'output'?"),
        (
            ["build", "demo", "--set", "sources.captions.path=/nonexistent/x.jsonl"],
            "sources.captions.path: no such file",
        ),
        (["audit", "/"], "is not a built dataset"),
        (["inspect", "/"], "is not a built dataset"),
        (["build", "/tmp/no[such]recipe.yaml"], "/tmp/no[such]recipe.yaml"),  # brackets are text, not markup
        (["build", "demo", "--address", "h:1"], "--address names a Ray cluster; it needs --executor ray"),
        (["build", "demo", "--set", "sources.captions.path="], "sources.0.path: an empty path"),  # not the cwd
        (["build", "demo", "--set", "name=" + "x" * 300], "name: String should have at most 100 characters"),
        (["build", "/dev/zero"], "/dev/zero: cannot read the recipe (not a regular file)"),
        (["schema", "--out", "/dev/full"], "/dev/full: No space left on device (ENOSPC); free space"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, tmp_path):
    res = curate(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().count("\n") == 0 or len(res.stderr.strip().splitlines()) <= 3  # wrapped, one message


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> tuple[Path, float, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo")
    started = time.perf_counter()
    res = curate("demo", "--out", str(out))
    return out, time.perf_counter() - started, res


def test_demo_runs_under_a_minute_and_prints_the_audit(demo_dir):
    out, seconds, res = demo_dir
    assert res.returncode == 0, res.stderr
    assert seconds < 60
    for word in ("captions", "conversations", "% mix", "duplicate_image", "image_unreadable"):
        assert word in res.stdout
    assert curate("verify", str(out / "dataset")).returncode == 0


def test_audit_json_has_the_documented_shape(demo_dir):
    out, _, _ = demo_dir
    report = json.loads(curate("audit", str(out / "dataset"), "--format", "json").stdout)
    assert isinstance(report["samples"], int)
    for name, s in report["sources"].items():
        assert {"samples", "images", "qa_pairs", "answer_tokens", "mix_pct"} <= set(s), name
    assert abs(sum(s["mix_pct"] for s in report["sources"].values()) - 100) < 0.05
    assert report["dropped"]["duplicate_image"] == 7
    assert report["samples"] == sum(s["samples"] for s in report["sources"].values())


def test_audit_markdown_and_inspect(demo_dir):
    out, _, _ = demo_dir
    md = curate("audit", str(out / "dataset"), "-f", "markdown").stdout
    assert md.startswith("## demo (sft)") and "| captions |" in md
    shown = curate("inspect", str(out / "dataset"), "-n", "2").stdout
    assert "Describe the image." in shown and "assistant[0]" in shown
    rejected = curate("inspect", str(out / "dataset"), "--rejects", "-n", "3").stdout
    assert "reason: missing_image_file" in rejected


def test_build_by_name_with_set_and_rerun_is_a_noop(demo_dir, tmp_path):
    out, _, _ = demo_dir
    inputs = out / "inputs"
    args = [
        "build",
        "demo",
        "--out",
        str(tmp_path / "ds"),
        "-q",
        "--set",
        f"sources.captions.path={inputs / 'captions.jsonl'}",
        "--set",
        f"sources.captions.image_root={inputs / 'images'}",
        "--set",
        f"sources.conversations.path={inputs / 'conversations.parquet'}",
    ]
    first = curate(*args)
    assert first.returncode == 0 and "built" in first.stderr
    again = curate(*args)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    other = curate(*args, "--set", "steps.2.min_side=100")
    assert other.returncode == 2 and "different recipe" in other.stderr


def test_schema_command_writes_json(tmp_path):
    res = curate("schema", "--out", str(tmp_path / "recipe.schema.json"))
    assert res.returncode == 0
    title = json.loads((tmp_path / "recipe.schema.json").read_text())["title"]
    assert title == "vlm-curation recipe (build, mixture or selection)"


def test_readme_loading_snippet_runs(demo_dir, tmp_path, monkeypatch):
    import re

    out, _, _ = demo_dir
    (tmp_path / "demo-out").symlink_to(out)
    monkeypatch.chdir(tmp_path)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    snippet = re.search(r"Loading a build elsewhere:\n\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert len(namespace["records"]) == len(namespace["ds"]) == len(namespace["hf"]) == 457


def test_generic_builtin_recipes_build_user_data_by_name(demo_dir, tmp_path):
    out, _, _ = demo_dir
    inputs = out / "inputs"
    # pairs_jsonl expects {key, image, caption}: rewrite the demo's captions into that layout
    rows = [json.loads(line) for line in (inputs / "captions.jsonl").read_text().splitlines() if line.startswith('{"')]
    (tmp_path / "pairs.jsonl").write_text(
        "\n".join(json.dumps({"key": r["id"], "image": r["file"], "caption": r["text"]}) for r in rows) + "\n"
    )
    res = curate(
        "build",
        "pairs_jsonl",
        "--out",
        str(tmp_path / "pairs"),
        "-q",
        "--set",
        f"sources.pairs.path={tmp_path / 'pairs.jsonl'}",
        "--set",
        f"sources.pairs.image_root={inputs / 'images'}",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(curate("audit", str(tmp_path / "pairs"), "-f", "json").stdout)
    pairs = report["sources"]["pairs"]
    assert pairs["input"] == len(rows) and pairs["samples"] + sum(pairs["dropped"].values()) == len(rows)
    assert report["kind"] == "pair" and pairs["dropped"]["duplicate_image"] == 7

    res = curate(
        "build",
        "sft_parquet",
        "--out",
        str(tmp_path / "sft"),
        "-q",
        "--set",
        f"sources.conversations.path={inputs / 'conversations.parquet'}",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(curate("audit", str(tmp_path / "sft"), "-f", "json").stdout)
    assert report["sources"]["conversations"]["samples"] == 120 and report["kind"] == "sft"


def test_recipes_lists_the_builtins():
    listed = curate("recipes").stdout
    for name in ("demo", "pairs_jsonl", "sft_parquet"):
        assert name in listed


def test_version():
    res = curate("--version")
    assert res.returncode == 0 and res.stdout.startswith("vlm-curation ")


def test_an_empty_result_warns(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"image": "nope.jpg", "caption": "x"}) + "\n")
    res = curate(
        "build",
        "pairs_jsonl",
        "--out",
        str(tmp_path / "ds"),
        "-q",
        "--set",
        f"sources.pairs.path={tmp_path / 'in.jsonl'}",
        "--set",
        f"sources.pairs.image_root={tmp_path}",
    )
    assert res.returncode == 0 and "warning: the build holds 0 samples" in res.stderr


@pytest.fixture(scope="module")
def big_inputs(tmp_path_factory) -> Path:
    from curation.cli.demo import make_demo_inputs

    root = tmp_path_factory.mktemp("big")
    make_demo_inputs(root, n_captions=3000, n_conversations=300)
    return root


def _big_build_args(root: Path, out: Path) -> list[str]:
    return [
        *CLI,
        "build",
        "demo",
        "--out",
        str(out),
        "--workers",
        "2",
        "-q",
        "--set",
        f"sources.captions.path={root / 'captions.jsonl'}",
        "--set",
        f"sources.captions.image_root={root / 'images'}",
        "--set",
        f"sources.conversations.path={root / 'conversations.parquet'}",
        "--set",
        "sources.captions.partition_size=20",
    ]


def _children_alive(pids: list[int]) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _wait_for_workers(proc: subprocess.Popen, n: int = 2, timeout: float = 30) -> list[int]:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in kids if "multiprocessing.spawn" in " ".join(p.cmdline())]
        if len(workers) >= n:
            return [p.pid for p in kids]
        time.sleep(0.05)
    raise AssertionError("workers never started")


def test_ctrl_c_stops_a_multi_worker_build_quickly_and_it_resumes(big_inputs, tmp_path):
    import os
    import signal

    out = tmp_path / "ds"
    proc = subprocess.Popen(
        _big_build_args(big_inputs, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    kids = _wait_for_workers(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    started = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - started < 10
    assert "run the same command again to resume" in err and "Traceback" not in err
    time.sleep(1)
    assert not _children_alive(kids)
    done = subprocess.run(_big_build_args(big_inputs, out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert curate("verify", str(out)).returncode == 0


def test_killing_only_the_parent_leaves_no_worker_running(big_inputs, tmp_path):
    import os
    import signal

    proc = subprocess.Popen(
        _big_build_args(big_inputs, tmp_path / "ds"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    kids = _wait_for_workers(proc)
    os.kill(proc.pid, signal.SIGKILL)  # as an OOM killer would: the workers are orphaned
    proc.wait()
    deadline = time.monotonic() + 10
    while _children_alive(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children_alive(kids)
