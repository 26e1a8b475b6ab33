"""The contamination check of selection trials on real builds: benchmark images found in a training shard, the
sidecar's recorded hashes used instead of decoding, findings cached per shard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import SelectionRecipe, validate_recipe
from curation.selection import contamination
from curation.selection.contamination import ContaminationCheck
from curation.selection.toy import _build_recipe, _qa, _write_set
from shards import read_manifest


def _dataset(root: Path, name: str, n: int, seed: int, hashes: list[str]) -> Path:
    jsonl = _write_set(root, name, n, seed, lambda c, s, f, i: _qa(f"Tell me about picture {i} please", c, f, i))
    recipe = _build_recipe(name, jsonl)
    recipe["output"]["image_hashes"] = hashes
    out = root / "built" / name
    build(validate_recipe(recipe), out, progress=False)
    return out


def _selection(root: Path, train: Path, bench: Path, action: str = "flag") -> SelectionRecipe:
    comp = {"name": "train", "dataset": "train", "target": {"epochs": 1}}
    recipe = validate_recipe(
        {
            "kind": "selection",
            "name": "gate",
            "datasets": {"train": {"path": str(train)}},
            "baseline": {"components": [comp]},
            "categories": [{"name": "c", "candidates": [{"name": "x", "components": [comp]}]}],
            "trainer": {"type": "command", "command": ["true"]},
            "evaluator": {"type": "builtin", "benchmarks": [{"name": "bench", "shards": str(bench)}]},
            "score": {"metrics": {"bench/accuracy": 1.0}},
            "contamination": {"action": action, "match": "image", "max_distance": 0},
        }
    )
    assert isinstance(recipe, SelectionRecipe)
    return recipe


def _mixture(path: Path, dataset: Path) -> Path:
    tars, keys = [], []
    for shard in read_manifest(dataset).shards:
        table = pq.read_table(dataset / shard.name.replace(".tar", ".parquet"), columns=["key"])
        tars += [str(dataset / shard.name)] * table.num_rows
        keys += table.column("key").to_pylist()
    pq.write_table(pa.table({"tar": tars, "key": keys}), path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    bench = _dataset(root, "bench", 6, seed=7, hashes=[])
    hashed = _dataset(root, "hashed", 6, seed=7, hashes=["phash"])  # the same images: seed 7 again
    plain = _dataset(root, "plain", 6, seed=7, hashes=[])
    return {"root": root, "bench": bench, "hashed": hashed, "plain": plain}


def test_benchmark_images_in_the_training_data_are_found(world: dict[str, Path], tmp_path: Path) -> None:
    check = ContaminationCheck(_selection(tmp_path, world["plain"], world["bench"]), tmp_path / "sweep")
    trial = tmp_path / "trial"
    trial.mkdir()
    finding = check.check_trial(trial, _mixture(tmp_path / "m.parquet", world["plain"]), "c/x")
    assert finding["checked"] and finding["samples"] == finding["of"] == 6
    assert finding["by_benchmark"] == {"bench": 6}
    assert {e["reason"] for e in finding["examples"]} == {"contaminated_image:bench"}
    assert (trial / contamination.FINDING_NAME).is_file()
    assert len(list((tmp_path / "sweep" / "contamination").glob("*.json"))) == 1  # one shard, cached


def test_hashes_the_sidecar_holds_are_used_without_decoding(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = ContaminationCheck(_selection(tmp_path, world["hashed"], world["bench"]), tmp_path / "sweep")

    def no_decoding(*args: object) -> int:
        raise AssertionError("an image was decoded although its sidecar holds its hash")

    monkeypatch.setattr("curation.dedup.hashing.image_hash", no_decoding)
    trial = tmp_path / "trial"
    trial.mkdir()
    finding = check.check_trial(trial, _mixture(tmp_path / "m.parquet", world["hashed"]), "c/x")
    assert finding["samples"] == 6


def test_refuse_names_the_overlap(world: dict[str, Path], tmp_path: Path) -> None:
    check = ContaminationCheck(_selection(tmp_path, world["plain"], world["bench"], "refuse"), tmp_path / "sweep")
    trial = tmp_path / "trial"
    trial.mkdir()
    with pytest.raises(CurationError, match=r"trial c/x: 6 training samples overlap .*6 with bench.*refuse"):
        check.check_trial(trial, _mixture(tmp_path / "m.parquet", world["plain"]), "c/x")


def test_a_finding_made_under_other_settings_is_not_trusted(world: dict[str, Path], tmp_path: Path) -> None:
    trial = tmp_path / "trial"
    trial.mkdir()
    mixture = _mixture(tmp_path / "m.parquet", world["plain"])
    off = ContaminationCheck(_selection(tmp_path, world["plain"], world["bench"], "off"), tmp_path / "sweep")
    assert off.check_trial(trial, mixture, "c/x")["checked"] is False
    refuse = ContaminationCheck(_selection(tmp_path, world["plain"], world["bench"], "refuse"), tmp_path / "sweep")
    with pytest.raises(CurationError, match="6 training samples overlap"):  # checked afresh, not read back
        refuse.check_trial(trial, mixture, "c/x")
    (trial / contamination.FINDING_NAME).write_text("[1, 2]")  # damaged: checked afresh too
    flag = ContaminationCheck(_selection(tmp_path, world["plain"], world["bench"]), tmp_path / "sweep")
    assert flag.check_trial(trial, mixture, "c/x")["samples"] == 6


def test_a_sample_matching_two_benchmarks_counts_for_both(world: dict[str, Path], tmp_path: Path) -> None:
    recipe = _selection(tmp_path, world["plain"], world["bench"])
    recipe.evaluator.benchmarks.append(recipe.evaluator.benchmarks[0].model_copy(update={"name": "again"}))
    check = ContaminationCheck(recipe, tmp_path / "sweep")
    trial = tmp_path / "trial"
    trial.mkdir()
    finding = check.check_trial(trial, _mixture(tmp_path / "m.parquet", world["plain"]), "c/x")
    assert finding["samples"] == 6 and finding["by_benchmark"] == {"again": 6, "bench": 6}
    assert finding["examples"][0]["reason"] == "contaminated_image:bench, contaminated_image:again"
