"""The transform system end to end: a tiny denoiser trains through the command line (GAN and
`gan=false`), its validation scores input and output, it exports, and `soundry enhance`
runs it over a file and a folder; recipe mistakes are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from soundry.cli import main
from soundry.config import validate
from soundry.errors import ConfigError
from soundry.train.tasks.transform import TransformRecipe, pair_scores

SR = 8000


def _tones(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    for i in range(n):
        f0 = rng.uniform(150, 600)
        x = 0.4 * np.sin(2 * np.pi * f0 * t) * np.exp(-t * rng.uniform(0.5, 3))
        sf.write(folder / f"tone{i}.wav", x.astype(np.float32), SR)
    return folder


def _recipe(gan: bool = True) -> dict:
    return {
        "task": "transform", "gan": gan,
        "data": {"sample_rate": SR, "segment_seconds": 0.25, "valid_seconds": 0.5,
                 "batch_size": 4, "num_workers": 0, "valid_count": 2,
                 "loudness": {"target_lufs": None, "min_lufs": None},
                 "degrade": {"noise": {"prob": 1.0, "min_snr_db": 0, "max_snr_db": 10,
                                       "colours": ["white", "pink"]},
                             "lowpass": {"prob": 0.0}, "clip": {"prob": 0.0},
                             "gain": {"prob": 0.0}}},
        "model": {"sample_rate": SR, "generator": "unet", "width": 8, "strides": [2, 4],
                  "dilations": [1, 3]},
        "discriminator": {"members": [
            {"type": "mpd", "periods": [2, 3], "channels": [4, 8]},
            {"type": "mrd", "windows": [256, 128], "channels": 4}]},
        "losses": {"mel": {"weight": 1.0, "windows": [64, 256], "n_mels": [16, 32]}},
        "schedule": {"phases": [{"name": "warmup", "steps": 3, "discriminator": False,
                                 "adversarial": False}, {"name": "gan"}]},
        "optim": {"generator": {"type": "adamw", "lr": 1e-3}},
    }


@pytest.mark.parametrize("gan", [True, False])
def test_train_validate_export_enhance(tmp_path: Path, gan: bool) -> None:
    train, valid = _tones(tmp_path / "train", 6, 0), _tones(tmp_path / "valid", 2, 1)
    recipe = tmp_path / "denoise.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(gan)))
    run, exp = tmp_path / "run", tmp_path / "exp"
    assert main(["train", str(recipe), "--data", str(train), "--valid", str(valid), "--out",
                 str(run), "--threads", "1", "train.max_steps=6", "train.valid_every=6",
                 "train.checkpoint_every=6", "train.progress=false", "train.ema=null"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid_row = next(m for m in rows if "valid/si_sdr_gain" in m)
    for key in ("valid/si_sdr", "valid/input_si_sdr", "valid/mel_distance",
                "valid/input_mel_distance", "valid/onset_pop_db", "valid/spectral_line_db"):
        assert np.isfinite(valid_row[key]), key
    assert valid_row["valid/input_si_sdr"] < 12.0  # the noise is there (0-10 dB SNR)
    trained_d = any("loss/d" in m for m in rows)
    assert trained_d == gan  # gan=false builds and trains no discriminator
    step_dir = sorted((run / "valid").iterdir())[-1]
    assert {"clip00", "clip01"} <= {p.name.split("_")[0] for p in step_dir.glob("*_in.wav")}

    assert main(["export", str(run), str(exp)]) == 0
    out = tmp_path / "clean.wav"
    assert main(["enhance", str(exp), str(valid / "tone0.wav"), str(out),
                 "--chunk-seconds", "0.3"]) == 0
    y, sr = sf.read(out)
    assert sr == SR and len(y) == SR and np.isfinite(y).all() and np.abs(y).max() > 1e-3
    (valid / "sub").mkdir()
    (valid / "sub" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    assert main(["enhance", str(exp), str(valid), str(tmp_path / "folder")]) == 0
    written = sorted(p.relative_to(tmp_path / "folder").as_posix()
                     for p in (tmp_path / "folder").rglob("*.wav"))
    assert written == ["tone0.wav", "tone1.wav"]  # the broken file is skipped, not fatal

    # soundry eval on paired folders: the model beside the unprocessed input
    noisy, clean = tmp_path / "noisy", tmp_path / "clean"
    noisy.mkdir()
    clean.mkdir()
    rng = np.random.default_rng(5)
    for i, f in enumerate(sorted(valid.glob("tone*.wav"))):
        x, _ = sf.read(f, dtype="float32")
        sf.write(clean / f"c{i}.wav", x, SR)
        sf.write(noisy / f"c{i}.flac", x + rng.standard_normal(len(x)).astype("float32")
                 * 0.05, SR)
    sf.write(noisy / "orphan.wav", np.zeros(SR, "float32"), SR)  # no target: skipped
    out_dir = tmp_path / "eval"
    assert main(["eval", str(exp), str(noisy), "--target", str(clean), "--out", str(out_dir),
                 "--metrics", "none", "--bootstrap", "50"]) == 0
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["files"] == 2 and set(summary["systems"]) == {"exp", "input (unprocessed)"}
    base = summary["systems"]["input (unprocessed)"]["metrics"]["si_sdr"]["mean"]
    assert 5.0 < base < 25.0  # the noise it was given, measured against the clean files
    assert main(["eval", str(exp), str(noisy), "--target", str(clean), "--levels", "2"]) == 2
    assert main(["eval", str(exp), str(noisy)]) == 2  # no --target


def test_pair_scores_measure_the_improvement() -> None:
    import torch

    rng = np.random.default_rng(0)
    clean = torch.from_numpy((np.sin(np.arange(SR) * 0.1) * 0.3).astype(np.float32))[None]
    noisy = clean + torch.from_numpy(rng.standard_normal(SR).astype(np.float32) * 0.1)[None]
    better = clean + (noisy - clean) * 0.1  # 20 dB less noise
    s = pair_scores(clean, noisy, better, SR)
    assert s["si_sdr_gain"] == pytest.approx(20.0, abs=0.5)
    assert s["mel_distance"] < s["input_mel_distance"]


@pytest.mark.parametrize("change, match", [
    ({"data": {"sample_rate": SR}}, "pairs"),
    ({"model": {"sample_rate": 16000}}, "must agree"),
    ({"gan": False, "losses": {"mel": {"weight": 0.0}, "waveform": {"weight": 0.0}}},
     "no loss"),
])
def test_recipe_mistakes_are_clear_errors(change: dict, match: str) -> None:
    base = _recipe()
    base.update(change)
    with pytest.raises(ConfigError, match=match):
        validate(TransformRecipe, base, source="test")


def test_enhance_refuses_another_kind_of_export(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from soundry.models.export import save_export
    from soundry.models.vae import VAEModelConfig, build_vae, vae_export_config

    vae = build_vae(validate(VAEModelConfig, {
        "sample_rate": SR, "seconds": 0.25, "latent_dim": 4,
        "net": {"strides": [2, 4], "encoder_dim": 4, "latent_dim": 8, "decoder_dim": 16}},
        source="test"))
    save_export(tmp_path / "vae", "vae", vae_export_config(vae), vae.state_dict())
    assert main(["enhance", str(tmp_path / "vae"), str(tmp_path), str(tmp_path / "o")]) == 2
    assert "not a transform export" in capsys.readouterr().err


def test_speech_scores_of_output_and_input() -> None:
    pytest.importorskip("pystoi", reason="STOI needs pystoi (the [eval] extra)")
    from soundry.train.tasks.transform import speech_scores

    rng = np.random.default_rng(0)
    t = np.arange(2 * 16000) / 16000
    clean = (np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 3 * t)) * 0.2)[None]
    noisy = clean + rng.standard_normal(clean.shape) * 0.2
    s = speech_scores(["stoi"], clean, noisy, clean.copy(), 16000)
    assert set(s) == {"stoi", "input_stoi"}
    assert s["stoi"] == pytest.approx(1.0, abs=1e-3) and s["input_stoi"] < s["stoi"]
    assert speech_scores([], clean, noisy, clean, 16000) == {}
