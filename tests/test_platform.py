"""A system built only from the shared pieces (tests/fixtures/platform_task.py: bottleneck
none, the shared GAN step, its own loss terms, a frozen teacher loaded from a local
directory) trains through the real command line, resumes exactly after SIGKILL, and keeps
its teacher out of its checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from soundry.models.codec import CodecConfig, build_codec
from soundry.models.export import export_codec
from soundry.train.auxiliary import content_hash
from soundry.train.checkpoint import CheckpointManager, load_tensors
from soundry.train.logging import read_metrics

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "data.sample_rate=8000", "data.segment_seconds=0.064", "data.batch_size=2",
    "data.valid_count=1", "toy.items_per_epoch=6", "toy.fm_weight=2.0",
    "schedule.phases=[{name: warmup, steps: 3, discriminator: false, adversarial: false}, "
    "{name: gan, ramp_steps: 2}]",
    "train.max_steps=10", "train.checkpoint_every=3", "train.log_every=1",
    "train.keep_last=10", "train.progress=false",
    "train.tensorboard=false", "train.ema=null", "train.valid_every=5",
    "train.best_metric=l1", "train.best_mode=min",
]
LAUNCH = "import sys, platform_task; from soundry.cli import main; sys.exit(main())"


def _teacher(root: Path) -> Path:
    torch.manual_seed(7)
    codec = build_codec(CodecConfig(sample_rate=8000, encoder_dim=4, decoder_dim=16,
                                    latent_dim=8, strides=[2, 4],
                                    quantizer={"type": "none"}))
    return export_codec(codec, root / "teacher")


def _train(run: Path, teacher: Path, *extra: str, resume: bool = False,
           kill_at: int | None = None) -> int:
    args = ["--resume", str(run)] if resume else \
        ["--out", str(run), "task=platform", f"teacher={teacher}", *OVERRIDES]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(ROOT / "src")])}
    if kill_at is not None:
        env["SOUNDRY_TEST_KILL_AT_STEP"] = str(kill_at)
    recipe = [] if resume else [str(ROOT / "recipes" / "toy.yaml")]
    done = subprocess.run([sys.executable, "-c", LAUNCH, "train", *recipe, *args, *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")
             and k != "health_seconds"} for r in read_metrics(run / "metrics.jsonl")]


def test_a_system_of_shared_pieces_trains_resumes_and_keeps_its_teacher_out(
        tmp_path: Path) -> None:
    teacher = _teacher(tmp_path)
    digest = content_hash(teacher)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _train(ref, teacher) == 0
    assert _train(killed, teacher, kill_at=8) == -signal.SIGKILL
    assert CheckpointManager(killed, 10).latest().name == "step_00000006"
    assert _train(killed, teacher, resume=True) == 0

    rows = [r for r in _metrics(ref) if r.get("kind") == "train"]
    # its own terms and the shared adversarial ones, each phase at its steps
    assert "loss/distill" in rows[0] and "loss/adversarial" not in rows[0]
    assert {"loss/d", "loss/adversarial", "loss/feature_matching"} <= set(rows[-1])
    assert rows[-1]["loss/distill"] < rows[0]["loss/distill"]  # the head learns the teacher

    # exact resume: every logged figure and every saved tensor
    assert _metrics(killed) == _metrics(ref)
    last_ref = CheckpointManager(ref, 10).latest()
    last_run = CheckpointManager(killed, 10).latest()
    assert last_ref.name == last_run.name == "step_00000010"
    for f in sorted(last_ref.glob("*.safetensors")):
        a, b = load_tensors(f), load_tensors(last_run / f.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f.name

    # the teacher: not in a checkpoint, not changed, recorded with its hash
    names = sorted(p.name for p in last_ref.iterdir())
    assert not [n for n in names if "teacher" in n], names
    state = json.loads((last_ref / "state.json").read_text())
    assert sorted(state["networks"]) == ["discriminator", "generator"]
    teacher_keys = set(load_tensors(teacher / "model.safetensors"))
    for f in last_ref.glob("*.safetensors"):
        assert not any(k.startswith("teacher") for k in load_tensors(f))
    assert len(teacher_keys) > 0 and content_hash(teacher) == digest
    prov = json.loads((ref / "provenance.json").read_text())
    assert prov["auxiliary"]["teacher"]["sha256"] == digest
    assert prov["auxiliary"]["teacher"]["source"] == str(teacher.resolve())
