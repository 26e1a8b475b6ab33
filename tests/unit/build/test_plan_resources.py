"""What a partition task asks of its machine: the record steps' declared resources, joined."""

from __future__ import annotations

import pytest

from curation.build.plan import partition_resources
from curation.recipe import load_recipe
from curation.steps.contract import Resources

TRANSFORMERS = "{type: transformers, model: /models/phi, device: %s}"


@pytest.mark.parametrize(
    ("engine", "gpus"),
    [
        ("{type: vllm, model: /models/phi, tensor_parallel_size: 2}", 2.0),
        (TRANSFORMERS % "cuda", 1.0),
        (TRANSFORMERS % "cuda:1", 1.0),
        (TRANSFORMERS % "cpu", 0.0),
        (TRANSFORMERS % "auto", 0.0),  # a GPU only where one happens to be visible: none is asked for
        ("{type: openai, base_url: 'http://127.0.0.1:1/v1', model: phi}", 0.0),  # the model runs elsewhere
    ],
)
def test_a_local_model_asks_for_its_gpus(engine: str, gpus: float):
    recipe = load_recipe("docmatix", [f"steps.0.engine={engine}"])
    assert partition_resources(recipe) == Resources(cpus=1.0, gpus=gpus)


def test_plain_steps_ask_for_one_cpu_and_global_steps_ask_for_nothing():
    assert partition_resources(load_recipe("demo")) == Resources()  # its global steps run in the driver


def test_joined_resources_are_enough_for_both():
    assert Resources(2, 0).joined(Resources(1, 1)) == Resources(2, 1)


def test_a_model_on_auto_asks_for_a_gpu_it_can_do_without():
    auto = Resources(gpus=0.5, gpu_optional=True)
    assert Resources().joined(auto) == auto
    assert auto.joined(Resources(gpus=1.0)) == Resources(gpus=1.0)  # another step needs one for sure
    assert auto.without_gpus() == Resources()
