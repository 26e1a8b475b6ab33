"""The step contract: every step config of the recipe format has exactly one step class, each class declares
its drop reasons, and the runner finds steps by their config class (no names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from curation.recipe import GlobalStepBase, Step, StepBase
from curation.sample import Sample
from curation.steps import GlobalStep, RecordStep, StepContext, build_steps, step_class
from curation.steps.contract import registered_steps

CONFIGS = get_args(get_args(Step)[0])


def test_every_step_config_has_one_class_and_every_class_a_config():
    registered = registered_steps()
    assert set(registered) == set(CONFIGS)
    for config, cls in registered.items():
        assert cls.config is config
        assert issubclass(cls, GlobalStep) == issubclass(config, GlobalStepBase), cls


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_step_declares_its_drop_reasons(config: type):
    reasons = step_class_of(config).drop_reasons
    if config.__name__ == "PairToSftStep":  # a conversion drops nothing
        assert reasons == {}
        return
    assert reasons and all(isinstance(v, str) and v for v in reasons.values())


def step_class_of(config: type) -> type:
    return registered_steps()[config]


def test_a_class_whose_config_disagrees_on_being_global_is_refused():
    class LoneConfig(StepBase):
        pass

    with pytest.raises(TypeError, match="disagree on being a global step"):

        class Wrong(GlobalStep):
            config = LoneConfig

            @classmethod
            def find(cls, cfg: Any, label: str, sidecars: Any, already: Any, context: Any) -> Any:
                return {}, {}


def test_a_config_implemented_twice_is_refused():
    from curation.recipe import ImageDecodeStep

    with pytest.raises(TypeError, match="implemented twice"):

        class Again(RecordStep):
            config = ImageDecodeStep

            def __call__(self, sample: Sample) -> Sample | str:
                return sample


def test_build_steps_gives_record_steps_in_order_with_their_context(tmp_path: Path):
    from curation.recipe import validate_recipe

    recipe = validate_recipe(
        {
            "kind": "build",
            "name": "r",
            "sources": [{"name": "s", "reader": "jsonl", "path": "x.jsonl", "record": "pair"}],
            "steps": [
                {"step": "text_length"},
                {"step": "image_decode"},
                {"step": "text_length", "min_words": 2},
                {"step": "exact_image_dedup"},
            ],
            "output": {"kind": "pair"},
        },
        "t",
    )
    steps = build_steps(recipe.steps, tmp_path)
    assert [label for label, _ in steps] == ["text_length#1", "image_decode", "text_length#2"]
    assert all(isinstance(s, RecordStep) and s.context == StepContext(label, tmp_path) for label, s in steps)
    assert step_class(recipe.steps[3]).__name__ == "ExactImageDedup"
