"""Exact resume of the real codec task: runs of `soundry train recipes/codec/tiny.yaml`
killed with SIGKILL (between checkpoints, and while a checkpoint is being written) and then
resumed with `--resume` end exactly like an uninterrupted run.

The runs use the real clip loader on synthesized audio with every augmentation on, two
loader workers, a GAN schedule whose warm-up ends at the checkpoint the runs resume from,
quantizer dropout and dead-code restarts, so every source of randomness of the codec path
(per-item crops and augmentations, dropout levels, restart candidates, usage counters, the
phase in force) has to survive the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from soundry.data.synth import synthesize
from soundry.train.checkpoint import CheckpointManager, load_tensors
from soundry.train.logging import read_metrics

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "codec" / "tiny.yaml"
SAMPLE_RATE = 16000
MAX_STEPS = 10
KEEP = 5

# A very small codec (as in test_codec_task.py), so a step takes a few milliseconds.
SMALL = [
    "model.encoder_dim=4",
    "model.decoder_dim=16",
    "model.latent_dim=16",
    # RVQ with data-dependent init and dead-code restarts: the hardest state to resume
    "model.quantizer={type: rvq, n_codebooks: 4, codebook_size: 32, init: data}",
    "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8, 8]}, "
    "{type: mrd, windows: [256, 128], channels: 4}]",
    "losses.mel.windows=[32, 64, 128, 256]",
    "losses.mel.n_mels=[5, 10, 20, 40]",
]
# Everything that makes resuming hard. 6 training files in batches of 2: an epoch turns every
# 3 steps, so epochs turn mid-run and after the resume point. Checkpoints every 4 steps,
# validations (best checkpoints) every 5, logs every 3. The warm-up (generator only, no
# adversarial loss) covers steps up to the resume point, then both networks train. Half the
# items of a batch use a random number of levels; codes unused for 3 steps are restarted
# (3 does not divide the resume step 5, so the usage counters must be restored mid-window).
OVERRIDES = [
    *SMALL,
    "data.batch_size=2",
    "data.segment_seconds=0.1",
    "data.num_workers=2",
    "data.valid_count=2",
    "data.valid_seconds=0.2",
    "data.augment={gain: {prob: 0.7}, polarity: {prob: 0.5}, phase: {prob: 0.7}, "
    "dequantize: {prob: 0.5, bits: 12}, pitch: {prob: 0.5, min_ratio: 0.8, max_ratio: 1.25}}",
    "model.quantizer.dropout=0.5",
    "model.quantizer.dead_code_threshold=1.0",
    "model.quantizer.restart_every=3",
    "model.quantizer.restart_candidates=8",
    "schedule.phases=[{name: warmup, steps: 5, discriminator: false, adversarial: false}, "
    "{name: gan}]",
    "valid.levels=[2]",
    # validation scores land in metrics.jsonl; no audio/PNGs (matplotlib costs seconds)
    "valid.audio_clips=0",
    f"train.max_steps={MAX_STEPS}",
    "train.checkpoint_every=4",
    "train.log_every=3",
    "train.valid_every=5",
    f"train.keep_last={KEEP}",
    "train.progress=false",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Training clips (longer than a segment, so crops vary) and validation clips."""
    root = tmp_path_factory.mktemp("codec_data")
    train = synthesize(root / "train", "speechlike", 6, 0.4, SAMPLE_RATE, seed=3).parent
    valid = synthesize(root / "valid", "tones", 2, 0.25, SAMPLE_RATE, seed=4).parent
    return train, valid


def _start(run: Path, data: tuple[Path, Path] | None = None, resume: bool = False,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    if resume:
        args = ["--resume", str(run)]
    else:
        assert data is not None
        args = [str(RECIPE), "--data", str(data[0]), "--valid", str(data[1]), "--out", str(run),
                *OVERRIDES]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "soundry", "train", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen[bytes]) -> int:
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"run failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return proc.returncode


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and \
            all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _metrics(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")}
            for r in read_metrics(run / "metrics.jsonl")]


def _load(path: Path) -> Any:
    if path.name.endswith(".safetensors"):
        return load_tensors(path)
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    return json.loads(path.read_text())


def _assert_identical(ref: Path, run: Path) -> None:
    ref_ckpts = CheckpointManager(ref, KEEP).complete()
    run_ckpts = CheckpointManager(run, KEEP).complete()
    assert [p.name for p in run_ckpts] == [p.name for p in ref_ckpts]
    last_ref, last_run = ref_ckpts[-1], run_ckpts[-1]
    assert last_ref.name == f"step_{MAX_STEPS:08d}"
    files = sorted(p.name for p in last_ref.iterdir())
    assert files == sorted(p.name for p in last_run.iterdir())
    # Both networks and both optimizers are in the checkpoint, and nothing is left unchecked.
    for net in ("generator", "discriminator"):
        assert f"{net}.safetensors" in files
        assert any(net in f and f != f"{net}.safetensors" and "ema" not in f for f in files)
    for name in files:
        a, b = _load(last_ref / name), _load(last_run / name)
        if name == "state.json":  # the training-time clock is wall time: both counted
            assert a["engine"].pop("clock")["seconds"] > 0
            assert b["engine"].pop("clock")["seconds"] > 0
        assert _same(a, b), f"{name} differs"
    assert (run / "checkpoints" / "index.json").exists()
    assert _load(run / "checkpoints" / "index.json") == _load(ref / "checkpoints" / "index.json")
    assert _metrics(run) == _metrics(ref)
    assert not list((run / "checkpoints").glob(".tmp-*"))


def _assert_run_exercises_the_codec_path(ref: Path) -> None:
    """The reference run really used what the resume has to restore."""
    ckpts = CheckpointManager(ref, KEEP).complete()
    first, last = ckpts[0], ckpts[-1]
    rows = _metrics(ref)
    train = [r for r in rows if r["kind"] == "train"]
    # Warm-up: generator only; afterwards the discriminator trains and the adversarial
    # loss reaches the generator.
    assert any("loss/d" not in r for r in train if r["step"] <= 5)
    late = [r for r in train if r["step"] > 6]
    assert late and all("loss/d" in r for r in late)
    assert any(k.startswith("loss/") and "adv" in k for k in late[-1])
    disc_a = load_tensors(first / "discriminator.safetensors")
    disc_b = load_tensors(last / "discriminator.safetensors")
    assert any(not torch.equal(disc_a[k], disc_b[k]) for k in disc_a)
    # Dead-code restarts ran: the usage counters were zeroed at the last restart (step 9),
    # so they hold exactly one step's codes (2 items x 5 frames) on a level all items use.
    gen = load_tensors(last / "generator.safetensors")
    assert int(gen["bottleneck.quantizer.steps"]) == MAX_STEPS
    assert float(gen["bottleneck.quantizer.stages.0.usage"].sum()) == 2 * 5


def test_codec_resume_after_sigkill_is_exact(data: tuple[Path, Path], tmp_path: Path) -> None:
    ref, between, during = tmp_path / "ref", tmp_path / "between", tmp_path / "during"
    procs = [
        _start(ref, data),
        # killed after step 7: newest checkpoint is step 5 (best), train lines of step 6 exist
        _start(between, data, env={"SOUNDRY_TEST_KILL_AT_STEP": "7"}),
        # killed while writing the checkpoint of step 8
        _start(during, data, env={"SOUNDRY_TEST_KILL_IN_CHECKPOINT": "8"}),
    ]
    codes = [_wait(p) for p in procs]
    assert codes == [0, -signal.SIGKILL, -signal.SIGKILL]

    assert CheckpointManager(between, KEEP).latest().name == "step_00000005"
    assert max(r["step"] for r in read_metrics(between / "metrics.jsonl")) == 6
    assert (during / "checkpoints" / ".tmp-step_00000008").is_dir()  # half-written
    assert CheckpointManager(during, KEEP).latest().name == "step_00000005"

    codes = [_wait(p) for p in (_start(between, resume=True), _start(during, resume=True))]
    assert codes == [0, 0]
    _assert_run_exercises_the_codec_path(ref)
    _assert_identical(ref, between)
    _assert_identical(ref, during)


def test_packed_set_trains_like_its_folder_and_resumes_mid_epoch(
        data: tuple[Path, Path], tmp_path: Path) -> None:
    """The training folder packed into several WebDataset shards (`soundry data pack`, FLAC,
    lossless for these 16-bit files): a run on the shards logs exactly what the run on the
    folder logs, and one killed mid-epoch (after step 7; resumed from step 5, the middle of
    the second epoch) then resumed ends exactly like the uninterrupted one."""
    from soundry.cli import main

    shards = tmp_path / "shards"
    assert main(["data", "pack", str(data[0]), str(shards), "--shard-size", "6KB"]) == 0
    assert len(list(shards.glob("*.tar"))) >= 2
    packed = (shards, data[1])
    folder, ref, killed = tmp_path / "folder", tmp_path / "ref", tmp_path / "killed"
    procs = [_start(folder, data), _start(ref, packed),
             _start(killed, packed, env={"SOUNDRY_TEST_KILL_AT_STEP": "7"})]
    assert [_wait(p) for p in procs] == [0, 0, -signal.SIGKILL]
    assert CheckpointManager(killed, KEEP).latest().name == "step_00000005"
    assert _wait(_start(killed, resume=True)) == 0
    assert _metrics(ref) == _metrics(folder)
    _assert_identical(ref, killed)
