"""Slow: the default tiny codec recipe really learns on toy data, for two seeds.

The real command line and the real recipe (`soundry train recipes/codec/tiny.yaml`), two
seeds side by side with one thread each, then the demo's verdict on each export: training
completed, the output is sane on every validation clip (not silent, constant or at the
rail), mel distance at most half the untrained model's, codebook usage >= 25% on average
and >= 10% on every level, and no error-level health finding nor a data alarm in either
run. `benchmarks/codec_robustness.py` runs the full distribution (5 + 2 seeds, two
datasets).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soundry.data.loader import build_valid_items
from soundry.eval.verdict import codec_verdict, score_codec
from soundry.health import read_findings
from soundry.models.codec import build_codec
from soundry.models.codec_io import load_codec
from soundry.paths import recipes_dir
from soundry.train.export import export_run
from soundry.train.recipes import load_recipe

pytestmark = pytest.mark.slow


def test_tiny_codec_learns_on_toy_data_for_two_seeds(tmp_path: Path) -> None:
    from soundry.data.synth import synthesize

    train, valid = tmp_path / "train", tmp_path / "valid"
    for i, kind in enumerate(["tones", "drums", "speechlike", "music"]):
        synthesize(train / kind, kind, 24, 2.0, 16000, seed=i)
        synthesize(valid / kind, kind, 2, 2.0, 16000, seed=100 + i)
    recipe_path = recipes_dir() / "codec/tiny.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for seed in (0, 1):
        cmd = [sys.executable, "-m", "soundry", "train", str(recipe_path), "--data", str(train),
               "--valid", str(valid), "--out", str(tmp_path / f"run{seed}"), "--threads", "1",
               f"seed={seed}", "train.progress=false", "data.num_workers=0"]
        log = open(tmp_path / f"run{seed}.log", "w")  # noqa: SIM115  (closed below)
        procs[seed] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    try:
        codes = {seed: proc.wait(timeout=1800) for seed, (proc, _) in procs.items()}
    finally:  # a timeout or failure leaves no training running
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    for seed, code in codes.items():
        assert code == 0, (tmp_path / f"run{seed}.log").read_text()[-3000:]
    for seed in (0, 1):
        export_run(tmp_path / f"run{seed}", tmp_path / f"model{seed}")
        recipe = load_recipe(tmp_path / f"run{seed}" / "config.yaml")
        codec = load_codec(tmp_path / f"model{seed}")
        clips = build_valid_items(recipe.data, hop=codec.hop_length)
        trained = score_codec(codec, clips)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            untrained = score_codec(build_codec(recipe.model), clips)
        verdict = codec_verdict(trained.mel_distance, untrained.mel_distance, trained.usage,
                                trained.clip_problems)
        assert verdict.learned, f"seed {seed}: {verdict.line()}"
        # a clean run raises no error-level health finding (false alarms teach users to
        # ignore the monitors)
        found = read_findings(tmp_path / f"run{seed}")
        errors = [f.line() for f in found if f.severity == "error"]
        assert not errors, errors
        # nor a warning about the data it was given: toy clips longer than the crop, at the
        # recipe's own rate
        data_alarms = [f.line() for f in found if f.monitor in ("crop_coverage", "sample_rate")]
        assert not data_alarms, data_alarms
