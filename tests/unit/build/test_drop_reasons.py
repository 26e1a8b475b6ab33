"""The drop-reason registry: every stage, reader and step declares the reasons it can emit, docs/drop-reasons.md is
generated from the declarations, and real builds emit no reason that nothing declares."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from curation.build.drop_reasons import (
    MIXTURE_ADDED_REASONS,
    declared_reasons,
    is_declared,
    render_markdown,
    undeclared,
)
from curation.recipe import BuildRecipe, MixtureRecipe, validate_recipe
from curation.recipe.sources import SourceBase
from curation.sources import reader_classes
from curation.sources.download.failures import CATEGORY_MEANINGS

ROOT = Path(__file__).parents[3]
DOC = ROOT / "docs" / "drop-reasons.md"
REGENERATE = "python -m curation.build.drop_reasons --write docs/drop-reasons.md"
SLUG = re.compile(r"^[a-z][a-z0-9_]*(:[a-z0-9_]*)?$")


def test_the_doc_is_generated_from_the_declarations():
    assert DOC.read_text(encoding="utf-8") == render_markdown(), (
        f"docs/drop-reasons.md is out of date: run {REGENERATE}"
    )


def test_every_reason_is_a_slug_with_a_one_line_meaning():
    tables = {**declared_reasons(), "mixture (added)": MIXTURE_ADDED_REASONS, "download categories": CATEGORY_MEANINGS}
    for where, reasons in tables.items():
        for reason, meaning in reasons.items():
            if where != "download categories":
                assert SLUG.match(reason), (where, reason)
            assert isinstance(meaning, str) and meaning.strip() == meaning and meaning, (where, reason)
            assert "\n" not in meaning and "\r" not in meaning, (where, reason)


def test_every_reader_of_the_recipe_format_is_registered_and_declares_its_reasons():
    names = {
        get_args(model.model_fields["reader"].annotation)[0]
        for model in _subclasses(SourceBase)
        if "reader" in model.model_fields and get_args(model.model_fields["reader"].annotation)
    }
    readers = reader_classes()
    assert set(readers) == names
    declared = declared_reasons()
    for cls in readers.values():
        assert declared[cls.__name__], cls.__name__
    for stage in ("read", "probe", "write", "UniqueKey", "select"):
        assert declared[stage], stage


def test_every_literal_reason_in_the_code_is_declared():
    """A static guard: each ``Drop("reason", ...)`` and ``ImageFileError``/``ImageProbeError``/``PdfOpenError`` reason
    written as a literal is declared somewhere (the builds below check who declares it)."""
    everything = {reason for reasons in declared_reasons().values() for reason in reasons}
    pattern = re.compile(r'(?:Drop|ImageFileError|ImageProbeError|PdfOpenError)\(\s*f?"([a-z_]+(?::[a-z_]*)?)')
    found = {}
    for path in [*sorted((ROOT / "curation").rglob("*.py")), ROOT / "shards" / "imageinfo.py"]:
        for reason in pattern.findall(path.read_text(encoding="utf-8")):
            found.setdefault(reason, path.relative_to(ROOT).as_posix())
    assert len(found) > 20, found  # the pattern still finds the reasons
    # an f-string's detail (``f"missing_member:{ext}"``) leaves its prefix: some declared reason must start with it
    missing = {
        r: where
        for r, where in found.items()
        if not (is_declared(r, everything) or (r.endswith(":") and any(d.startswith(r) for d in everything)))
    }
    assert not missing, f"reasons emitted but declared nowhere: {missing}"


def test_every_laion_metadata_filter_is_declared():
    from curation.recipe.sources import LaionFilters
    from curation.sources.laion.metadata import COLUMNS, METADATA_DROP_REASONS, _filter_checks

    filters = LaionFilters(max_words=50, languages=["en"], min_aesthetic=5.0)
    checks, skipped = _filter_checks(filters, {name: f'"{name}"' for name in COLUMNS})
    assert not skipped
    assert [name for name, _ in checks] + ["duplicate_url", "not_selected"] == list(METADATA_DROP_REASONS)


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _recipe() -> BuildRecipe:
    return validate_recipe(
        {
            "kind": "build",
            "name": "r",
            "sources": [
                {"name": "pairs", "reader": "jsonl", "path": "x.jsonl", "record": "pair"},
                {"name": "web", "reader": "laion", "path": "meta/"},
            ],
            "steps": [{"step": "text_length"}, {"step": "text_length", "min_words": 2}, {"step": "exact_image_dedup"}],
            "output": {"kind": "pair"},
        }
    )


def _accounting(drops: dict[str, dict[str, dict[str, int]]], added: dict[str, Any] | None = None) -> dict[str, Any]:
    """A manifest's ``accounting`` with the given drops (step -> source -> reason -> n)."""
    steps = []
    for step, sources in drops.items():
        counts = {s: {"input": 0, "output": 0, "dropped": reasons} for s, reasons in sources.items()}
        for s, reasons in (added or {}).get(step, {}).items():
            counts.setdefault(s, {"input": 0, "output": 0, "dropped": {}})["added"] = reasons
        steps.append({"step": step, "sources": counts})
    return {"steps": steps, "sources": {}}


def test_undeclared_flags_a_reason_that_nothing_running_at_its_step_declares():
    recipe = _recipe()
    accounting = _accounting(
        {
            "read": {
                "pairs": {"invalid_json": 1, "invalid_record:caption": 2, "reader_error": 1, "low_similarity": 1},
                "web": {"download_failed:http_404": 3, "low_similarity": 4, "invalid_json": 1},
            },
            "probe": {"pairs": {"image_empty": 1, "made_up": 1}},
            "text_length#1": {"pairs": {"text_too_short": 1}},
            "text_length#2": {"pairs": {"too_few_words": 1, "duplicate_image": 1}},
            "write": {"pairs": {"duplicate_key": 1, "wrong_kind": 1}},
            "unique_key": {"pairs": {"duplicate_key": 1}},
            "exact_image_dedup": {"web": {"duplicate_image": 1, "duplicate_key": 1}},
            "no_such_step": {"pairs": {"text_too_short": 1}},
        }
    )
    assert undeclared(recipe, accounting) == [
        "read/low_similarity",  # a LAION metadata filter, not a jsonl reason
        "read/invalid_json",  # a jsonl reason, not a LAION one
        "probe/made_up",
        "text_length#2/duplicate_image",
        "exact_image_dedup/duplicate_key",
        "no_such_step/text_too_short",
    ]


def test_a_declared_prefix_matches_every_detail_and_only_the_prefix_does():
    assert is_declared("invalid_record:turns", {"invalid_record:"})
    assert is_declared("download_failed:http_404", {"download_failed:"})
    assert not is_declared("invalid_record", {"invalid_record:"})
    assert not is_declared("invalid_json:x", {"invalid_json"})
    recipe = _recipe()
    ok = _accounting({"read": {"pairs": {"invalid_record:anything_at_all": 1}, "web": {"download_failed:other": 1}}})
    assert undeclared(recipe, ok) == []
    assert undeclared(recipe, _accounting({"read": {"pairs": {"invalid_recordx": 1}}})) == ["read/invalid_recordx"]


def test_a_mixture_declares_its_select_drops_and_additions():
    recipe = MixtureRecipe.model_construct(kind="mixture")  # only its type is looked at
    accounting = _accounting({"select": {"c": {"not_sampled": 3}}}, added={"select": {"c": {"repeated": 2}}})
    assert undeclared(recipe, accounting) == []
    accounting = _accounting({"select": {"c": {"skipped": 3}}}, added={"select": {"c": {"cloned": 2}}})
    assert undeclared(recipe, accounting) == ["select/skipped", "select/+cloned"]


# ---- real builds ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def golden_builds(tmp_path_factory) -> Path:
    """Every golden build (the demo, one per built-in recipe, LAION and OBELICS through a loopback image server,
    the idefics3 mixture with its sub-builds), under a fresh root: about a minute."""
    from tests import golden

    root = tmp_path_factory.mktemp("golden")
    (root / "builds").mkdir()
    for name, build in golden.BUILDS.items():
        build(root, root / "builds" / name)
    golden.build_network(root, {name: root / "builds" / name for name in golden.NETWORK_BUILDS})
    return root / "builds"


@pytest.mark.slow
def test_real_builds_emit_only_declared_reasons(golden_builds: Path):
    manifests = sorted(golden_builds.rglob("dataset.json"))
    built = {m.parent.relative_to(golden_builds).as_posix() for m in manifests}
    assert {"demo", "laion_subsets", "obelics", "docmatix", "pdfa_transcription", "llava665k", "sft_parquet"} <= built
    assert {"idefics3_sft", "idefics3_sft/_datasets/cauldron", "idefics3_sft/_datasets/extras"} <= built
    emitted = set()
    for manifest in manifests:
        doc = json.loads(manifest.read_text())
        kind = doc["recipe"].get("kind", "build")
        recipe = (MixtureRecipe if kind == "mixture" else BuildRecipe).model_validate(doc["recipe"])
        assert undeclared(recipe, doc["accounting"]) == [], manifest.parent
        emitted |= {r for step in doc["accounting"]["steps"] for c in step["sources"].values() for r in c["dropped"]}
    # the builds do drop, for many reasons: the check above is not vacuous
    assert {"invalid_json", "download_failed:http_404", "doc_no_text", "pdf_encrypted", "not_sampled"} <= emitted
