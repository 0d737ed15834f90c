"""The dac-* codec recipes: DAC's optimizer settings, and their documented deviations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soundry.paths import recipes_dir
from soundry.train.optim import build_optimizer
from soundry.train.recipes import load_recipe

DAC_RECIPES = ["dac-16k", "dac-44k"]
DEVIATIONS = recipes_dir() / "codec" / "DAC_DEVIATIONS.md"


def test_every_dac_recipe_is_covered() -> None:
    found = sorted(p.stem for p in (recipes_dir() / "codec").glob("dac-*.yaml"))
    assert found == DAC_RECIPES  # a new dac-* recipe needs checking (and listing) too


@pytest.mark.parametrize("name", DAC_RECIPES)
def test_dac_recipes_use_torch_adamw_default_weight_decay(name: str) -> None:
    """DAC builds torch.optim.AdamW over all parameters with the default weight_decay 0.01."""
    recipe = load_recipe(recipes_dir() / "codec" / f"{name}.yaml")
    for which in ("generator", "discriminator"):
        cfg = getattr(recipe.optim, which)
        assert cfg.type == "adamw"
        assert cfg.weight_decay == pytest.approx(0.01)
        assert cfg.decay_1d  # biases and gains decay too, as in DAC
        assert cfg.betas == (0.8, 0.99) and cfg.lr == pytest.approx(1e-4)
        # what the optimizer really gets: every parameter, 1-D ones included, at 0.01
        net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv1d(3, 1, 1))
        optimizer, _ = build_optimizer(cfg, {"net": net})
        assert isinstance(optimizer, torch.optim.AdamW)
        decayed = [p for g in optimizer.param_groups if g["weight_decay"] == 0.01
                   for p in g["params"]]
        assert len(decayed) == len(list(net.parameters()))
    assert recipe.optim.generator.clip == 1000.0 and recipe.optim.discriminator.clip == 10.0


def test_deviations_document_lists_both_recipes_and_the_known_deviations() -> None:
    assert DEVIATIONS.is_file()
    text = DEVIATIONS.read_text()
    for name in DAC_RECIPES:
        assert f"{name}.yaml" in text
        header = (recipes_dir() / "codec" / f"{name}.yaml").read_text().split("\ntask:")[0]
        assert "DAC_DEVIATIONS.md" in header  # each recipe points at the list
    lowered = text.lower()
    for topic in ("feature matching", "pre-update", "all-pass", "shiftphase", "batch size",
                  "snap_to_hop", "loudness", "upsample_output_padding", "mrd", "mpd",
                  "validation"):
        assert topic in lowered, topic
