"""Checkpoint files: atomic directories, retention, RNG states, tensors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from soundry.train.checkpoint import (
    CheckpointManager,
    capture_rng,
    load_tensors,
    restore_rng,
    save_tensors,
    step_name,
)


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
