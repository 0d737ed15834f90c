"""Checkpoint files: atomic directories, retention, RNG states, tensors."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from soundry import cli
from soundry.errors import SoundryError
from soundry.train.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_tensors,
    load_weights_only,
    restore_rng,
    save_tensors,
    step_name,
)

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml")
SMALL = ["data.sample_rate=8000", "data.segment_seconds=0.032", "data.batch_size=2",
         "data.valid_count=1", "data.valid_seconds=0.05", "model.channels=4", "model.layers=1",
         "toy.items_per_epoch=8", "toy.valid_clips=0", "train.progress=false",
         "train.tensorboard=false", "train.log_every=1", "train.max_steps=2"]


def _save(manager: CheckpointManager, step: int, net: nn.Module) -> Path:
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 3)).sum().backward()
    opt.step()
    return manager.save(
        step, {"net": net}, {}, {"net": {"optimizer": opt.state_dict(), "scheduler": None}},
        {"engine": {"x": step}}, {"rng": capture_rng(), "loader": {"i": step}},
    )


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    path = _save(manager, 7, net)
    assert path.name == "step_00000007" == step_name(7)
    assert manager.read_state(path)["engine"] == {"x": 7}
    assert manager.read_rank_state(path)["loader"] == {"i": 7}
    weights = manager.read_network(path, "net")
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    opt_state = manager.read_optimizer(path, "net")  # weights_only=True inside
    assert set(opt_state["optimizer"]["state"]) == {0, 1}
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert index == {"last": "step_00000007", "best": None, "best_metric": None,
                     "best_value": None}


def test_half_written_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path, keep_last=3)
    good = _save(manager, 4, net)
    # what a kill during the write of step 8 leaves behind
    partial = tmp_path / "checkpoints" / ".tmp-step_00000008"
    partial.mkdir()
    save_tensors(net.state_dict(), partial / "net.safetensors", {})
    # and a step directory without state.json (e.g. copied by hand, incomplete)
    (tmp_path / "checkpoints" / "step_00000009").mkdir()
    assert manager.latest() == good
    assert manager.remove_partial() == [partial]
    assert not partial.exists()


def test_keeps_last_k_plus_best(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    manager = CheckpointManager(tmp_path, keep_last=2, best_mode="max")
    for step, value in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2), (5, 0.3)]:
        if manager.is_better(value):
            manager.set_best(step_name(step), "valid/x", value)
        _save(manager, step, net)
    names = [p.name for p in manager.complete()]
    assert names == ["step_00000002", "step_00000004", "step_00000005"]
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert index["best"] == "step_00000002" and index["best_value"] == 0.9
    assert not list((tmp_path / "checkpoints").glob(".trash-*"))


def test_rng_states_roundtrip() -> None:
    state = capture_rng()
    json.dumps(state)  # JSON-safe
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng(json.loads(json.dumps(state)))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1]
    assert torch.equal(expected[2], again[2])


def test_save_tensors_handles_tied_weights(tmp_path: Path) -> None:
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    net = nn.ModuleDict({"emb": emb, "head": head})
    save_tensors(net.state_dict(), tmp_path / "w.safetensors", {"k": "v"})
    loaded = load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(loaded["emb.weight"], loaded["head.weight"])
    with torch.no_grad():
        emb.weight.zero_()
    net.load_state_dict(loaded)
    assert net["head"].weight is net["emb"].weight and net["emb"].weight.abs().sum() > 0


# ----------------------------------------------------------------------------- tampered files


class _Payload:
    """Unpickling this creates the directory `marker` (it would run code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory from a 2-step `soundry train` of the toy recipe."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert cli.main(["train", RECIPE, "--out", str(run), *SMALL]) == 0
    return run


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run and its newest checkpoint directory."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    latest = CheckpointManager(copy, 2).latest()
    assert latest is not None
    return copy, latest


def _resume_error(run: Path, capsys: Any) -> str:
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "train.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("form", ["torch.save", "raw pickle"])
def test_tampered_optimizer_state_is_refused(trained_run: Path, tmp_path: Path, capsys: Any,
                                             form: str) -> None:
    run, latest = _copy_run(trained_run, tmp_path)
    target = sorted(latest.glob("optim.*.pt"))[0]
    marker = tmp_path / "payload-ran"
    if form == "torch.save":
        torch.save({"optimizer": _Payload(marker), "scheduler": None}, target)
    else:
        target.write_bytes(pickle.dumps({"optimizer": _Payload(marker)}, protocol=2))
    err = _resume_error(run, capsys)
    assert f"refusing to load {target}" in err
    assert "objects other than tensors and plain numbers" in err
    assert "weights_only" not in err
    assert not marker.exists(), "the pickled payload ran"
    # the API raises the same error
    with pytest.raises(SoundryError, match="refusing to load"):
        CheckpointManager.read_optimizer(latest, target.name[len("optim."):-len(".pt")])
    assert not marker.exists()


def test_corrupt_checkpoint_files_name_the_file(trained_run: Path, tmp_path: Path,
                                                capsys: Any) -> None:
    run, latest = _copy_run(trained_run, tmp_path)
    weights = sorted(p for p in latest.glob("*.safetensors") if ".ema." not in p.name)[0]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    err = _resume_error(run, capsys)
    assert f"cannot read {weights}" in err and "safetensors" in err

    run, latest = _copy_run(trained_run, tmp_path / "b")
    optim = sorted(latest.glob("optim.*.pt"))[0]
    data = optim.read_bytes()
    optim.write_bytes(data[: len(data) // 2])
    err = _resume_error(run, capsys)
    assert f"cannot read {optim}" in err and "weights_only" not in err

    for name in ("state.json", "rank0.json"):
        run, latest = _copy_run(trained_run, tmp_path / name)
        text = (latest / name).read_text()
        (latest / name).write_text(text[: len(text) // 2])
        err = _resume_error(run, capsys)
        assert f"cannot read {latest / name}" in err and "not valid JSON" in err


def test_weights_only_loader_reads_plain_states(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    torch.save({"a": torch.ones(2), "b": [1, 2.5, "x"], "c": None}, path)
    loaded = load_weights_only(path)
    assert torch.equal(loaded["a"], torch.ones(2)) and loaded["b"] == [1, 2.5, "x"]
    with pytest.raises(SoundryError, match="missing"):
        load_weights_only(tmp_path / "nope.pt")
    with pytest.raises(SoundryError, match="missing"):
        load_tensors(tmp_path / "nope.safetensors")
