"""Model steps on a real Ray cluster: on a cluster without GPUs a model on ``device: auto`` runs on CPU; with
a node that declares a GPU, the partition tasks ask for it and all land there (Ray hands each its GPU through
``CUDA_VISIBLE_DEVICES``; the GPU is declared, not real, so torch still runs on CPU), and the shards are
byte-identical to a local build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.build.runner import build
from curation.recipe import validate_recipe
from tests.builds import tree_digest
from tests.model_data import make_models, make_pair_inputs, pairs_recipe

ray = pytest.importorskip("ray", reason="ray is not installed (the optional `ray` extra)")
pytest.importorskip("torch")

from tests.ray_cluster import start_cluster  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(workers=0)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("ray-models")
    monkeypatch_module.setenv("VLM_CURATION_CACHE", str(root / "cache"))
    inputs = make_pair_inputs(root / "in", n=40, n_copies=4, n_contaminated=2)
    recipe = pairs_recipe(inputs, make_models(root / "models"))
    recipe["steps"] = [recipe["steps"][0], *recipe["steps"][4:]]  # embed sscd, semantic_dedup, decontaminate
    recipe["models"] = {"sscd": recipe["models"]["sscd"]}
    return recipe


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _partitions(out: Path) -> list[dict]:
    return json.loads(max((out / "_logs").glob("build-*.json")).read_text())["partitions"]


def test_model_partitions_run_on_cpu_then_on_the_gpu_node(cluster, recipe, tmp_path):
    local = tmp_path / "local"
    build(validate_recipe(recipe), local, progress=False)

    cpu_only = tmp_path / "cpu-only"  # no node has a GPU: device auto asks for none
    build(validate_recipe(recipe), cpu_only, executor="ray", address=cluster.address, progress=False)
    assert tree_digest(cpu_only) == tree_digest(local)
    assert all("gpus" not in p for p in _partitions(cpu_only))

    cluster.add_worker(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        gpu_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("GPU")}
    finally:
        ray.shutdown()
    assert len(gpu_nodes) == 1
    on_gpu = tmp_path / "gpu"
    build(validate_recipe(recipe), on_gpu, executor="ray", address=cluster.address, progress=False)
    placed = _partitions(on_gpu)
    assert len(placed) == 3  # 44 rows in partitions of 20
    assert {p["ray_node"] for p in placed} == gpu_nodes
    assert {p["gpus"] for p in placed} == {"0"}
    assert tree_digest(on_gpu) == tree_digest(local)
