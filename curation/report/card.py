"""The dataset card: ``<build>/README.md``, a Hugging Face card written from the manifest and the audit.

Deterministic (no dates, no absolute paths): a rebuild of the same recipe writes the same bytes."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from curation.build.output_dir import CARD_NAME
from curation.errors import CurationError
from curation.report.audit import SECTIONS, audit, drops_table
from curation.report.table import Table, markdown_table
from curation.storage.urls import is_url
from shards import read_manifest
from shards.atomic import atomic_write_bytes
from shards.manifest import DatasetManifest

MEMBERS = {
    "pair": [
        ("KEY.{img}", "the image ({img}; one format per dataset)"),
        ("KEY.txt", "the caption"),
        ("KEY.json", "`kind`, `source`, `meta` (a JSON string)"),
    ],
    "sft": [
        ("KEY.images.mp", "msgpack list of the image bytes (empty for text-only samples)"),
        ("KEY.json", "`turns: [{user, assistant}]`, `kind`, `source`, `meta` (a JSON string)"),
    ],
    "interleaved": [
        ("KEY.images.mp", "msgpack list of the images, in document order"),
        ("KEY.json", "`texts` (null where an image stands), `kind`, `source`, `meta` (a JSON string)"),
    ],
    "pdf": [
        ("KEY.pdf", "the document"),
        ("KEY.json", "`pages: [{lines: [{text, bbox}]}]`, `kind`, `source`, `meta` (a JSON string)"),
    ],
}

SIZE_BUCKETS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
]


def size_category(samples: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``samples``."""
    return next((label for limit, label in SIZE_BUCKETS if samples < limit), "n>1T")


def source_info(directory: Path, manifest: DatasetManifest | None = None) -> dict[str, dict[str, Any]]:
    """Per source of a build: reader, declared licences and citations (a mixture's components: from the
    sources they draw on in their datasets)."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    recipe = manifest.recipe or {}
    if manifest.mixture is None:
        return {
            s["name"]: {
                "reader": s.get("reader", ""),
                "licenses": [s["license"]] if s.get("license") else [],
                "citations": [s["citation"]] if s.get("citation") else [],
            }
            for s in recipe.get("sources", [])
        }
    info: dict[str, dict[str, Any]] = {}
    for c in recipe.get("components", []):
        theirs = _dataset_sources(directory, manifest, recipe, c["dataset"])
        drawn = [theirs.get(s, {}) for s in c.get("sources") or [c["name"]]]
        info[c["name"]] = {
            "reader": f"mixture of {c['dataset']}",
            "licenses": sorted({lic for d in drawn for lic in d.get("licenses", [])}),
            "citations": sorted({cit for d in drawn for cit in d.get("citations", [])}),
        }
    return info


def _dataset_sources(
    directory: Path, manifest: DatasetManifest, recipe: dict[str, Any], alias: str
) -> dict[str, dict[str, Any]]:
    """The sources of a mixture's dataset: from its built manifest, else from an inline build recipe."""
    ident = (manifest.mixture or {}).get("datasets", {}).get(alias, {})
    if ident.get("path"):
        path = Path(ident["path"])
        path = path if path.is_absolute() else directory / path
        if is_url(ident["path"]):  # a build in a bucket: the local mirror the mixture read it through
            from curation.storage.mirror import mirror_dir
            from curation.storage.urls import parse_url

            with contextlib.suppress(CurationError):
                path = mirror_dir(parse_url(ident["path"]))
        try:
            return source_info(path)
        except (OSError, ValueError):
            pass
    inline = (recipe.get("datasets", {}).get(alias) or {}).get("build") or {}
    return {
        s["name"]: {
            "licenses": [s["license"]] if s.get("license") else [],
            "citations": [s["citation"]] if s.get("citation") else [],
        }
        for s in inline.get("sources", [])
    }


def license_fields(info: dict[str, dict[str, Any]]) -> dict[str, str]:
    """``license`` (and for mixed licences ``license_name``/``license_details``) of the card's header."""
    declared = sorted({lic for s in info.values() for lic in s["licenses"]})
    undeclared = sorted(name for name, s in info.items() if not s["licenses"])
    if not declared:
        return {"license": "unknown"}
    if len(declared) == 1 and not undeclared:
        return {"license": declared[0]}
    per = [f"{name}: {', '.join(s['licenses']) or 'not declared'}" for name, s in sorted(info.items())]
    return {"license": "other", "license_name": "mixed", "license_details": "Mixed licences: " + "; ".join(per)}


def _data_files(manifest: DatasetManifest) -> list[str]:
    folders = sorted({str(Path(s.name).parent) for s in manifest.shards}) or ["."]
    return [f"{manifest.name}-*.tar" if f == "." else f"{f}/{manifest.name}-*.tar" for f in folders]


def card_header(manifest: DatasetManifest, report: dict[str, Any], info: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The YAML metadata of the card."""
    tasks = ["image-text-to-text"]
    if manifest.kind == "sft" and manifest.totals.get("images", 0) > 0:
        tasks.append("visual-question-answering")
    files = _data_files(manifest)
    return {
        "pretty_name": manifest.name,
        **license_fields(info),
        "task_categories": tasks,
        "size_categories": [size_category(report["samples"])],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": files[0] if len(files) == 1 else files}],
            }
        ],
        "tags": ["webdataset", "vlm-curation", manifest.kind],
    }


def _sources_section(report: dict[str, Any], info: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, s in report["sources"].items():
        i = info.get(name, {})
        rows.append(
            [
                name,
                i.get("reader", ""),
                s.get("category") or "",
                ", ".join(i.get("licenses", [])) or "not declared",
                "; ".join(i.get("citations", [])),
                f"{s['input']:,}",
                f"{s['samples']:,}",
                f"{s['answer_tokens']:,}",
                f"{s['mix_pct']:.2f}",
            ]
        )
    headers = [
        "source",
        "reader",
        "category",
        "licence",
        "citation",
        "input rows",
        "samples",
        "answer tokens",
        "% answer tokens",
    ]
    return ["## Sources", "", *markdown_table(Table(None, headers, rows, numeric=range(5, len(headers)))), ""]


def _features_section(manifest: DatasetManifest) -> list[str]:
    from schemas.sidecar import SIDECAR_SCHEMA

    img = (manifest.recipe.get("output") or {}).get("pair_image_format", "jpg")
    members = [[m.replace("{img}", img), d.replace("{img}", img)] for m, d in MEMBERS.get(manifest.kind, [])]
    columns = [[f.name, str(f.type), (f.metadata or {}).get(b"doc", b"").decode()] for f in SIDECAR_SCHEMA]
    return [
        "## Features",
        "",
        f"Each sample of this `{manifest.kind}` dataset has the same tar members:",
        "",
        *markdown_table(Table(None, ["member", "content"], members)),
        "",
        "Each shard `NAME-NNNNNN.tar` has a parquet sidecar `NAME-NNNNNN.parquet` with one row per sample:",
        "",
        *markdown_table(Table(None, ["column", "type", "description"], columns)),
        "",
    ]


def _sizes_section(report: dict[str, Any], manifest: DatasetManifest) -> list[str]:
    t = manifest.totals
    rows = [
        ["samples", f"{report['samples']:,}"],
        ["shards", f"{report['shards']:,}"],
        ["bytes", f"{t.get('bytes', 0):,}"],
        ["images", f"{t.get('images', 0):,}"],
        ["text tokens", f"{t.get('text_tokens', 0):,}"],
        ["answer tokens", f"{t.get('answer_tokens', 0):,}"],
        ["input rows", f"{report['input']:,}"],
    ]
    tok = (manifest.recipe.get("tokenizer") or {}).get("type", "regex")
    sizes = markdown_table(Table(None, ["", "total"], rows, numeric=(1,)))
    return ["## Size", "", *sizes, "", f"Tokens are counted with the `{tok}` tokenizer.", ""]


def _drops_section(report: dict[str, Any]) -> list[str]:
    drops = drops_table(report)
    if not drops.rows:
        return ["## Filtering", "", "No samples were dropped.", ""]
    return [
        "## Filtering",
        "",
        "Samples dropped, by step and reason:",
        "",
        *markdown_table(replace(drops, title=None)),
        "",
    ]


def _extra_sections(report: dict[str, Any]) -> list[str]:
    """Duplicates, contamination and mixture targets: the audit's own tables (one way to compute them)."""
    titles = {
        "duplicates per source pair": "## Duplicates",
        "benchmark contamination removed": "## Benchmark decontamination",
        "mixture: target versus achieved": "## Mixture",
    }
    lines: list[str] = []
    for table in (of(report) for of in SECTIONS):
        if table.rows:
            title = table.title or ""
            note = ["Shares are of the mixture's answer tokens.", ""] if title.startswith("mixture") else []
            lines += [titles.get(title, f"## {title}"), "", *note, *markdown_table(replace(table, title=None)), ""]
    return lines


def _loading_section(manifest: DatasetManifest) -> list[str]:
    files = _data_files(manifest)
    glob = files[0]
    return [
        "## Loading",
        "",
        "```python",
        "import glob",
        "",
        "import datasets, webdataset as wds",
        "",
        f'tars = sorted(glob.glob("{glob}"))',
        "for sample in wds.WebDataset(tars, shardshuffle=False).decode():",
        '    print(sample["__key__"], sample["json"])',
        "",
        "from shards import hf_features  # pip install vlm-curation",
        "",
        "hf = datasets.load_dataset(",
        f'    "webdataset", data_files={{"train": tars}}, split="train", features=hf_features("{manifest.kind}")',
        ")",
        "```",
        "",
        "Pass `features`: `datasets` otherwise infers the columns from the first five samples only.",
        f'Random access: `wids.ShardListDataset("{manifest.wids_index or manifest.name + ".wids.json"}")`.',
        "",
    ]


def dataset_card(directory: Path) -> str:
    """The card of the build in ``directory`` (markdown with a YAML header)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    report = audit(directory)
    info = source_info(directory, manifest)
    header = yaml.safe_dump(card_header(manifest, report, info), sort_keys=False, allow_unicode=True, width=1000)
    description = (manifest.recipe.get("description") or "").strip()
    command = "curate build RECIPE.yaml --out DIR" + (" (a mixture recipe)" if manifest.mixture else "")
    lines = [
        "---",
        header.rstrip("\n"),
        "---",
        "",
        f"# {manifest.name}",
        "",
        *([description, ""] if description else []),
        f"A `{manifest.kind}` dataset of {report['samples']:,} samples in {report['shards']:,} WebDataset shards.",
        "",
        "## How it was built",
        "",
        f"- tool: vlm-curation {manifest.tool_version}",
        f"- recipe sha256: `{manifest.recipe_sha256}`",
        "- the recipe is stored in `dataset.json` (`recipe`); save it as `RECIPE.yaml` and rebuild with",
        f"  `{command}`",
        "",
        *_features_section(manifest),
        *_sizes_section(report, manifest),
        *_sources_section(report, info),
        *_drops_section(report),
        *_extra_sections(report),
        *_loading_section(manifest),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_dataset_card(directory: Path) -> Path:
    """Write ``<directory>/README.md`` atomically; returns its path."""
    path = Path(directory) / CARD_NAME
    atomic_write_bytes(path, dataset_card(directory).encode("utf-8"))
    return path
