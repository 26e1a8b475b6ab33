"""Model steps end to end: embed, clip_score (+ keep_top), embedding_classifier, semantic_dedup and
embedding_decontaminate over image-text pairs with planted transformed copies and benchmark leaks, with tiny
models built offline (a random CLIP and SigLIP, a TorchScript downsample embedder under which altered copies
stay close)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import shards
from curation.build.runner import build
from curation.errors import CurationError
from curation.recipe import validate_recipe
from shards import read_manifest, verify_dataset
from shards.embeddings import EmbeddingsError
from tests.builds import CLI, tree_digest
from tests.model_data import PairInputs, TinyModels, make_models, make_pair_inputs, pairs_recipe

pytest.importorskip("torch")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> TinyModels:
    return make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> PairInputs:
    return make_pair_inputs(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """Every build of this module shares one embedding cache, outside the default user cache."""
    old = os.environ.get("VLM_CURATION_CACHE")
    os.environ["VLM_CURATION_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield os.environ["VLM_CURATION_CACHE"]
    if old is None:
        os.environ.pop("VLM_CURATION_CACHE", None)
    else:
        os.environ["VLM_CURATION_CACHE"] = old


@pytest.fixture(scope="module")
def reference(inputs, models, cache_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    build(validate_recipe(pairs_recipe(inputs, models)), out, progress=False)
    return out


def _rejects(out: Path) -> dict[str, tuple[str, str]]:
    rows = []
    for path in sorted((out / "rejects").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return {r["sample_key"]: (r["reason"], r["detail"]) for r in rows}


def _log(out: Path) -> dict:
    return json.loads(sorted((out / "_logs").glob("build-*.json"))[-1].read_text())


def test_planted_copies_and_benchmark_leaks_are_found_exactly(reference, inputs):
    rejects = _rejects(reference)
    dups = {k: detail for k, (reason, detail) in rejects.items() if reason == "semantic_duplicate"}
    assert set(dups) == set(inputs.copies)
    for copy, original in inputs.copies.items():
        assert f" with {original} (" in dups[copy]  # duplicate_of names the kept original
    leaks = {k for k, (reason, _) in rejects.items() if reason == "contaminated_image_embedding:bench"}
    assert leaks == inputs.contaminated
    assert verify_dataset(reference).ok


def test_embeddings_are_stored_per_shard_aligned_with_the_samples(reference, inputs):
    manifest = read_manifest(reference)
    kept = [k for s in manifest.shards for k in pq.read_table(reference / s.sidecar).column("key").to_pylist()]
    image = shards.embeddings(reference, "sscd.image")
    assert image.vectors.dtype == np.float16 and image.vectors.shape == (len(kept), 64)
    assert image.keys == kept
    text = shards.embeddings(reference, "clip.text")
    assert text.keys == kept and text.per == "sample"
    # each row is the embedding of that sample's own image: recompute two of them with the model
    from curation.models import ModelSpec, load_embedder

    embedder = load_embedder(
        ModelSpec(
            str(Path(read_manifest(reference).recipe["models"]["sscd"]["path"])), kind="torchscript", image_size=64
        )
    )
    for i in (0, len(kept) - 1):
        data = (inputs.images / f"{kept[i]}.jpg").read_bytes()
        fresh = embedder.embed_images([data]).vectors[0].astype(np.float16)
        assert np.array_equal(fresh, image.vectors[i])
    with pytest.raises(EmbeddingsError, match=r"no embeddings named 'nope\.image'"):
        shards.embeddings(reference, "nope.image")


def test_scores_are_in_the_sidecar_for_every_sample(reference):
    for shard in read_manifest(reference).shards:
        for scores in pq.read_table(reference / shard.sidecar).column("scores").to_pylist():
            names = dict(scores)
            assert set(names) == {"clip_score", "aesthetic"}
            assert -1.0 <= names["clip_score"] <= 1.0


def test_a_rebuild_over_the_same_images_asks_the_models_nothing(reference, inputs, models, tmp_path):
    out = tmp_path / "again"
    build(validate_recipe(pairs_recipe(inputs, models)), out, progress=False)
    steps = _log(out)["steps"]
    for label in ("embed", "embed_clip", "clip_score", "embedding_classifier"):
        assert steps[label]["images_embedded"] == 0 and steps[label]["texts_embedded"] == 0, label
    assert steps["embed"]["images_cached"] > 0
    assert tree_digest(out) == tree_digest(reference)


def test_without_the_cache_the_same_shards_are_computed_again(reference, inputs, models, tmp_path):
    recipe = pairs_recipe(inputs, models)
    for model in recipe["models"].values():
        model["cache"] = False
    out = tmp_path / "nocache"
    build(validate_recipe(recipe), out, progress=False)
    assert _log(out)["steps"]["embed"]["images_embedded"] == len(inputs.copies) + 60
    digest, expected = tree_digest(out), tree_digest(reference)
    assert digest.pop("dataset.json") != expected.pop("dataset.json")  # it shows the recipe as written
    assert digest == expected
    assert read_manifest(out).recipe_sha256 == read_manifest(reference).recipe_sha256  # cache: not identity


# mid-partition (some vectors cached, the rest computed again) and mid-commit (a rewritten shard's embeddings)
@pytest.mark.parametrize("point", ["record:30", "rewrite_tar_written:1"])
def test_a_killed_build_resumes_byte_identical(point, reference, inputs, models, cache_env, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(pairs_recipe(inputs, models)))
    out = tmp_path / "out"
    env = {**os.environ, "VLM_CURATION_CRASH_AT": point}
    killed = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = subprocess.run([*CLI, "build", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == tree_digest(reference)


def test_keep_top_fraction_keeps_the_best_scoring_share_of_each_source(reference, inputs, models, tmp_path):
    recipe = pairs_recipe(inputs, models)
    recipe["steps"] = [{"step": "clip_score", "model": "clip", "keep_top_fraction": 0.3}]
    out = tmp_path / "top"
    build(validate_recipe(recipe), out, progress=False)
    scored = _all_scores(reference, "clip_score") | {k: s for k, (_, s) in _rejected_scores(reference).items()}
    kept = _all_scores(out, "clip_score")
    n = len(inputs.copies) + 60
    assert len(kept) == math.ceil(0.3 * n)
    order = sorted(scored, key=lambda k: -scored[k])
    assert min(kept.values()) >= scored[order[len(kept) - 1]]
    assert _rejects(out)[order[-1]][0] == "below_top_fraction"
    dumped = read_manifest(out).recipe["steps"]
    assert [s["step"] for s in dumped] == ["clip_score", "keep_top"] and dumped[0]["keep_top_fraction"] is None


def _all_scores(out: Path, name: str) -> dict[str, float]:
    found = {}
    for shard in read_manifest(out).shards:
        table = pq.read_table(out / shard.sidecar, columns=["key", "scores"]).to_pylist()
        found |= {row["key"]: dict(row["scores"])[name] for row in table}
    return found


def _rejected_scores(out: Path) -> dict[str, tuple[str, float]]:
    """Scores of the samples the reference build dropped after scoring (read from their rejects records)."""
    from shards.reader import iter_shard

    found = {}
    for tar in sorted((out / "rejects").glob("*.tar")):
        table = pq.read_table(tar.with_suffix(".parquet"), columns=["key", "sample_key"]).to_pylist()
        sample_key = {row["key"]: row["sample_key"] for row in table}
        for record in iter_shard(tar):
            if "clip_score" in record.meta:
                found[sample_key[record.key]] = ("rejected", float(record.meta["clip_score"]))
    return found


def test_min_score_and_classifier_bounds_drop_with_their_reasons(reference, inputs, models, tmp_path):
    scores = _all_scores(reference, "clip_score")
    aesthetic = _all_scores(reference, "aesthetic")
    cut = float(np.median(list(scores.values())))
    high = float(np.quantile(list(aesthetic.values()), 0.8))
    recipe = pairs_recipe(inputs, models)
    recipe["steps"] = [
        {"step": "clip_score", "model": "clip", "min_score": cut},
        {**recipe["steps"][3], "max": high},
    ]
    out = tmp_path / "bounds"
    build(validate_recipe(recipe), out, progress=False)
    reasons = {k: r for k, (r, _) in _rejects(out).items()}
    assert {k for k, r in reasons.items() if r == "clip_score_below_min"} >= {k for k, s in scores.items() if s < cut}
    assert all(s >= cut for s in _all_scores(out, "clip_score").values())
    assert all(s <= high for s in _all_scores(out, "aesthetic").values())
    assert "classifier_score_above_max" in reasons.values()


def test_siglip_scores_pairs_too(inputs, tmp_path, cache_env):
    from curation.models.tiny import make_tiny_siglip

    siglip = make_tiny_siglip(tmp_path / "siglip")
    recipe = pairs_recipe(inputs, make_models(tmp_path / "m"))
    recipe["models"] = {"siglip": {"path": str(siglip), "batch_size": 8}}
    recipe["steps"] = [{"step": "clip_score", "model": "siglip", "score": "siglip_score"}]
    out = tmp_path / "siglip-out"
    build(validate_recipe(recipe), out, progress=False)
    assert len(_all_scores(out, "siglip_score")) == 60 + len(inputs.copies)


def test_an_image_the_model_cannot_read_is_a_recorded_drop(models, tmp_path, cache_env):
    inputs = make_pair_inputs(tmp_path / "in", n=10, n_copies=0, n_contaminated=1)
    good = (inputs.images / "p0003.jpg").read_bytes()
    (inputs.images / "p0003.jpg").write_bytes(good[: len(good) // 2])  # the header probes, the pixels do not decode
    recipe = pairs_recipe(inputs, models)
    recipe["steps"] = [{"step": "embed", "model": "sscd"}]
    out = tmp_path / "out"
    build(validate_recipe(recipe), out, progress=False)
    assert _rejects(out)["p0003"][0] == "model_image_unreadable"
    assert read_manifest(out).totals["samples"] == 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, d: {"path": str(d / "missing")}, "does not exist"),
        (lambda m, d: {"path": str(m.head), "kind": "torchscript", "image_size": 32}, "TorchScript"),
        (lambda m, d: {"path": str(m.sscd), "kind": "clip"}, "clip"),
    ],
)
def test_a_bad_model_is_one_clear_error_before_anything_is_written(change, message, inputs, models, tmp_path):
    recipe = pairs_recipe(inputs, models)
    recipe["models"]["sscd"] = change(models, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(CurationError, match=message):
        build(validate_recipe(recipe), out, progress=False)
    assert not (out / "dataset.json").exists()


def test_the_cli_reports_a_missing_model_in_one_line(inputs, models, tmp_path):
    recipe = pairs_recipe(inputs, models)
    recipe["models"]["clip"]["path"] = str(tmp_path / "no-such-model")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = subprocess.run([*CLI, "build", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "no-such-model" in done.stderr


def test_changed_model_weights_are_changed_inputs(inputs, tmp_path, cache_env):
    """The model's fingerprint is in the build plan: new weights at the same path are not the finished build."""
    from curation.models.tiny import make_downsample_embedder

    models = make_models(tmp_path / "m")
    recipe = validate_recipe({**pairs_recipe(inputs, models), "steps": [{"step": "embed", "model": "sscd"}]})
    build(recipe, tmp_path / "out", progress=False)
    make_downsample_embedder(models.sscd, grid=4)  # other weights, same file name
    with pytest.raises(CurationError, match="inputs have changed"):
        build(recipe, tmp_path / "out", progress=False)


def test_overwrite_replaces_a_build_with_embeddings(reference, inputs, models, tmp_path):
    """Embedding files are the build's own: --overwrite removes them with the shards."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(pairs_recipe(inputs, models)))
    out = tmp_path / "out"
    build(validate_recipe(pairs_recipe(inputs, models)), out, progress=False)
    cmd = [*CLI, "build", str(recipe), "--out", str(out), "-q", "--overwrite"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tree_digest(out) == tree_digest(reference)


def test_pair_to_sft_after_embed_keeps_the_embeddings(inputs, models, tmp_path, cache_env):
    recipe = pairs_recipe(inputs, models)
    recipe["steps"] = [recipe["steps"][0], {"step": "pair_to_sft"}, recipe["steps"][4]]
    recipe["output"]["kind"] = "sft"
    out = tmp_path / "sft"
    build(validate_recipe(recipe), out, progress=False)
    assert {k for k, (r, _) in _rejects(out).items() if r == "semantic_duplicate"} == set(inputs.copies)
    assert shards.embeddings(out, "sscd.image").vectors.shape[0] == read_manifest(out).totals["samples"]
