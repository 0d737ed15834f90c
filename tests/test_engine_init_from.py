"""--init-from: partial loading by name with a report, and freezing by prefix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from soundry.errors import ConfigError, SoundryError
from soundry.train.checkpoint import CheckpointManager, load_tensors, save_tensors
from soundry.train.engine import run_training
from soundry.train.init_from import init_from
from soundry.train.recipes import recipe_from_dict
from soundry.train.tasks.toy import ToyAutoencoder, ToyModelConfig


def recipe(model: dict[str, Any], train: dict[str, Any], **toy: Any) -> Any:
    return recipe_from_dict({
        "task": "toy",
        "data": {"sample_rate": 8000, "segment_seconds": 0.032, "batch_size": 4,
                 "num_workers": 0, "valid_count": 1, "valid_seconds": 0.05},
        "model": {"channels": 4, "kernel_size": 3, "disc_channels": 4, **model},
        "toy": {"items_per_epoch": 8, "valid_clips": 0, **toy},
        "train": {"progress": False, "tensorboard": False, "max_steps": 2,
                  "valid_every": 100, **train},
    })


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("src") / "run"
    run_training(recipe({"layers": 1}, {}), run)
    return run


def _latest(run: Path, net: str = "generator") -> dict[str, torch.Tensor]:
    return load_tensors(CheckpointManager(run, 1).latest() / f"{net}.safetensors")


def test_partial_load_reports_and_freezes(source_run: Path, tmp_path: Path) -> None:
    # two stages instead of one, a wider kernel, no discriminator
    target = recipe({"layers": 2, "kernel_size": 5},
                    {"freeze": ["generator.down"], "max_steps": 3}, adversarial=False)
    run = tmp_path / "run"
    run_training(target, run, init_from=source_run)
    report = json.loads((run / "init_report.json").read_text())
    wn = "parametrizations.weight.original"
    assert f"generator.down.0.{wn}1" in report["loaded"]
    assert f"generator.up.0.{wn}1" in report["loaded"]
    assert f"generator.down.1.{wn}1" in report["missing"]
    mismatched = {m["name"]: m for m in report["shape_mismatched"]}
    assert mismatched[f"generator.inp.{wn}1"]["source_shape"] == [4, 1, 3]
    assert mismatched[f"generator.inp.{wn}1"]["target_shape"] == [4, 1, 5]
    assert "discriminator.post.weight" in report["unexpected"]
    assert (run / "config.yaml").read_text().count(str(source_run)) == 1  # recorded

    src, out = _latest(source_run), _latest(run)
    for key in [f"down.0.{wn}0", f"down.0.{wn}1", "down.0.bias"]:
        assert torch.equal(out[key], src[key]), key  # loaded, then frozen
    assert not torch.equal(out[f"up.0.{wn}1"], src[f"up.0.{wn}1"])  # loaded, then trained
    # frozen tensors are left out of the optimizer
    opt = torch.load(CheckpointManager(run, 1).latest() / "optim.generator.pt",
                     weights_only=True)["optimizer"]
    n_params = sum(len(g["params"]) for g in opt["param_groups"])
    total = len(ToyAutoencoder(1, ToyModelConfig(channels=4, layers=2, kernel_size=5)).state_dict())
    assert n_params == total - 6  # 2 frozen down convs x (gain, direction, bias)


def test_init_from_an_export_directory(source_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"kind": "toy"}))
    save_tensors(_latest(source_run), export / "model.safetensors", {})
    net = ToyAutoencoder(1, ToyModelConfig(channels=4, layers=1, kernel_size=3))
    disc = torch.nn.Conv1d(1, 1, 3)
    report = init_from(export, {"discriminator": disc, "generator": net})
    assert len(report.loaded) == len(net.state_dict()) and not report.unexpected
    assert report.missing == ["discriminator.weight", "discriminator.bias"]
    assert torch.equal(net.out.weight, _latest(source_run)["out.weight"])
    assert f"loaded {len(net.state_dict())} tensors" in report.summary()


def test_nothing_matching_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_tensors({"unrelated.weight": torch.zeros(2)}, path, {})
    with pytest.raises(SoundryError, match="no tensor matches"):
        init_from(path, {"net": torch.nn.Linear(2, 2)})


def test_freeze_typo_and_missing_source_fail_before_work(tmp_path: Path, source_run: Path
                                                         ) -> None:
    with pytest.raises(ConfigError, match="did you mean 'generator.down'"):
        run_training(recipe({"layers": 1}, {"freeze": ["generator.dwn"]}), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(SoundryError, match="does not exist"):
        run_training(recipe({"layers": 1}, {}), tmp_path / "b", init_from=tmp_path / "nope")
    assert not (tmp_path / "b").exists()
