"""`soundry data preview`: items as the model sees them, with a listing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from soundry.cli import main
from soundry.config import Strict
from soundry.data.loader import build_train_loader
from soundry.train.recipe import RecipeBase
from soundry.train.recipes import load_data_section
from soundry.train.registry import TASK_RECIPES

TEST_TASK = "data-preview-test"


class _PreviewRecipe(RecipeBase):
    """A minimal task recipe: the base fields (task, seed, data, train) only."""


if TEST_TASK not in TASK_RECIPES:
    TASK_RECIPES.register(TEST_TASK)(_PreviewRecipe)


def _data(folder: Path) -> dict:
    return {
        "sources": [{"path": str(folder)}],
        "sample_rate": 8000,
        "segment_seconds": 0.1,
        "batch_size": 3,
        "snap_to_hop": True,
        "loudness": {"target_lufs": None, "min_lufs": None},
        "augment": {"polarity": {"prob": 1.0}, "gain": {"prob": 0.5, "min_db": -6}},
    }


def test_preview_writes_items_and_listing(tmp_path, data_encoded_dir, data_decode, capsys):
    folder = data_encoded_dir([4000, 6000, 9000], 8000)
    recipe = tmp_path / "data.yaml"
    recipe.write_text(yaml.safe_dump({"seed": 5, "data": _data(folder)}))
    out = tmp_path / "preview"
    args = ["data", "preview", str(recipe), "data.batch_size=2", "--count", "5", "--out", str(out),
            "--hop", "40"]
    assert main(args) == 0
    assert "wrote 5 training items" in capsys.readouterr().out

    rows = json.loads((out / "listing.json").read_text())
    with (out / "listing.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(rows) == len(table) == 5
    assert sorted(p.name for p in out.glob("item_*.wav")) == [f"item_{i:03d}.wav" for i in range(5)]

    for row, line in zip(rows, table, strict=True):
        audio, sr = sf.read(out / row["file"], dtype="float32")
        assert sr == 8000 and audio.shape == (800,)
        assert row["offset"] % 40 == 0 and int(line["offset"]) == row["offset"]
        assert row["augment"]["polarity"] == -1 and json.loads(line["augment"]) == row["augment"]
        # undo the listed augmentations: the samples are the claimed file at the claimed offset
        gain = 10 ** (row["augment"].get("gain_db", 0.0) / 20)
        files, pos = data_decode(-audio / gain)
        expected_file = int(Path(row["path"]).stem.split("_")[1])
        assert (files == expected_file).all()
        np.testing.assert_array_equal(pos, row["offset"] + np.arange(800))
        assert row["source"] == folder.name

    # exactly what the training loader yields for the same recipe and seed
    cfg, seed = load_data_section(recipe, ["data.batch_size=2"])
    batches = [next(iter(build_train_loader(cfg, seed, hop=40, num_workers=0)))]
    first = torch.from_numpy(sf.read(out / "item_000.wav", dtype="float32")[0])
    assert torch.equal(first, batches[0]["audio"][0, 0])


def test_preview_reads_a_task_recipe(tmp_path, data_tone_dir):
    folder = data_tone_dir(3)
    recipe = tmp_path / "recipe.yaml"
    data = {**_data(folder), "degrade": {}}
    recipe.write_text(yaml.safe_dump({"task": TEST_TASK, "seed": 1, "data": data}))
    out = tmp_path / "p"
    assert main(["data", "preview", str(recipe), "--count", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "listing.json").read_text())
    assert len(rows) == 2 and all(r["degrade"] for r in rows)
    assert (out / "item_000_input.wav").is_file()
    assert isinstance(_PreviewRecipe.model_validate({"task": TEST_TASK}), Strict)
    # a misspelled data key in the recipe is reported before any work
    recipe.write_text(yaml.safe_dump({"task": TEST_TASK, "data": {"segment_second": 1}}))
    assert main(["data", "preview", str(recipe), "--out", str(tmp_path / "q")]) == 2
    assert not (tmp_path / "q").exists()
