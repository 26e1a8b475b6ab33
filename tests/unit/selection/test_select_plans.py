"""Ablation plans: the real plan files parse exactly, every malformed block is a one-line PlanError, a sweep
spec maps parts onto a base config and expands them into variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.errors import CurationError, RecipeError
from curation.selection.plans import (
    Ablation,
    PlanError,
    SweepSpec,
    Variant,
    expand,
    load_plan,
    load_spec,
    metric_keys,
    parse_plan,
    parse_value,
    unablated,
    unmapped_metrics,
    validate_spec,
)

PAPERS = Path(__file__).parents[2] / "fixtures" / "ablation_plans"  # three real ablation plans


def _real(name: str) -> list[Ablation]:
    path = PAPERS / f"ablation-plan-{name}.md"
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return load_plan(path)


# ---- the three real plans ----------------------------------------------------------------------------
def test_adaptive_vision_encoders_plan() -> None:
    assert _real("adaptive-vision-encoders") == [
        Ablation(
            "Ablation A", "Rank of low-rank updates", "REPLACE", ["8", "16", "32", "64", "128", "256"], ["accuracy"]
        ),
        Ablation("Ablation B", "Number of attention heads", "REPLACE", ["1", "2", "4", "8"], ["accuracy"]),
    ]


def test_align_vl_plan() -> None:
    metrics = ["R@1", "R@5", "R@10"]
    assert _real("align-vl") == [
        Ablation(
            "Ablation Study 1", "Random Perturbation noise level", "REPLACE", ["0.01", "0.05", "0.1", "0.5"], metrics
        ),
        Ablation("Ablation Study 2", "Embedding Smoothing parameter", "REPLACE", ["0.1", "0.2", "0.5", "0.8"], metrics),
    ]


def test_vlm_pretraining_plan() -> None:
    metrics = ["VQA-v2", "GQA", "TextVQA"]
    assert _real("vlm-pretraining-with-image-data") == [
        Ablation("Ablation A", "image encoder", "REPLACE", ["ViT", "ResNet"], metrics),
        Ablation("Ablation B", "sequence length", "REPLACE", ["512", "2048"], metrics),
    ]


# ---- formatting variations -----------------------------------------------------------------------------
WRAPPED = """<div class="trajectory-box">
<h2>ðŸ§  Reasoning Trace</h2>
### Not a block: the reasoning trace comes before the plan
</div>
<div class="trajectory-box">
<h2>ðŸ“‹ Ablation Plan</h2>

### Ablation 1: rank ###
- **Ablated Part:** LoRA rank
- **Action**: replace
- **Rationale**: ignored, and so are its items
  - 999
- **Replacement**: 4, 8
  - 16
  1. `32`
- **Metrics**:
  - R@1, R@5
  - R@1

## Ablation 2
* Ablated Part: image encoder
* Action: REPLACE
* Replacements: ViT-L/14
* Metric: accuracy
</div>
### After the plan: ignored
"""


def test_variations_inline_values_numbered_items_plain_fields_and_trailing_hashes() -> None:
    assert parse_plan(WRAPPED.replace("\n", "\r\n")) == [
        Ablation("Ablation 1: rank", "LoRA rank", "REPLACE", ["4", "8", "16", "32"], ["R@1", "R@5"]),
        Ablation("Ablation 2", "image encoder", "REPLACE", ["ViT-L/14"], ["accuracy"]),
    ]


def test_markdown_plan_header_and_blocks_named_plan() -> None:
    text = "## Reasoning\n### Thoughts\n## 📋 Ablation Plan\n" + BLOCK.replace("Ablation A", "Ablation plan A")
    assert [a.name for a in parse_plan(text)] == ["Ablation plan A"]


def test_mojibake_is_repaired_and_plain_markdown_needs_no_plan_header() -> None:
    text = "\ufeff### Ablation â€˜Aâ€™\n- **Ablated Part**: cafÃ© size\n- **Action**: REPLACE\n"
    text += "- **Replacement**: naïve\n- **Metrics**: accuracy\n"
    assert parse_plan(text) == [Ablation("Ablation ‘A’", "café size", "REPLACE", ["naïve"], ["accuracy"])]


# ---- plan errors ---------------------------------------------------------------------------------------
BLOCK = """### Ablation A
- **Ablated Part**: Rank
- **Action**: REPLACE
- **Replacement**:
  - 8
- **Metrics**: accuracy
"""


def _plan_error(text: str) -> str:
    with pytest.raises(PlanError) as exc:
        parse_plan(text, source="p.md")
    assert isinstance(exc.value, CurationError)
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("- **Metrics**: accuracy\n", "", "p.md: ablation 'Ablation A' (line 1): missing 'Metrics'"),
        ("- **Action**: REPLACE\n", "", "missing 'Action'"),
        ("- **Ablated Part**: Rank\n", "- **Ablated Prat**: Rank\n", "missing 'Ablated Part'"),
        ("- **Replacement**:\n  - 8\n", "", "missing 'Replacement'"),
        ("REPLACE", "REMOVE", "action 'REMOVE' is not supported; only REPLACE is"),
        ("REPLACE", "", "'Action' needs one value, got nothing"),
        ("**: Rank", "**:", "'Ablated Part' needs one value, got nothing"),
        ("  - 8\n", "", "'Replacement' lists no values"),
        ("  - 8\n", "  - 8\n  - 8\n", "replacement '8' is listed twice"),
        (": accuracy", ": ", "'Metrics' lists no metrics"),
        ("- **Metrics**: accuracy\n", "- **Metrics**: a\n- **Metrics**: b\n", "field 'Metrics' is given twice"),
        ("### Ablation A", "### ", "p.md: line 1: a block heading with no name"),
    ],
)
def test_block_errors(old: str, new: str, expected: str) -> None:
    assert expected in _plan_error(BLOCK.replace(old, new))


def test_no_blocks_and_repeated_names() -> None:
    assert _plan_error("# Title\nsome prose\n").startswith("p.md: no ablation blocks found")
    assert _plan_error("<h2>Ablation Plan</h2>\n</div>\n" + BLOCK).startswith("p.md: no ablation blocks found")
    message = _plan_error(BLOCK + "\n" + BLOCK)
    assert message == "p.md: ablation 'Ablation A' (line 8): another block (line 1) has the same name"


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read the plan"):
        load_plan(tmp_path / "nope.md")


# ---- values ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0.05", 0.05),
        ("8", 8),
        (" 256 ", 256),
        ("1e-4", 1e-4),
        ("-.5", -0.5),
        ("010", 10),
        ("LoRA", "LoRA"),
        ("ViT-L/14", "ViT-L/14"),
        ("true", True),
        ("yes", "yes"),
        ("null", None),
        ('"8"', "8"),
        ("1:1", "1:1"),
        ("0x10", "0x10"),
        ("2024-01-01", "2024-01-01"),
        ("a: b", "a: b"),
        ("[1, 2]", "[1, 2]"),
        ("#3", "#3"),
        ("`x", "`x"),
    ],
)
def test_parse_value(text: str, value: object) -> None:
    parsed = parse_value(text)
    assert parsed == value
    assert type(parsed) is type(value)


# ---- spec + expansion --------------------------------------------------------------------------------
BASE = {
    "trainer": {"type": "reference", "model": "/m", "max_length": 1024, "peft": {"method": "lora", "r": 8}},
    "model": {"vision_encoder": "google/siglip-base-patch16-224"},
    "evaluator": {"benchmarks": [{"name": "vqa", "shards": "/b"}]},
}


def _spec(**changes: object) -> dict:
    data = {
        "name": "pretraining-ablations",
        "base": BASE,
        "parts": {
            "Image  Encoder": {
                "key": "model.vision_encoder",
                "values": {"ViT": "google/vit-base-patch16-224", "resnet": "microsoft/resnet-50"},
            },
            "sequence length": {"key": "trainer.max_length"},
        },
        "metrics": {"vqa-v2": "vqa/accuracy", "GQA": "gqa/accuracy"},
        "seeds": [0, 1],
    }
    data.update(changes)
    return data


def _with_key(config: dict, key: str, value: object) -> dict:
    import copy

    out = copy.deepcopy(config)
    *path, last = key.split(".")
    node = out
    for part in path:
        node = node[part]
    node[last] = value
    return out


def test_expand_every_part_of_a_real_plan() -> None:
    ablations = _real("vlm-pretraining-with-image-data")
    spec = validate_spec(_spec())
    variants = expand(spec, ablations)
    assert variants == [
        Variant(
            "Ablation A", "image encoder", "ViT", _with_key(BASE, "model.vision_encoder", "google/vit-base-patch16-224")
        ),
        Variant(
            "Ablation A", "image encoder", "ResNet", _with_key(BASE, "model.vision_encoder", "microsoft/resnet-50")
        ),
        Variant("Ablation B", "sequence length", "512", _with_key(BASE, "trainer.max_length", 512)),
        Variant("Ablation B", "sequence length", "2048", _with_key(BASE, "trainer.max_length", 2048)),
    ]
    variants[0].config["trainer"]["peft"]["r"] = 99
    assert spec.base == BASE and unablated(spec) == BASE
    unablated(spec)["trainer"]["max_length"] = 1
    assert spec.base["trainer"]["max_length"] == 1024
    assert spec.seeds == [0, 1]
    assert metric_keys(spec, ablations) == {"VQA-v2": "vqa/accuracy", "GQA": "gqa/accuracy"}
    assert unmapped_metrics(spec, ablations) == ["TextVQA"]


def test_expand_floats_list_indices_and_numeric_value_keys() -> None:
    ablations = _real("align-vl")
    base = {"trainer": {"noise": [0.0, {"std": 0.0}], "smoothing": 0.0}}
    spec = validate_spec(
        {
            "name": "align",
            "base": base,
            "parts": {
                "random perturbation noise level": {"key": "trainer.noise.1.std"},
                "Embedding Smoothing parameter": {"key": "trainer.smoothing", "values": {0.10: "tenth", "0.8": None}},
            },
            "metrics": {"R@1": "retrieval/r_at_1"},
        }
    )
    got = [(v.ablation, v.replacement, v.config) for v in expand(spec, ablations)]
    noise = [
        (t, {"trainer": {"noise": [0.0, {"std": float(t)}], "smoothing": 0.0}}) for t in ("0.01", "0.05", "0.1", "0.5")
    ]
    smooth = {"0.1": "tenth", "0.2": 0.2, "0.5": 0.5, "0.8": None}
    assert got == [("Ablation Study 1", t, c) for t, c in noise] + [
        ("Ablation Study 2", t, {"trainer": {"noise": [0.0, {"std": 0.0}], "smoothing": v}}) for t, v in smooth.items()
    ]
    assert spec.seeds == [0]
    assert unmapped_metrics(spec, ablations) == ["R@5", "R@10"]


def test_unmapped_part_suggests_the_closest() -> None:
    spec = validate_spec(
        {
            "name": "s",
            "base": {"trainer": {"peft": {"r": 8}}, "model": {"heads": 8}},
            "parts": {
                "Rank of low-rank updates": {"key": "trainer.peft.r"},
                "Number of attn heads": {"key": "model.heads"},
            },
        }
    )
    ablations = _real("adaptive-vision-encoders")
    with pytest.raises(PlanError) as exc:
        expand(spec, ablations)
    assert str(exc.value) == (
        "ablation 'Ablation B': ablated part 'Number of attention heads' is not mapped in the spec; "
        "mapped parts: 'Rank of low-rank updates', 'Number of attn heads'; did you mean 'Number of attn heads'?"
    )
    ablations[1].part = " number of ATTN  heads"
    variants = expand(spec, ablations)
    assert [v.config for v in variants[:6]] == [
        {"trainer": {"peft": {"r": r}}, "model": {"heads": 8}} for r in (8, 16, 32, 64, 128, 256)
    ]
    assert [v.config for v in variants[6:]] == [
        {"trainer": {"peft": {"r": 8}}, "model": {"heads": h}} for h in (1, 2, 4, 8)
    ]
    ablations[1].part = "learning rate"
    with pytest.raises(PlanError, match=r"mapped parts: .*heads'$"):
        expand(spec, ablations)


def test_expand_rejects_a_key_missing_from_base_and_other_actions() -> None:
    spec = validate_spec(_spec())
    spec.base["model"] = {}
    with pytest.raises(PlanError, match=r"ablation 'Ablation A': part 'image encoder': key 'model.vision_encoder'"):
        expand(spec, _real("vlm-pretraining-with-image-data"))
    spec = validate_spec(_spec())
    ablation = Ablation("X", "sequence length", "REMOVE", ["1"], ["a"])
    with pytest.raises(PlanError, match="action 'REMOVE' is not supported; only REPLACE is"):
        expand(spec, [ablation])


def _spec_error(data: object) -> str:
    with pytest.raises(RecipeError) as exc:
        validate_spec(data, source="s.yaml")
    return str(exc.value)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"nmae": "x"}, "s.yaml: nmae: unknown key 'nmae'; did you mean 'name'?"),
        ({"name": ""}, "s.yaml: name: String should have at least 1 character (got '')"),
        ({"parts": {}}, "s.yaml: parts: Dictionary should have at least 1 item"),
        (
            {"parts": {"x": {"key": "trainer.max_len"}}},
            "s.yaml: parts: 'x': key 'trainer.max_len' is not in the base: trainer has no 'max_len'; "
            "did you mean 'trainer.max_length'?",
        ),
        ({"parts": {"x": {"key": "trainer.max_length.y"}}}, "trainer.max_length is a int, not a mapping"),
        ({"parts": {"x": {"key": "evaluator.benchmarks.3"}}}, "evaluator.benchmarks is a list of 1; '3' is no index"),
        ({"parts": {"x": {"key": "zzz"}}}, "the base has no 'zzz' (it has: trainer, model, evaluator)"),
        ({"parts": {"x": {"key": "a..b"}}}, "s.yaml: parts.x.key: 'a..b' is not a dotted path"),
        ({"parts": {"x": {"key": "model", "vals": {}}}}, "parts.x.vals: unknown key 'vals'; did you mean 'values'?"),
        ({"parts": {"x": {"key": "model", "values": {"0.1": 1, "0.10": 2}}}}, "'0.1' and '0.10' name the same"),
        ({"parts": {"x": {"key": "model", "values": {None: 1}}}}, "key None is not a replacement text"),
        ({"parts": {"A b": {"key": "model"}, "a  B": {"key": "model"}}}, "'A b' and 'a  B' are the same part"),
        ({"metrics": {"R@1": "a", "r@1": "b"}}, "'R@1' and 'r@1' are the same metric"),
        ({"metrics": {"R@1": ""}}, "s.yaml: metrics.R@1: String should have at least 1 character"),
        ({"seeds": []}, "s.yaml: seeds: List should have at least 1 item"),
        ({"seeds": [1, 1]}, "seed 1 is listed twice"),
        ({"seeds": [-1]}, "s.yaml: seeds.0: Input should be greater than or equal to 0 (got -1)"),
        ({"base": {"a": {1: 2}}}, "s.yaml: base: a: key 1 is not a string (quote it)"),
        ({"base": {"a": [float("nan")]}}, "a.0 is nan, not a JSON number"),
    ],
)
def test_spec_errors(changes: dict, expected: str) -> None:
    message = _spec_error(_spec(**changes))
    assert expected in message, message
    assert "\n" not in message


def test_load_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: s\nbase:\n  trainer: {lr: 0.001, start: 2024-01-01}\n"
        "parts:\n  learning rate: {key: trainer.lr, values: {1e-3: 0.001, 0.01: 0.01}}\n"
    )
    with pytest.raises(RecipeError, match=r"spec.yaml: base: trainer.start is a date, not a JSON value"):
        load_spec(path)
    path.write_text(path.read_text().replace("2024-01-01", "'2024-01-01'"))
    spec = load_spec(path)
    assert isinstance(spec, SweepSpec) and spec.parts["learning rate"].values == {"1e-3": 0.001, "0.01": 0.01}
    plan = BLOCK.replace("Rank", "Learning  Rate").replace("  - 8\n", "  - 1.0e-3\n  - 0.01\n  - 3e-4\n")
    assert [v.config["trainer"]["lr"] for v in expand(spec, parse_plan(plan))] == [0.001, 0.01, 3e-4]
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"spec\.yaml: not valid YAML"):
        load_spec(path)
    path.write_text("- a\n")
    with pytest.raises(RecipeError, match="a sweep spec is a YAML mapping, got list"):
        load_spec(path)
    with pytest.raises(RecipeError, match="cannot read the sweep spec"):
        load_spec(tmp_path / "missing.yaml")
