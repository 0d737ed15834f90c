"""`soundry train`: flags, overrides, errors before any work, --resume."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from soundry import cli
from soundry.commands.train import _sugar, prepare
from soundry.config import apply_overrides
from soundry.train.logging import read_metrics

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml")
SMALL = ["data.sample_rate=8000", "data.segment_seconds=0.032", "data.batch_size=2",
         "data.valid_count=1", "data.valid_seconds=0.05", "model.channels=4", "model.layers=1",
         "toy.items_per_epoch=8", "toy.valid_clips=0", "train.progress=false",
         "train.tensorboard=false", "train.log_every=1"]


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", *argv])


@pytest.mark.parametrize("argv,message", [
    (["train.max_stepz=3"], "unknown key 'train.max_stepz' (did you mean 'max_steps'?)"),
    (["--data", "/audio"], "makes its own data"),
    (["--max-steps", "0"], "train.max_steps"),
    (["optim.generator.type=sgd"], "optim.generator"),
])
def test_config_errors_come_before_any_work(tmp_path: Path, capsys: Any, argv: list[str],
                                            message: str) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", RECIPE, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_resume_errors(tmp_path: Path, capsys: Any) -> None:
    assert cli.main(["train", RECIPE, "--resume", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert cli.main(["train"]) == 2
    assert "missing RECIPE" in capsys.readouterr().err


def test_flags_become_overrides() -> None:
    args = parse(["--data", "a", "--data", "b c", "--valid", "v", "--max-steps", "5",
                  "--init-from", "runs/x", "--overfit", "3", "--threads", "2"])
    raw = apply_overrides({}, _sugar(args))
    assert raw == {"data": {"sources": [{"path": "a"}, {"path": "b c"}], "valid": "v"},
                   "train": {"max_steps": 5, "init_from": "runs/x", "overfit": 3,
                             "threads": 2}}
    # overrides may follow options; explicit key=value wins over the flags
    args = parse([RECIPE, "--out", "runs/y", "--max-steps", "5", "train.max_steps=7", "seed=3"])
    recipe, run_dir = prepare(args)
    assert recipe.train.max_steps == 7 and recipe.seed == 3 and run_dir == Path("runs/y")
    recipe, run_dir = prepare(parse([RECIPE]))
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("toy-")


def test_train_then_resume_longer(tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", RECIPE, "--out", str(run), "--max-steps", "2", "--overfit", "2",
                     *SMALL]) == 0
    assert f"run dir {run}" in capsys.readouterr().out
    # a second start in the same directory must not clobber it
    assert cli.main(["train", RECIPE, "--out", str(run), *SMALL]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "train.max_steps=3"]) == 0
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    assert "overfit: 2" in (run / "config.yaml").read_text()
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["resumes"][0]["from_step"] == 2
    assert prov["resumes"][0]["command"][0] == "soundry"


def test_wandb_without_the_package_fails_before_work(tmp_path: Path, capsys: Any) -> None:
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    out = tmp_path / "run"
    assert cli.main(["train", RECIPE, "--out", str(out), "train.wandb.enabled=true"]) == 2
    assert "wandb" in capsys.readouterr().err
    assert not out.exists()


def test_threads_flag_reaches_torch(tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    from soundry.train.tasks.toy import ToyTask

    seen: list[int] = []
    train_step = ToyTask.train_step

    def spy(self: Any, batch: Any, step: int, updater: Any) -> Any:
        seen.append(torch.get_num_threads())
        return train_step(self, batch, step, updater)

    monkeypatch.setattr(ToyTask, "train_step", spy)
    before = torch.get_num_threads()
    want = before + 1
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="soundry.train"):
        assert cli.main(["train", RECIPE, "--out", str(run), "--max-steps", "2", "--overfit",
                         "2", "--threads", str(want), *SMALL]) == 0
    assert seen == [want, want], "the steps ran with train.threads"
    assert torch.get_num_threads() == before, "the thread count comes back after the run"
    assert f"torch intra-op threads: {want} (train.threads)" in caplog.text
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["threads"] == want
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["hardware"]["torch_threads"] == want


def test_threads_flag_overrides_the_recipe(tmp_path: Path, capsys: Any) -> None:
    raw = yaml.safe_load(Path(RECIPE).read_text())
    raw["train"]["threads"] = 2
    recipe_file = tmp_path / "threads.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    assert prepare(parse([str(recipe_file)]))[0].train.threads == 2
    assert prepare(parse([str(recipe_file), "--threads", "3"]))[0].train.threads == 3
    assert prepare(parse([RECIPE]))[0].train.threads is None  # torch's default
    assert cli.main(["train", RECIPE, "--out", str(tmp_path / "run"), "--threads", "0"]) == 2
    assert "train.threads" in capsys.readouterr().err
