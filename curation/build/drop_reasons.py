"""The drop-reason registry: every reason a build can give a drop, declared by what emits it.

- the build stages declare theirs here: ``read`` (around every reader), ``write``, and a mixture's ``select``;
- the image probe next to its error (``shards.imageinfo.PROBE_DROP_REASONS``);
- every reader class (``Reader.drop_reasons``, found through the reader registry ``reader_classes()``);
- every step class (``Step.drop_reasons``: the registered steps and the always-on ``UniqueKey``).

A reason is a stable slug; a declared key ending in ``:`` is a prefix (``invalid_record:`` stands for
``invalid_record:<field>``). :func:`undeclared` checks a build's accounting against the declarations, and
:func:`render_markdown` writes docs/drop-reasons.md from them::

    python -m curation.build.drop_reasons --write docs/drop-reasons.md
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, get_args

from curation.build.global_steps import UNIQUE_KEY
from curation.build.partition import PROBE, READ, WRITE
from curation.recipe import BuildRecipe, MixtureRecipe
from curation.recipe.steps import Step as StepConfig
from curation.recipe.steps import step_label
from curation.report.table import Table, markdown_table
from curation.sources.base import Reader, reader_class, reader_classes
from curation.sources.download.failures import CATEGORY_MEANINGS
from curation.steps.contract import GlobalStep, Step, registered_steps, step_class
from curation.steps.dedup import UniqueKey
from shards.imageinfo import PROBE_DROP_REASONS

# The accounting labels of the build stages (recipe steps cannot take them: RESERVED_STEP_NAMES).
SELECT = "select"  # a mixture's one stage

READ_DROP_REASONS = {  # ``curation.build.partition.read_every_row``, around every reader
    "reader_error": "a reader failed partway: the partition's remaining rows, in one drop naming the error",
    "rows_missing": (
        "a reader ended before the rows its plan counted (the input changed since the plan): the missing rows, "
        "in one drop"
    ),
}
WRITE_DROP_REASONS = {  # the partition's shard writer
    "wrong_kind": "a record of another kind than `output.kind` (a missing conversion step)",
    "invalid_unicode": "text with lone surrogates (e.g. `\\ud800` in JSON input), which UTF-8 cannot store",
    "duplicate_key": "a key already in the shard being written (across the dataset: `unique_key`)",
    "image_corrupt": (
        "an image whose re-encoding or hashing failed (a failed write to disk is not a drop: it stops the build)"
    ),
}
MIXTURE_DROP_REASONS = {  # ``curation.mixture.build``
    "not_sampled": "a sample of the component left out by downsampling to its target",
}
MIXTURE_ADDED_REASONS = {
    "repeated": "copies of samples repeated to reach the component's target (counted as added)",
}

_INTRO = """\
# Drop reasons

<!-- Generated from the declarations in the code by `python -m curation.build.drop_reasons --write docs/drop-reasons.md`
(curation/build/drop_reasons.py); do not edit by hand. -->

Every sample that a step does not keep leaves it as a drop with a reason, so that per step and per source
`input = output + Σ dropped` (see [architecture.md](architecture.md#guarantees-and-the-tests-that-hold-them)).
The audit lists the drops by step and reason, `curate inspect DIR --rejects` shows dropped samples when the
build kept them (`output.rejects: true`), and a reason with a `:` carries a detail (the field, the
benchmark, the HTTP code, the download failure): a reason ending in `:` below stands for all of them.

Each stage, reader and step declares the reasons it can emit (`drop_reasons` on reader and step classes,
`PROBE_DROP_REASONS` in `shards/imageinfo.py`, the build stages in `curation/build/drop_reasons.py`), and this page
is generated from them: `python -m curation.build.drop_reasons --write docs/drop-reasons.md`. A build's accounting is
checked against them (`curation.build.drop_reasons.undeclared`).

A build's steps, in order: `read` (the source's reader), `probe`, the recipe's record steps, `write`, then
`unique_key` and the recipe's global steps. A mixture has one step, `select`.
"""

_NOTES = {
    READ: (
        "The first step of every build: the source's reader, with the reasons below by reader, and around every "
        "reader these two. Limits and the reasons behind them: [hostile-input.md](hostile-input.md)."
    ),
    PROBE: "Every image's header, read before the record steps (`shards/imageinfo.py`).",
    WRITE: "The partition's shard writer, after the record steps.",
    UniqueKey.__name__: "Always on, the first global step: keys must be unique for webdataset and wids.",
    "LaionReader": (
        "The metadata filters drop rows before any download, each row with the first filter it fails "
        "([sources.md](sources.md#laion)); `download_failed:<category>`: see [download failures](#download-failures)."
    ),
    "ObelicsReader": (
        "Images removed from a kept document are not drops: they are counted by reason in `meta.removed` and "
        "`meta.images_failed` ([sources.md](sources.md#obelics), [download failures](#download-failures))."
    ),
    "DocmatixGenerate": (
        "Every `generation_failed:<reason>` and the rules that discard single pairs: [docmatix.md](docmatix.md)."
    ),
    "Judge": (
        "Replies without a rating and failed requests are counted per request in `reports`; with `on_unparsed: "
        "keep` / `on_failure: keep` the sample stays, its rating None: [judges.md](judges.md#outcomes)."
    ),
    SELECT: (
        "Repeats are counted as `added: {repeated: n}`, so that `input + added = output + dropped` "
        "(`added` reasons below the drops)."
    ),
}


# ---- the declarations ---------------------------------------------------------------------------------------
def _step_type(cls: type[Step]) -> str:
    """The recipe's ``step:`` of a step class (``TextLength`` -> ``text_length``)."""
    field = cls.config.model_fields["step"]
    return str(get_args(field.annotation)[0])


def _step_classes() -> list[type[Step]]:
    """Every registered step class, in the order of the recipe format's step types."""
    order = {config: i for i, config in enumerate(get_args(get_args(StepConfig)[0]))}
    return [cls for config, cls in sorted(registered_steps().items(), key=lambda kv: order.get(kv[0], len(order)))]


class _Section(NamedTuple):
    key: str  # the stage or class name (``declared_reasons``)
    heading: str
    reasons: dict[str, str]
    note: str | None = None


def _sections() -> list[_Section]:
    """Everything that declares reasons, in build order."""
    steps = _step_classes()
    record = [cls for cls in steps if not issubclass(cls, GlobalStep)]
    glob = [cls for cls in steps if issubclass(cls, GlobalStep)]

    def step(cls: type[Step], heading: str) -> _Section:
        return _Section(cls.__name__, heading, dict(cls.drop_reasons), _NOTES.get(cls.__name__))

    out = [_Section(READ, f"`{READ}`", READ_DROP_REASONS, _NOTES[READ])]
    for name, reader in reader_classes().items():
        note = _NOTES.get(reader.__name__, f"The source: [sources.md](sources.md#{name}).")
        out.append(_Section(reader.__name__, f"`{READ}`: the `{name}` reader", dict(reader.drop_reasons), note))
    out.append(_Section(PROBE, f"`{PROBE}`", PROBE_DROP_REASONS, _NOTES[PROBE]))
    out += [step(cls, f"`{_step_type(cls)}`") for cls in record]
    out.append(_Section(WRITE, f"`{WRITE}`", WRITE_DROP_REASONS, _NOTES[WRITE]))
    out.append(step(UniqueKey, f"`{UNIQUE_KEY}` (always, global)"))
    out += [step(cls, f"`{_step_type(cls)}` (global)") for cls in glob]
    out.append(_Section(SELECT, f"mixture `{SELECT}`", MIXTURE_DROP_REASONS, _NOTES[SELECT]))
    return out


def declared_reasons() -> dict[str, dict[str, str]]:
    """Stage or class name -> {reason: meaning}: the build stages (``read``, ``probe``, ``write``, ``select``),
    every reader class and every step class (``UniqueKey`` included), in build order."""
    return {section.key: dict(section.reasons) for section in _sections()}


def is_declared(reason: str, declared: Iterable[str]) -> bool:
    """Whether ``reason`` is one of ``declared``, or starts with a declared prefix (a key ending in ``:``)."""
    keys = set(declared)
    return reason in keys or any(k.endswith(":") and reason.startswith(k) for k in keys)


# ---- checking a build -------------------------------------------------------------------------------------
Allowed = tuple[Mapping[str, str], Mapping[str, str]]  # (drop reasons, added reasons)


def _build_resolver(recipe: BuildRecipe) -> Callable[[str, str], Allowed]:
    sources = {s.name: s for s in recipe.sources}
    steps = {step_label(recipe.steps, i): step_class(cfg) for i, cfg in enumerate(recipe.steps)}
    fixed = {PROBE: PROBE_DROP_REASONS, WRITE: WRITE_DROP_REASONS, UNIQUE_KEY: UniqueKey.drop_reasons}

    def allowed(label: str, source: str) -> Allowed:
        if label == READ:
            reader: type[Reader] | None = reader_class(sources[source]) if source in sources else None
            return {**READ_DROP_REASONS, **(reader.drop_reasons if reader else {})}, {}
        if label in fixed:
            return fixed[label], {}
        cls = steps.get(label)
        return (cls.drop_reasons if cls is not None else {}), {}

    return allowed


def _mixture_resolver(label: str, source: str) -> Allowed:
    return (MIXTURE_DROP_REASONS, MIXTURE_ADDED_REASONS) if label == SELECT else ({}, {})


def undeclared(recipe: BuildRecipe | MixtureRecipe, accounting: Mapping[str, Any]) -> list[str]:
    """The ``step/reason`` pairs of a build's accounting (``Accounting.summary()``, a manifest's ``accounting``)
    whose reason is not declared by what runs at that step: ``read`` -> the source's reader class and the read
    stage, ``probe`` -> the probe, ``write`` -> the writer, ``unique_key`` -> ``UniqueKey``, another label -> the
    recipe step at that label (a label nothing runs at: every reason); a mixture's ``select``. Declared prefixes
    (keys ending in ``:``) match. Reasons in ``added`` are checked the same way (``step/+reason``)."""
    allowed = _mixture_resolver if isinstance(recipe, MixtureRecipe) else _build_resolver(recipe)
    found: dict[str, None] = {}
    for entry in accounting.get("steps", []):
        label = entry["step"]
        for source, counts in entry.get("sources", {}).items():
            drops, added = allowed(label, source)
            for reason in counts.get("dropped", {}):
                if not is_declared(reason, drops):
                    found[f"{label}/{reason}"] = None
            for reason in counts.get("added", {}):
                if not is_declared(reason, added):
                    found[f"{label}/+{reason}"] = None
    return list(found)


STRICT_ENV = "VLM_CURATION_STRICT_DROPS"  # "1": an undeclared reason fails the build (the test suite sets it)


def check_declared(recipe: BuildRecipe | MixtureRecipe, accounting: Mapping[str, Any]) -> None:
    """Every reason in ``accounting`` is declared: an undeclared one is a bug (a stage emitting a reason it does
    not document). Under ``VLM_CURATION_STRICT_DROPS=1`` it fails the build; otherwise it is reported."""
    missing = undeclared(recipe, accounting)
    if not missing:
        return
    message = f"drop reasons not declared by the stage that emitted them (a bug): {', '.join(missing[:10])}"
    if os.environ.get(STRICT_ENV) == "1":
        raise RuntimeError(message)
    print(f"warning: {message}", file=sys.stderr)


# ---- docs/drop-reasons.md ---------------------------------------------------------------------------------
def _table(rows: Mapping[str, str], head: str = "reason") -> list[str]:
    return markdown_table(
        Table(None, [head, "meaning"], [[f"`{reason}`", meaning] for reason, meaning in rows.items()])
    )


def render_markdown() -> str:
    """The full text of docs/drop-reasons.md, from the declarations."""
    lines = [_INTRO.rstrip("\n")]
    for section in _sections():
        lines += ["", f"## {section.heading}", ""]
        if section.note:
            lines += [section.note, ""]
        lines += _table(section.reasons) if section.reasons else ["Drops nothing."]
        if section.key == SELECT:
            lines += ["", *_table(MIXTURE_ADDED_REASONS, "added")]
    lines += [
        "",
        "## Download failures",
        "",
        "The categories of `download_failed:<category>` (LAION and OBELICS downloads, "
        "`curation/sources/download/failures.py`; "
        "the fetch and its limits: [hostile-input.md](hostile-input.md#downloads-laion-obelics)).",
        "",
        *_table(CATEGORY_MEANINGS, "category"),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.build.drop_reasons", description="Print or write docs/drop-reasons.md."
    )
    parser.add_argument("--write", metavar="PATH", help="write the markdown to PATH (default: print it)")
    args = parser.parse_args(argv)
    text = render_markdown()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
