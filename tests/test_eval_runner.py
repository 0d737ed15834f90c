"""`soundry eval`: statistics, per-file/summary outputs, baselines and a tiny codec."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from soundry.eval.runner import (
    SystemSpec,
    bootstrap_ci,
    describe,
    evaluate,
    format_table,
)

SR = 16_000
needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"
)


def tone(seconds: float, sr: int, f0: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3)) * (0.7 + 0.3 * np.sin(5 * t))
    return np.repeat((0.3 * x / np.abs(x).max())[None], channels, 0).astype(np.float32)


@pytest.fixture()
def audio_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    for name, seconds, sr, ch, f0 in [
        ("a.wav", 0.6, SR, 1, 220),
        ("b.flac", 0.8, SR, 1, 330),
        ("sub/c.wav", 0.5, 22_050, 2, 150),
    ]:
        sf.write(d / name, tone(seconds, sr, f0, ch).T, sr)
    (d / "broken.wav").write_bytes(b"RIFF not really a wav")
    return d


def noisy(snr_db: float):
    def fn(audio: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(int(audio.shape[-1]))
        noise = rng.standard_normal(audio.shape)
        noise *= np.sqrt(np.mean(audio**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
        return (audio + noise).astype(np.float32)

    return fn


def files_of(d: Path) -> list[Path]:
    from soundry.eval.runner import list_files

    return list_files(d)[0]


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(1).normal(5.0, 2.0, size=200).tolist()
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < np.mean(values) < hi
    # The half-width is about 1.96 standard errors.
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.std(values) / np.sqrt(200), rel=0.15)
    assert bootstrap_ci(values, seed=3) == (lo, hi)
    assert bootstrap_ci(values, seed=4) != (lo, hi)
    assert bootstrap_ci([2.5] * 10) == (2.5, 2.5)
    narrow = bootstrap_ci(values * 10, seed=3)
    assert narrow[1] - narrow[0] < hi - lo


def test_describe_counts_failures_and_infinities() -> None:
    d = describe([1.0, 2.0, float("nan"), 3.0, 10.0], seed=0, resamples=500)
    assert d["mean"] == 4.0 and d["median"] == 2.5 and d["n"] == 4 and d["n_failed"] == 1
    assert d["ci95"][0] < 4.0 < d["ci95"][1]
    inf = describe([float("inf"), 12.0], seed=0, resamples=100)
    assert inf["mean"] is None and inf["median"] is None and inf["n_infinite"] == 1
    assert describe([float("nan")], 0, 10)["mean"] is None


def test_evaluate_writes_per_file_and_summary(audio_dir: Path, tmp_path: Path, caplog) -> None:
    systems = [
        SystemSpec("noisy20", "model", noisy(20.0), bitrate_kbps=1.0),
        SystemSpec("half", "model", lambda a: 0.5 * a),
    ]
    out = tmp_path / "eval"
    with caplog.at_level(logging.WARNING, logger="soundry.eval"):
        result = evaluate(
            systems,
            files_of(audio_dir),
            root=audio_dir,
            sample_rate=SR,
            channels=1,
            out_dir=out,
            extra_metrics=["loudness_diff_lufs"],
            seed=0,
            resamples=500,
            progress=False,
        )
    # The 22.05 kHz stereo file is resampled and mixed down, with one notice each.
    assert "1 file(s) at 22050 Hz are resampled to the model's 16000 Hz" in caplog.text
    assert "1 file(s) with 2 channel(s) are converted to the model's 1" in caplog.text

    with (out / "per_file.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 2  # 3 readable files x 2 systems; the broken file was skipped
    assert {r["file"] for r in rows} == {"a.wav", "b.flac", "sub/c.wav"}
    assert list(rows[0]) == [
        "system",
        "file",
        "offset_seconds",
        "seconds",
        "mel_distance",
        "stft_distance",
        "si_sdr",
        "l1",
        "loudness_diff_lufs",
    ]
    by = {(r["system"], r["file"]): r for r in rows}
    assert float(by["noisy20", "a.wav"]["si_sdr"]) == pytest.approx(20.0, abs=0.3)
    assert float(by["half", "b.flac"]["loudness_diff_lufs"]) == pytest.approx(-6.02, abs=0.05)
    assert by["half", "a.wav"]["si_sdr"] == "inf"  # a scaled copy is a perfect match
    assert float(by["noisy20", "b.flac"]["seconds"]) == pytest.approx(0.8)

    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary and summary["files"] == 3
    assert summary["metrics"] == [
        "mel_distance",
        "stft_distance",
        "si_sdr",
        "l1",
        "loudness_diff_lufs",
    ]
    n20 = summary["systems"]["noisy20"]
    assert n20["bitrate_kbps"] == 1.0 and n20["n"] == 3
    si = n20["metrics"]["si_sdr"]
    values = [float(by["noisy20", f]["si_sdr"]) for f in ("a.wav", "b.flac", "sub/c.wav")]
    assert si["mean"] == pytest.approx(np.mean(values)) and si["median"] == pytest.approx(
        np.median(values)
    )
    assert si["ci95"][0] <= si["mean"] <= si["ci95"][1] and si["n"] == 3
    half = summary["systems"]["half"]["metrics"]
    assert half["si_sdr"]["mean"] is None and half["si_sdr"]["n_infinite"] == 3
    assert half["loudness_diff_lufs"]["mean"] == pytest.approx(-6.02, abs=0.05)
    assert half["mel_distance"]["mean"] > 0  # mel distance sees the level change

    # The intervals are a seeded function of the per-file values: recomputing gives the same.
    assert describe(values, seed=0, resamples=500) == si

    table = Console(record=True, width=250)
    table.print(format_table(summary))
    text = table.export_text()
    assert "noisy20" in text and "si_sdr ↑" in text and "mel_distance ↓" in text


def test_fixed_crops_are_centred(audio_dir: Path, tmp_path: Path) -> None:
    result = evaluate(
        [SystemSpec("id", "model", lambda a: a + 0.01)],
        files_of(audio_dir),
        root=audio_dir,
        sample_rate=SR,
        channels=1,
        out_dir=tmp_path / "e",
        crop_seconds=0.4,
        resamples=100,
        progress=False,
    )
    rows = {r["file"]: r for r in result.rows}
    assert rows["a.wav"]["seconds"] == pytest.approx(0.4)
    assert rows["a.wav"]["offset_seconds"] == pytest.approx(0.1)
    assert rows["b.flac"]["offset_seconds"] == pytest.approx(0.2)
    assert rows["sub/c.wav"]["offset_seconds"] == pytest.approx(0.05, abs=1e-3)
    assert result.summary["crop_seconds"] == 0.4


def tiny_codec():
    import torch

    from soundry.models.codec import CodecConfig, build_codec

    torch.manual_seed(0)
    return build_codec(CodecConfig())


@needs_ffmpeg
def test_eval_command_with_a_tiny_codec_and_an_opus_baseline(
    audio_dir: Path, tmp_path: Path, capsys
) -> None:
    from soundry.cli import main
    from soundry.models.export import export_codec

    codec = tiny_codec()
    model_dir = export_codec(codec, tmp_path / "tiny")
    out = tmp_path / "eval"
    argv = [
        "eval",
        str(model_dir),
        str(audio_dir),
        "--levels",
        "2",
        "--baseline",
        "opus:12k",
        "--out",
        str(out),
        "--crop-seconds",
        "0.4",
        "--metrics",
        "none",
        "--bootstrap",
        "200",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tiny" in printed and "opus 12k" in printed and str(out / "summary.json") in printed

    summary = json.loads((out / "summary.json").read_text())
    s = summary["systems"]
    assert list(s) == ["tiny", "opus 12k"]
    assert summary["levels"] == 2 and summary["files"] == 3 and summary["sample_rate"] == SR
    assert s["tiny"]["kind"] == "model" and s["tiny"]["levels"] == 2
    assert s["tiny"]["bitrate_kbps"] == pytest.approx(codec.bitrate_kbps(2))
    assert s["opus 12k"]["kind"] == "baseline" and s["opus 12k"]["bitrate_kbps"] == 12.0
    # An untrained codec is far worse than Opus at 12 kbit/s.
    mel = {k: v["metrics"]["mel_distance"]["mean"] for k, v in s.items()}
    assert mel["opus 12k"] < mel["tiny"]
    assert s["opus 12k"]["metrics"]["si_sdr"]["mean"] > 5
    with (out / "per_file.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6


def test_eval_command_without_ffmpeg_says_so(audio_dir, tmp_path, monkeypatch, capsys) -> None:
    from soundry.audio import codecs as baselines
    from soundry.cli import main

    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    argv = ["eval", str(tmp_path / "no-model"), str(audio_dir), "--baseline", "opus:6k"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "baselines need ffmpeg" in err and "apt-get install ffmpeg" in err


def test_eval_command_rejects_bad_levels(audio_dir: Path, tmp_path: Path, capsys) -> None:
    from soundry.cli import main
    from soundry.models.export import export_codec

    model_dir = export_codec(tiny_codec(), tmp_path / "tiny")
    argv = ["eval", str(model_dir), str(audio_dir), "--levels", "99", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "--levels must be between 1 and" in capsys.readouterr().err
