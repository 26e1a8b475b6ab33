"""``curate``: build, audit, inspect and verify VLM training data."""

from __future__ import annotations

import errno
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curation.errors import CurationError, is_disk_full
from curation.storage.urls import is_url

app = typer.Typer(
    name="curate",
    help="Build, audit and verify vision-language training data as deterministic webdataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)


def _version(value: bool) -> None:
    if value:
        from curation import __version__

        console.print(f"vlm-curation {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Build, audit and verify vision-language training data as deterministic webdataset shards."""


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


ExecutorOpt = Annotated[
    ExecutorName,
    typer.Option(
        "--executor", "-x", help="Where partitions run: local processes, or one Ray task per partition on a cluster."
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster address (host:port, ray://host:port or auto) [default: $RAY_ADDRESS, else a Ray started "
        "here]. Needs --executor ray. select/sweep: a ray launcher without an address runs its trials there too.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        help="local: worker processes [default: 1]. "
        "ray: most partitions running at once [default: the cluster's CPUs].",
    ),
]


class AuditFormat(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"


@app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="Recipe file (.yaml) or built-in recipe name (see `curate recipes`).")],
    out_: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Output directory, or an object storage URL (s3://bucket/prefix; see docs/storage.md) "
            "[default: ./out/<recipe name>].",
        ),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Read at most N input rows in total (a prefix).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe field: dotted.path=value (repeatable).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a build of a different recipe in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or audit table.")] = False,
) -> None:
    """Build a dataset from a recipe. Rerunning resumes an interrupted build (finished partitions are kept)."""
    from curation.recipe import load_recipe
    from curation.report.audit import audit, render_table

    spec = load_recipe(recipe, set_ or [])
    if out_ is not None and is_url(out_):
        _build_to_url(spec, out_, workers, executor, address, limit, overwrite, quiet)
        return
    out = Path(out_) if out_ is not None else Path("out", spec.name)
    try:
        with _writing(out):
            result = _build_or_mix(spec, out, workers, executor, address, limit, overwrite, quiet)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; finished partitions are kept: run the same command again to resume {out}")
        raise typer.Exit(130) from None
    _print_built(result, str(out), f"into {out}")
    if not quiet:
        render_table(audit(out), console)


def _build_to_url(
    spec: Any,
    out: str,
    workers: int | None,
    executor: ExecutorName,
    address: str | None,
    limit: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """``curate build --out s3://...``: staged locally, published object by object (curation.storage.publish)."""
    from curation.report.audit import audit, render_table
    from curation.storage.mirror import mirror
    from curation.storage.publish import build_to_url, mixture_to_url, stage_dir
    from curation.storage.urls import parse_url

    url = parse_url(out)
    if spec.kind not in ("build", "mixture"):
        raise CurationError(
            f"--out {url}: a {spec.kind} recipe builds into a local directory (URLs: build and mixture recipes)"
        )
    if spec.kind == "mixture" and limit is not None:
        raise CurationError("--limit applies to build recipes; a mixture's size comes from its targets")
    try:
        with _writing(stage_dir(url)):
            if spec.kind == "mixture":
                result = mixture_to_url(
                    spec,
                    url,
                    workers=workers,
                    overwrite=overwrite,
                    progress=not quiet,
                    executor=executor,
                    address=address,
                )
            else:
                result = build_to_url(
                    spec,
                    url,
                    workers=workers,
                    limit=limit,
                    overwrite=overwrite,
                    progress=not quiet,
                    executor=executor,
                    address=address,
                )
    except KeyboardInterrupt:
        err_console.print(f"interrupted; finished work is kept: run the same command again to resume {url}")
        raise typer.Exit(130) from None
    _print_built(result, str(url), f"and published them to {url}")
    if not quiet:
        render_table(audit(mirror(str(url), "tables")), console)


def _dataset_dir(value: str, want: str = "all", samples: int = 3, what: str = "DATASET") -> Path:
    """A dataset argument: a local directory, or a build in a bucket (s3://...) read through a local mirror."""
    if not is_url(value):
        return Path(value)
    from curation.storage.mirror import mirror

    return mirror(value, want, samples, what)  # type: ignore[arg-type]


def _build_or_mix(
    spec: Any,
    out: Path,
    workers: int | None,
    executor: ExecutorName,
    address: str | None,
    limit: int | None,
    overwrite: bool,
    quiet: bool,
) -> Any:
    """``curate build``'s work: a mixture, or a build recipe."""
    from curation.build.runner import build as run_build

    if spec.kind == "mixture":
        from curation.mixture.build import build_mixture

        if limit is not None:
            raise CurationError("--limit applies to build recipes; a mixture's size comes from its targets")
        return build_mixture(
            spec, out, workers=workers, overwrite=overwrite, progress=not quiet, executor=executor, address=address
        )
    return run_build(
        spec,
        out,
        workers=workers,
        limit=limit,
        overwrite=overwrite,
        progress=not quiet,
        executor=executor,
        address=address,
    )


@app.command("audit")
def audit_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DIRECTORY", help="A built dataset directory or s3:// URL.")],
    format: Annotated[AuditFormat, typer.Option("--format", "-f", help="table, json or markdown.")] = AuditFormat.table,
    html_: Annotated[
        str | None,
        typer.Option("--html", help="Also write the full report: this HTML file (self-contained) and a .md beside it."),
    ] = None,
    compare_: Annotated[
        str | None,
        typer.Option(
            "--compare", help="Another build (directory or s3:// URL): show what changed from DIRECTORY to it."
        ),
    ] = None,
    what_if: Annotated[
        list[str] | None,
        typer.Option(
            "--what-if",
            metavar="SPEC",
            help="Thresholds of a score's what-if table: NAME=T,T,... keeps samples scoring >= T, 'NAME<T,T,...' "
            "keeps those scoring < T; repeatable (default: each score's build-wide p10, p25, p50, p75).",
        ),
    ] = None,
) -> None:
    """Per-source samples, images, QA pairs, tokens and share of answer tokens, drops by step and reason, and
    score distributions with what-if tables; --html writes the report a team reviews (distributions, funnels,
    duplicates, contamination, previews); --compare B shows what changed between two builds."""
    from curation.report.audit import audit, render_json, render_markdown, render_table
    from curation.report.scores import parse_what_ifs

    html = _local_path(html_, "--html") if html_ is not None else None
    if compare_ is not None and what_if:
        raise CurationError("--what-if is for one build's audit, not with --compare")
    directory = _dataset_dir(dataset, "all" if html is not None else "tables", what="DIRECTORY")
    compare = _dataset_dir(compare_, "tables", what="--compare") if compare_ is not None else None
    if compare is not None:
        from curation.report.compare import compare as compare_builds
        from curation.report.compare import render_compare_markdown, render_compare_table

        doc = _manifest_call(lambda d: compare_builds(d, compare), directory)
        if format is AuditFormat.json:
            sys.stdout.write(render_json(doc))
        elif format is AuditFormat.markdown:
            sys.stdout.write(render_compare_markdown(doc))
        else:
            render_compare_table(doc, console)
        return
    specs = parse_what_ifs(what_if or [])
    if html is not None:
        from curation.report.audit_page import write_audit_report

        with _writing(html):
            files = _manifest_call(
                lambda d: write_audit_report(d, html, html.with_suffix(".md"), what_if=specs), directory
            )
        err_console.print(f"report: {files['html']} (and {files['md']})")
    report = _manifest_call(lambda d: audit(d, scores=True, what_if=specs), directory)
    if format is AuditFormat.json:
        sys.stdout.write(render_json(report))
    elif format is AuditFormat.markdown:
        sys.stdout.write(render_markdown(report))
    else:
        render_table(report, console)


@app.command("inspect")
def inspect_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DIRECTORY", help="A built dataset directory or s3:// URL.")],
    n: Annotated[int, typer.Option("-n", min=1, help="How many samples to show.")] = 3,
    rejects: Annotated[bool, typer.Option(help="Show rejected samples with their reasons instead.")] = False,
) -> None:
    """Show a few samples, readable: images (format and size), texts, meta."""
    from curation.report.samples import inspect

    directory = _dataset_dir(dataset, "rejects" if rejects else "samples", n, what="DIRECTORY")

    _manifest_call(lambda d: inspect(d, n=n, rejects=rejects, console=console), directory)


@app.command()
def verify(
    dataset: Annotated[str, typer.Argument(metavar="DIRECTORY", help="A built dataset directory or s3:// URL.")],
) -> None:
    """Re-check shard, sidecar and stats hashes and sizes, sample counts, keys, totals, the wids index, unlisted
    files and the accounting. A build in a bucket is copied into a local mirror first (every object)."""
    from shards import verify_dataset

    started = time.perf_counter()
    directory = _dataset_dir(dataset, "all", what="DIRECTORY")
    if not (directory / "dataset.json").is_file():
        raise CurationError(f"{directory} is not a built dataset (no dataset.json)")
    report = verify_dataset(directory)
    if report.ok:
        where = f" ({dataset})" if is_url(dataset) else ""
        console.print(f"OK: {report.summary()}{where} verified in {time.perf_counter() - started:.1f}s")
        return
    for p in report.problems:
        err_console.print(f"[red]problem:[/red] {escape(str(p))}")
    raise typer.Exit(1)


@app.command()
def recipes() -> None:
    """List the built-in recipes (usable by name in `curate build`)."""
    from curation.recipe import builtin_recipes

    t = Table("name", "description")
    for name, desc in builtin_recipes().items():
        t.add_row(name, desc)
    console.print(t)


@app.command()
def schema(
    out_: Annotated[str | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export the recipe JSON Schema (for editor completion and validation)."""
    from curation.recipe import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2) + "\n"
    out = _local_path(out_, "--out") if out_ else None
    if out:
        with _writing(out):
            out.write_text(text)
        err_console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command("select")
def select_cmd(
    recipe: Annotated[str, typer.Argument(help="A selection recipe (kind: selection): file or built-in name.")],
    out_: Annotated[str | None, typer.Option("--out", "-o", help="Sweep directory [default: ./out/<name>].")] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe field: dotted.path=value (repeatable).")
    ] = None,
) -> None:
    """Run Individual Select: per category, a fine-tune + evaluation per candidate on baseline + candidate;
    comparable-or-better candidates join the baseline. Rerun the same command to resume (finished trials are
    reused)."""
    from curation.recipe import load_recipe
    from curation.selection.sweep import run_selection

    out = _local_path(out_, "--out") if out_ is not None else None
    spec = load_recipe(recipe, set_ or [])
    if spec.kind != "selection":
        raise CurationError(
            f"{recipe} is a {spec.kind} recipe; `curate select` runs kind: selection (see curate build)"
        )
    out = out or Path("out", spec.name)
    with _writing(out):
        doc = run_selection(spec, out, workers=workers, console=err_console, executor=executor, address=address)
    _print_selection(doc)


@app.command("sweep")
def sweep_cmd(
    plan: Annotated[Path, typer.Argument(help="An ablation plan (### Ablation blocks: Ablated Part, REPLACE, ...).")],
    spec: Annotated[Path, typer.Option("--spec", help="SPEC.yaml: the unablated trial config and the part mapping.")],
    out_: Annotated[
        str | None, typer.Option("--out", "-o", help="Sweep directory [default: ./out/<spec name>].")
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
) -> None:
    """Run an ablation plan through the trial engine: every replacement of every ablated part (and the unablated
    configuration) trained and evaluated; each replacement reported against the unablated trial."""
    from curation.selection.ablation import ablation_markdown, run_ablation
    from curation.selection.plans import load_spec

    out = _local_path(out_, "--out") if out_ is not None else Path("out") / load_spec(spec).name
    with _writing(out):
        doc = run_ablation(plan, spec, out, workers=workers, console=err_console, executor=executor, address=address)
    sys.stdout.write(ablation_markdown(doc))


def _print_selection(doc: dict) -> None:
    t = Table(
        "category", "candidate", "score", "baseline", "Δ", "interval of Δ", "seeds", "decision",
        title=f"{doc['name']}: Individual Select",
    )  # fmt: skip
    for cat in doc["categories"]:
        for c in cat["candidates"]:
            score = "failed" if c["score"] is None else f"{c['score']:.2f}"
            delta = "—" if c.get("delta") is None else f"{c['delta']:+.2f}"
            low, high = c.get("ci_low"), c.get("ci_high")
            interval = "—" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"
            seeds = ",".join(str(s) for s in c.get("seeds", [])) or "—"
            decision = c["decision"] + (f" ({c['reason']})" if c["reason"] in ("undecided", "failed") else "")
            t.add_row(cat["name"], c["name"], score, f"{c['baseline_score']:.2f}", delta, interval, seeds, decision)
    console.print(t)
    console.print("selected: " + ", ".join(c["name"] for c in doc["selected_components"]))
    if "all_candidates" in doc and doc["all_candidates"]["score"] is not None:
        a = doc["all_candidates"]
        console.print(f"all candidates together: {a['score']:.2f}; the selected mixture: {a['selected_score']:.2f}")
    for name, path in doc.get("files", {}).items():
        console.print(f"{name}: {path}")


@app.command()
def demo(
    out_: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Directory for the generated inputs and the dataset; or an s3:// URL: the dataset is published "
            "there, the inputs are generated in the cache.",
        ),
    ] = "demo-out",
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="[default: 2 local processes; ray: the cluster's CPUs]")
    ] = None,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
    select: Annotated[
        bool, typer.Option("--select", help="Run the toy selection world instead (a few minutes on 2 CPU cores).")
    ] = False,
) -> None:
    """Generate small inputs (Pillow drawings, captions, conversations), build them, print the audit. With
    --executor ray: the same build on Ray (the output is identical). With --select: the toy world of Individual
    Select (helpful, neutral and poisoned candidates; a tiny VLM trained per trial)."""
    if select:
        if executor != ExecutorName.local:
            raise CurationError("demo --select runs on this machine; --executor applies to the build demo")
        out = _local_path(out_, "--out")
        with _writing(out):
            _demo_select(out, workers or 2)
        return
    if is_url(out_):
        _demo_build_to_url(out_, workers, executor, address)
        return
    out = Path(out_)
    with _writing(out):
        _demo_build(out, workers, executor, address)


def _demo_build(out: Path, workers: int | None, executor: ExecutorName, address: str | None) -> None:
    from curation.build.runner import build as run_build
    from curation.report.audit import audit, render_table

    started = time.perf_counter()
    spec = _demo_inputs(out / "inputs")
    dataset = out / "dataset"
    if executor == ExecutorName.local:
        workers = workers or 2
    result = run_build(
        spec, dataset, workers=workers, overwrite=True, progress=True, executor=executor, address=address
    )
    render_table(audit(dataset), console)
    from curation.report.audit_page import write_audit_report

    report = write_audit_report(dataset)
    console.print(
        f"dataset: {dataset}  ({result.manifest.totals['shards']} shards, {time.perf_counter() - started:.1f}s in all)"
    )
    console.print(
        f"report: {report['html']}  (open it in a browser; markdown: {report['md']}; card: {dataset}/README.md)"
    )
    console.print(f"next: curate inspect {dataset}   curate inspect {dataset} --rejects   curate verify {dataset}")


def _demo_inputs(inputs: Path) -> Any:
    """The demo's inputs (generated once into ``inputs``) and the demo recipe reading them."""
    from curation.cli.demo import make_demo_inputs
    from curation.recipe import load_recipe

    if not (inputs / "conversations.parquet").is_file():
        make_demo_inputs(inputs)
    return load_recipe(
        "demo",
        [
            f"sources.captions.path={inputs / 'captions.jsonl'}",
            f"sources.captions.image_root={inputs / 'images'}",
            f"sources.conversations.path={inputs / 'conversations.parquet'}",
        ],
    )


def _write_report(dataset: Path) -> None:
    from curation.report.audit_page import write_audit_report

    write_audit_report(dataset)


def _demo_build_to_url(out: str, workers: int | None, executor: ExecutorName, address: str | None) -> None:
    """The demo into a bucket: inputs generated in the cache, the dataset (with its report) published at ``out``."""
    from curation.cache import cache_root
    from curation.report.audit import audit, render_table
    from curation.storage.mirror import mirror
    from curation.storage.publish import build_to_url, stage_dir
    from curation.storage.urls import parse_url

    started = time.perf_counter()
    url = parse_url(out)
    spec = _demo_inputs(cache_root() / "demo-inputs")
    if executor == ExecutorName.local:
        workers = workers or 2
    with _writing(stage_dir(url)):
        result = build_to_url(
            spec,
            url,
            workers=workers,
            overwrite=True,
            progress=True,
            executor=executor,
            address=address,
            before_publish=_write_report,
        )
    render_table(audit(mirror(str(url), "tables")), console)
    console.print(
        f"dataset: {url}  ({result.manifest.totals['shards']} shards, {time.perf_counter() - started:.1f}s in all)"
    )
    console.print(f"report: {url}/audit.html  (markdown: {url}/audit.md; card: {url}/README.md)")
    console.print(f"next: curate inspect {url}   curate audit {url}   curate verify {url}")


class ExportFormat(StrEnum):
    llava = "llava"


@app.command()
def export(
    dataset_: Annotated[
        str, typer.Argument(metavar="DATASET", help="A built dataset directory or s3:// URL (sft records).")
    ],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output layout: llava.")],
    out_: Annotated[str, typer.Option("--out", "-o", help="Output directory (empty or absent; local).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out.")] = False,
) -> None:
    """Export a dataset for training code: llava = llava.json (LLaVA/ShareGPT4V conversations) + images/."""
    from curation.export.llava import LLAVA_JSON, export_llava

    started = time.perf_counter()
    out = _local_path(out_, "--out")
    dataset = _dataset_dir(dataset_, "all")
    with _writing(out):
        counts = export_llava(dataset, out, overwrite=overwrite)
    console.print(
        f"wrote {out / LLAVA_JSON}: {counts['records']} records, {counts['images']} images, "
        f"{counts['text_only']} text-only ({time.perf_counter() - started:.1f}s)"
    )


def _demo_select(out: Path, workers: int) -> None:
    from curation.recipe import load_recipe
    from curation.selection.sweep import run_selection
    from curation.selection.toy import build_benchmarks, make_toy_world

    started = time.perf_counter()
    world = out.resolve() / "toy-world"  # the world's recipes name their files by absolute path
    recipe_path = world / "selection.yaml"
    if not recipe_path.is_file():
        recipe_path = make_toy_world(world)
    build_benchmarks(world, workers)
    doc = run_selection(load_recipe(str(recipe_path)), out / "sweep", workers=workers, console=err_console)
    _print_selection(doc)
    console.print(f"toy sweep in {time.perf_counter() - started:.0f}s; rerun to see every trial reused from the cache")


def _print_built(result: Any, where: str, placed: str) -> None:
    """What a build did, in one line (``placed``: where its shards went), and its throughput."""
    m = result.manifest
    if result.state == "complete":
        err_console.print(f"{where}: already built from this recipe ({m.totals['samples']:,} samples); nothing to do")
    else:
        note = (
            f", resumed ({result.partitions_skipped}/{result.partitions} partitions were done)"
            if result.state == "resume"
            else ""
        )
        err_console.print(
            f"built {m.totals['samples']:,} samples in {m.totals['shards']} shards {placed} "
            f"in {result.seconds:.1f}s{note}"
        )
    if m.totals["samples"] == 0:
        err_console.print(f"[yellow]warning:[/yellow] the build holds 0 samples; `curate audit {where}` shows why")
    _print_throughput(result.log)


def _print_throughput(log: Path | None) -> None:
    """Each step's own summary of this run's rates (steps that report them: generation), from the run log."""
    if log is None or not log.is_file():
        return
    for label, report in json.loads(log.read_text()).get("steps", {}).items():
        summary = (report.get("throughput") or {}).get("summary")
        if summary:
            err_console.print(f"{label}: {summary} (report: {log})")


def os_error_message(exc: OSError, where: Path | None = None) -> str:
    """One line for an OSError that reached the CLI: the path, the system's words, and for a full disk what
    to do. ``where``: the directory being written, for errors that name no file (a failed write())."""
    path = exc.filename or where
    name = errno.errorcode.get(exc.errno or 0, "")
    what = f"{exc.strerror or exc}" + (f" ({name})" if name else "")
    line = f"{path}: {what}" if path else what
    if is_disk_full(exc):
        line += "; free space (or raise the quota or file-size limit) and rerun the same command: finished work is kept"
    return line


@contextmanager
def _writing(where: Path) -> Iterator[None]:
    """A full disk while a command writes under ``where`` is a one-line error naming it."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise CurationError(os_error_message(exc, where)) from None


def _local_path(value: str, what: str) -> Path:
    from curation.storage.urls import local_path

    return local_path(value, what)


def _manifest_call(fn, directory: Path):
    try:
        return fn(directory)
    except (FileNotFoundError, ValueError) as exc:  # no dataset.json, or a corrupt one (ManifestError)
        raise CurationError(str(exc)) from None


def _print_error(message: str) -> None:
    """The one way the CLI reports a failure: ``error: <message>`` on stderr."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (scancel, kill) stops like Ctrl-C: running trials and workers are cleaned up."""
    raise KeyboardInterrupt


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except CurationError as exc:
        _print_error(str(exc))
        sys.exit(2)
    except OSError as exc:  # the environment (a full disk, a permission, a vanished file): no traceback either
        _print_error(os_error_message(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; run the same command again to resume")
        sys.exit(130)
