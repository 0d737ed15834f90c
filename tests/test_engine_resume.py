"""Exact resume: runs killed with SIGKILL (between checkpoints, and while a checkpoint is
being written) and then resumed end exactly like an uninterrupted run.

Each run is a real `soundry train` subprocess; the engine's test hooks
(SOUNDRY_TEST_KILL_AT_STEP, SOUNDRY_TEST_KILL_IN_CHECKPOINT) make it SIGKILL itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from soundry.train.checkpoint import CheckpointManager, load_tensors
from soundry.train.logging import read_metrics

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml"
# Tiny and quick, but with everything that makes resuming hard: data that varies per item
# and epoch with augmentations (3 batches an epoch, so epochs turn mid-step), dropout,
# gradient accumulation, two optimizers (Muon + AdamW) with an lr warm-up, EMA, a log
# interval (3) that does not divide the checkpoint interval (4), validations (every 5) that
# write best checkpoints between regular ones.
OVERRIDES = [
    "data.sample_rate=8000", "data.segment_seconds=0.032", "data.batch_size=4",
    "data.valid_count=2", "data.valid_seconds=0.1", "model.channels=4", "model.layers=1",
    "model.kernel_size=3", "model.disc_channels=4", "toy.items_per_epoch=12",
    "train.max_steps=12", "train.checkpoint_every=4", "train.log_every=3",
    "train.valid_every=5", "train.grad_accum=2", "train.keep_last=5", "train.ema.beta=0.9",
    "train.progress=false", "train.tensorboard=false", "train.best_metric=l1",
]


def _start(run: Path, *extra: str, resume: bool = False, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    args = ["--resume", str(run), *extra] if resume else \
        [str(RECIPE), "--out", str(run), *OVERRIDES, *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "soundry", "train", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    out, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"run failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return proc.returncode


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _metrics(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")}
            for r in read_metrics(run / "metrics.jsonl")]


def _assert_identical(ref: Path, run: Path) -> None:
    ref_ckpts = CheckpointManager(ref, 5).complete()
    run_ckpts = CheckpointManager(run, 5).complete()
    assert [p.name for p in run_ckpts] == [p.name for p in ref_ckpts]
    last_ref, last_run = ref_ckpts[-1], run_ckpts[-1]
    assert last_ref.name == "step_00000012"
    files = sorted(p.name for p in last_ref.iterdir())
    assert files == sorted(p.name for p in last_run.iterdir())
    for name in files:
        if name.endswith(".safetensors"):
            a, b = load_tensors(last_ref / name), load_tensors(last_run / name)
            assert _same(a, b), f"{name} differs"
        elif name.endswith(".pt"):
            a = torch.load(last_ref / name, weights_only=True)
            b = torch.load(last_run / name, weights_only=True)
            assert _same(a, b), f"{name} differs"
        else:
            a, b = (json.loads((d / name).read_text()) for d in (last_ref, last_run))
            if name == "state.json":  # the training-time clock is wall time: both counted
                assert a["engine"].pop("clock")["seconds"] > 0
                assert b["engine"].pop("clock")["seconds"] > 0
            assert a == b, f"{name} differs"
    assert _metrics(run) == _metrics(ref)
    wav = "valid/step_00000010/clip00_out.wav"
    assert (ref / wav).read_bytes() == (run / wav).read_bytes()
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_resume_after_sigkill_is_exact(tmp_path: Path) -> None:
    ref, between, during = tmp_path / "ref", tmp_path / "between", tmp_path / "during"
    procs = [
        _start(ref),
        # killed after step 7: newest checkpoint is step 5 (best), train lines of step 6 exist
        _start(between, "data.num_workers=2", env={"SOUNDRY_TEST_KILL_AT_STEP": "7"}),
        # killed while writing the checkpoint of step 8
        _start(during, env={"SOUNDRY_TEST_KILL_IN_CHECKPOINT": "8"}),
    ]
    codes = [_wait(p) for p in procs]
    assert codes == [0, -signal.SIGKILL, -signal.SIGKILL]

    assert CheckpointManager(between, 5).latest().name == "step_00000005"
    assert max(r["step"] for r in read_metrics(between / "metrics.jsonl")) == 6
    assert (during / "checkpoints" / ".tmp-step_00000008").is_dir()  # half-written
    assert CheckpointManager(during, 5).latest().name == "step_00000005"
    index = json.loads((during / "checkpoints" / "index.json").read_text())
    assert index["last"] == "step_00000005"

    codes = [_wait(p) for p in (_start(between, resume=True), _start(during, resume=True))]
    assert codes == [0, 0]
    _assert_identical(ref, between)
    _assert_identical(ref, during)
    prov = json.loads((between / "provenance.json").read_text())
    assert prov["resumes"][0]["from_step"] == 5
