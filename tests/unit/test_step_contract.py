"""The step contract: every step config of the recipe format has exactly one step class, each class declares
its drop reasons, and the runner finds steps by their config class (no names)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, get_args

import pytest

from curation.recipe import GlobalStepBase, Step, StepBase
from curation.sample import Sample
from curation.steps import BatchedStep, GlobalStep, RecordStep, StepContext, build_steps, step_class
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
            def find(cls, cfg: Any, label: str, sidecars: Any, already: Any, work: Path) -> Any:
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


class _Batched(BatchedStep):
    calls: ClassVar[list[int]] = []

    def process_batch(self, samples: list[Sample]) -> list[Sample | str]:
        self.calls.append(len(samples))
        return ["odd" if int(s.origin) % 2 else s for s in samples]


def test_a_batched_step_keeps_the_order_and_the_partition_gathers_full_batches():
    from curation.accounting import Accounting
    from curation.partition import _Pipeline
    from tests.helpers import sft_record

    step = _Batched(None, StepContext("b", Path(".")))
    step.batch_size = 3
    written: list[str] = []
    dropped: list[str] = []

    class Writer:
        def write(self, record: Any, infos: Any, origin: str, hashes: Any) -> tuple[str, int]:
            written.append(origin)
            return ("000000", len(written) - 1)

    class Features:
        hashes: ClassVar[list[str]] = []

        class minhash:
            @staticmethod
            def add(record: Any, where: Any) -> None:
                return None

    acc = Accounting(["probe", "b", "write"])

    def drop(label: str, d: Any) -> None:
        acc.drop(label, d.source, d.reason)
        dropped.append(d.origin)

    pipeline = _Pipeline("s", [("b", step)], acc, Writer(), "sft", drop, Features)
    for i in range(7):
        pipeline.feed(Sample(sft_record(i, n_images=0), str(i)))
    pipeline.finish()
    assert _Batched.calls == [3, 3, 1]  # full batches, then what is left at the end of the partition
    assert written == ["0", "2", "4", "6"] and dropped == ["1", "3", "5"]
    assert acc.check() == []
