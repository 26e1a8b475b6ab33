"""The catalog (recipes/catalog/table3.yaml): Idefics3's Table 3 and the Cauldron's 50 configs."""

from __future__ import annotations

import math
from collections import Counter
from typing import get_args

import pytest

from curation.recipe import Category
from curation.sources import cauldron_catalog as catalog

CAULDRON_50 = [
    "ai2d",
    "aokvqa",
    "chart2text",
    "chartqa",
    "clevr",
    "clevr_math",
    "cocoqa",
    "datikz",
    "diagram_image_to_text",
    "docvqa",
    "dvqa",
    "figureqa",
    "finqa",
    "geomverse",
    "hateful_memes",
    "hitab",
    "iam",
    "iconqa",
    "infographic_vqa",
    "intergps",
    "localized_narratives",
    "mapqa",
    "mimic_cgd",
    "multihiertt",
    "nlvr2",
    "ocrvqa",
    "okvqa",
    "plotqa",
    "raven",
    "rendered_text",
    "robut_sqa",
    "robut_wikisql",
    "robut_wtq",
    "scienceqa",
    "screen2words",
    "spot_the_diff",
    "st_vqa",
    "tabmwp",
    "tallyqa",
    "tat_qa",
    "textcaps",
    "textvqa",
    "tqa",
    "vistext",
    "visual7w",
    "visualmrc",
    "vqarad",
    "vqav2",
    "vsr",
    "websight",
]


def test_exactly_the_50_cauldron_configs():
    configs = catalog.cauldron_configs()
    assert len(configs) == 50
    assert sorted(configs) == sorted(CAULDRON_50)


def test_every_category_is_valid():
    valid = set(get_args(Category))
    assert len(valid) == 8
    assert {r.category for r in catalog.table3_rows()} == valid  # every category has rows
    assert set(catalog.cauldron_configs().values()) <= valid


def test_row_counts_per_category():
    counts = Counter(r.category for r in catalog.table3_rows())
    assert counts == {
        "captioning": 6,
        "real_world_vqa": 6,
        "ocr_document": 11,
        "chart_figure": 6,
        "table": 9,
        "reasoning_maths": 15,
        "screenshot_to_code": 2,
        "text_only": 9,
    }
    assert len(catalog.table3_rows()) == 64
    assert len({r.name for r in catalog.table3_rows()}) == 64


def test_mix_percentages_sum_as_printed():
    # The 64 printed "% mix" values sum to 100.77. Rounding each to two decimals explains at most 64 * 0.005 = 0.32
    # points, so the printed table is itself ~0.45 points over 100: we assert the exact printed sum (the data is a
    # faithful transcription) and that it is within one point of 100 (no row lost or doubled: the smallest rows are
    # 0.02-0.08, the typical ones > 0.3).
    total = sum(r.paper.mix_percent for r in catalog.table3_rows())
    assert math.isclose(total, 100.77, abs_tol=1e-9)
    assert abs(total - 100) < 1.0


def test_printed_numbers_are_kept():
    plotqa = catalog.table3_row("plotqa")
    assert plotqa is not None and plotqa.title == "PlotQA"
    assert plotqa.paper.answer_tokens == 8478299.278  # printed so in the paper
    docmatix = catalog.table3_row("docmatix")
    assert docmatix is not None
    assert (docmatix.paper.images, docmatix.paper.qa_pairs, docmatix.paper.answer_tokens) == (
        1_273_215,
        9_488_888,
        392_302_612,
    )
    assert docmatix.paper.mix_percent == 10.31
    rows = catalog.table3_rows()
    assert rows[0].name == "sharegpt4o" and rows[-1].title == "CamelAIMath"  # the paper's order
    assert all(r.paper.images == 0 for r in rows if r.category == "text_only")


@pytest.mark.parametrize(
    ("config", "title"),
    [
        ("mimic_cgd", "GSD"),
        ("robut_sqa", "SQA"),
        ("robut_wikisql", "WikiSQL"),
        ("robut_wtq", "WTQ"),
        ("localized_narratives", "LNarratives"),
        ("infographic_vqa", "InfoVQA"),
        ("rendered_text", "RenderedText"),
        ("spot_the_diff", "Spot the diff"),
        ("intergps", "Inter-GPs"),
    ],
)
def test_configs_map_to_their_rows(config, title):
    row = catalog.row_of_config(config)
    assert row is not None and row.title == title and row.cauldron_config == config
    assert catalog.category_of(config) == row.category


def test_every_config_but_vqarad_has_a_row():
    rows_by_config = {r.cauldron_config: r for r in catalog.table3_rows() if r.cauldron_config}
    assert set(rows_by_config) == set(CAULDRON_50) - {"vqarad"}
    for config, category in catalog.cauldron_configs().items():
        row = catalog.row_of_config(config)
        if config == "vqarad":
            assert row is None and category == "real_world_vqa"
        else:
            assert row is not None and row.category == category


def test_the_six_added_datasets():
    added = {r.title for r in catalog.table3_rows() if r.added_in_idefics3}
    assert added == {"Cord-v2", "LNQA", "ShareGPT-4o", "IIW-400", "Geo170K", "Docmatix"}
    assert all(r.cauldron_config is None for r in catalog.table3_rows() if r.added_in_idefics3)
    # Table 3 = the 49 Cauldron rows + the 6 added + 9 text-only sets
    assert sum(1 for r in catalog.table3_rows() if r.cauldron_config is None and not r.added_in_idefics3) == 9


def test_category_of_unknown_configs():
    assert catalog.category_of("images") is None  # Docmatix's config is not a Cauldron config
    assert catalog.category_of("no_such_config") is None
    assert catalog.category_of("docvqa") == "ocr_document"
    assert catalog.category_of("websight") == "screenshot_to_code"


def test_inconsistent_catalog_is_refused():
    data = catalog.load_catalog().model_dump()
    data["cauldron_configs"][0]["category"] = "table"  # ai2d is reasoning_maths in its row
    with pytest.raises(ValueError, match="disagrees"):
        catalog.Catalog.model_validate(data)
