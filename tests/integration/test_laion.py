"""LAION subsets end to end: metadata selection, img2dataset downloads from a loopback server, conversion."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter

import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.recipe import LaionFilters, validate_recipe
from curation.sources.laion.metadata import select_metadata
from shards import iter_dataset, read_manifest, verify_dataset
from tests.builds import CLI
from tests.laion_data import image_server, write_images, write_metadata


def test_selection_filters_dedups_and_nests(tmp_path):
    planted = write_metadata(tmp_path / "meta", "http://h", 12)
    files = sorted((tmp_path / "meta").glob("*.parquet"))
    small = select_metadata(files, LaionFilters(), 4, seed=0, out=tmp_path / "a" / "s.parquet")
    big = select_metadata(files, LaionFilters(), 12, seed=0, out=tmp_path / "b" / "s.parquet")
    assert big.input == 12 + 4 + 3 and big.selected == 12
    assert big.dropped == dict(sorted(planted.items()))
    assert small.dropped == {**dict(sorted(planted.items())), "not_selected": 8}
    a = pq.read_table(small.path).column("url").to_pylist()
    b = pq.read_table(big.path).column("url").to_pylist()
    assert a == b[:4]  # nested by construction
    other = pq.read_table(select_metadata(files, LaionFilters(), 12, 1, tmp_path / "c" / "s.parquet").path)
    assert sorted(other.column("url").to_pylist()) == sorted(b)  # the same rows ...
    assert other.column("url").to_pylist() != b  # ... in another seeded order


@pytest.mark.slow
def test_laion_build_downloads_for_real_and_accounts_for_everything(tmp_path):
    write_images(tmp_path / "www", 12)
    with image_server(tmp_path / "www") as base:
        planted = write_metadata(tmp_path / "meta", base, 12)
        # two served URLs fail in different ways: one 404s, one is an HTML page named .jpg
        (tmp_path / "www" / "5.jpg").unlink()
        (tmp_path / "www" / "7.jpg").write_bytes((tmp_path / "www" / "page.jpg").read_bytes())
        recipe = {
            "name": "laion",
            "sources": [
                {
                    "name": "laion",
                    "reader": "laion",
                    "path": str(tmp_path / "meta"),
                    "sizes": [4, 8, 12],
                    "cache_dir": str(tmp_path / "cache"),
                    "download": {"samples_per_shard": 4, "thread_count": 4, "timeout": 2, "resize_mode": "no"},
                }
            ],
            "output": {"kind": "pair", "rejects": True, "sidecar_scores": ["similarity", "punsafe", "declared_width"]},
        }
        result = build(validate_recipe(recipe), tmp_path / "ds", workers=2, progress=False)
    m = result.manifest
    acc = m.accounting["sources"]["laion"]
    assert acc["input"] == 19
    expected = {**planted, "download_failed:http_404": 1, "resize_failed": 1}
    assert acc["dropped"] == dict(sorted(expected.items()))
    assert acc["output"] == 10 == m.totals["samples"]
    records = list(iter_dataset(tmp_path / "ds"))
    ranks = [r.meta["rank"] for r in records]
    assert ranks == sorted(ranks)
    assert all(r.image[:3] == b"\xff\xd8\xff" and r.meta["url"].startswith("http://127.0.0.1") for r in records)
    assert verify_dataset(tmp_path / "ds").ok
    # similarity etc. reach the sidecars; subsets are nested prefixes with their own wids index
    scores = pq.read_table(tmp_path / "ds" / m.shards[0].sidecar).column("scores").to_pylist()
    assert all(dict(s)["similarity"] > 0.3 and "declared_width" in dict(s) for s in scores)
    subsets = m.subsets
    assert list(subsets) == ["laion-4", "laion-8", "laion-12"]
    assert subsets["laion-4"]["shards"] == subsets["laion-8"]["shards"][: len(subsets["laion-4"]["shards"])]
    assert subsets["laion-12"]["samples"] == 10 and subsets["laion-12"]["shards"] == [s.name for s in m.shards]
    import wids

    ds = wids.ShardListDataset(str(tmp_path / "ds" / subsets["laion-8"]["wids_index"]), cache_dir=str(tmp_path / "wc"))
    assert len(ds) == subsets["laion-8"]["samples"]
    first_keys = [r.key for r in records][: subsets["laion-4"]["samples"]]
    assert [ds[i]["__key__"] for i in range(len(first_keys))] == first_keys


def _cli_args(tmp_path, out: str) -> list[str]:
    return [
        *CLI,
        "build",
        "laion_subsets",
        "--out",
        str(tmp_path / out),
        "-q",
        "--set",
        f"sources.laion.path={tmp_path / 'meta'}",
        "--set",
        "sources.laion.sizes=[8, 16]",
        "--set",
        f"sources.laion.cache_dir={tmp_path / 'cache'}",
        "--set",
        "sources.laion.download.samples_per_shard=8",
        "--set",
        "sources.laion.download.timeout=2",
        "--set",
        "sources.laion.download.thread_count=8",
        "--set",
        "sources.laion.download.resize_mode=no",
    ]


@pytest.mark.slow
def test_builtin_recipe_via_cli_with_optout_timeouts_and_cached_downloads(tmp_path):
    hits: Counter = Counter()
    write_images(tmp_path / "www", 16)
    with image_server(tmp_path / "www", hits) as base:
        planted = write_metadata(tmp_path / "meta", base, 16, special={9: "slow", 10: "optout"})
        (tmp_path / "www" / "5.jpg").unlink()
        (tmp_path / "www" / "7.jpg").write_bytes((tmp_path / "www" / "page.jpg").read_bytes())
        first = subprocess.run(_cli_args(tmp_path, "ds"), capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        fetched = sum(hits.values())
        # the same build elsewhere reuses every finished download (no request at all) and is byte-identical
        again = subprocess.run(_cli_args(tmp_path, "ds2"), capture_output=True, text=True)
        assert again.returncode == 0 and sum(hits.values()) == fetched
        # a download partition that was lost is fetched again, and only it
        shutil.rmtree(next((tmp_path / "cache" / "laion-download").iterdir()) / "00001")
        third = subprocess.run(_cli_args(tmp_path, "ds3"), capture_output=True, text=True)
        assert third.returncode == 0, third.stderr
    assert 0 < sum(hits.values()) - fetched <= 8
    acc = read_manifest(tmp_path / "ds").accounting["sources"]["laion"]
    expected = {
        **planted,
        "download_failed:http_404": 1,
        "resize_failed": 1,
        "download_failed:timeout": 1,
        "download_failed:opted_out": 1,
    }
    assert acc["dropped"] == dict(sorted(expected.items())) and acc["input"] == 16 + 7
    assert acc["output"] == 12
    digest = {p.name: p.read_bytes() for p in (tmp_path / "ds").glob("*.tar")}
    assert digest == {p.name: p.read_bytes() for p in (tmp_path / "ds2").glob("*.tar")}
    assert digest == {p.name: p.read_bytes() for p in (tmp_path / "ds3").glob("*.tar")}


def test_language_and_aesthetic_filters_on_the_multi_and_aesthetic_layouts(tmp_path):
    import pyarrow as pa

    (tmp_path / "meta").mkdir()
    pq.write_table(
        pa.table(
            {
                "URL": [f"http://h/{i}.jpg" for i in range(6)],
                "TEXT": [f"caption number {i}" for i in range(6)],
                "WIDTH": [300] * 6,
                "HEIGHT": [300] * 6,
                "similarity": [0.35] * 6,
                "LANGUAGE": ["en", "de", "en", "fr", "en", None],
                "AESTHETIC_SCORE": [6.0, 6.0, 4.0, 6.0, 5.5, 6.0],
            }
        ),
        tmp_path / "meta" / "part-00000.parquet",
    )
    filters = LaionFilters(languages=["en"], min_aesthetic=5.0)
    sel = select_metadata(sorted((tmp_path / "meta").glob("*.parquet")), filters, 10, 0, tmp_path / "s" / "x.parquet")
    assert (
        sel.dropped == {"language": 3, "low_aesthetic": 1}
        and sel.selected == 2
        and sel.skipped_filters == ["nsfw_tags", "max_punsafe", "max_pwatermark"]
    )
