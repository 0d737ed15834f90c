"""ffmpeg baselines: spec parsing, delay alignment, and real Opus/MP3 round trips."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from soundry.audio import codecs as bl
from soundry.audio.codecs import BaselineSpec, align, estimate_delay, parse_baselines, roundtrip
from soundry.errors import SoundryError

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"
)


def music(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    rows = []
    for c in range(channels):
        x = sum(
            np.sin(2 * np.pi * f * (1 + c * 0.01) * t) / (i + 1)
            for i, f in enumerate([220, 330, 440, 660])
        )
        x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) + 0.02 * rng.standard_normal(len(t))
        rows.append(0.25 * x / np.abs(x).max())
    return np.stack(rows).astype(np.float32)


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))


def test_parse_baselines() -> None:
    assert parse_baselines("opus:6k,mp3:32k") == [
        BaselineSpec("opus", 6000),
        BaselineSpec("mp3", 32000),
    ]
    assert parse_baselines(" opus:6000 , vorbis:64kbps") == [
        BaselineSpec("opus", 6000),
        BaselineSpec("vorbis", 64000),
    ]
    assert parse_baselines("OPUS:1.5k")[0].name == "opus 1.5k"
    assert parse_baselines(None) == [] and parse_baselines("") == []
    with pytest.raises(SoundryError, match="unknown baseline codec 'flac'"):
        parse_baselines("flac:500k")
    with pytest.raises(SoundryError, match="codec:bitrate"):
        parse_baselines("opus")
    with pytest.raises(SoundryError, match="too low"):
        parse_baselines("opus:6")


@pytest.mark.parametrize("lag", [0, 37, -12, 400])
def test_delay_is_found_and_removed(lag: int) -> None:
    ref = music(0.5, 16_000, channels=2)
    late = np.pad(ref, ((0, 0), (lag, 0)))[:, : ref.shape[-1]] if lag >= 0 else ref[:, -lag:]
    assert estimate_delay(ref.sum(0), late.sum(0), max_delay=800) == lag
    fixed = align(ref, late, max_delay=800)
    assert fixed.shape == ref.shape
    keep = slice(abs(lag), ref.shape[-1] - abs(lag))  # the part both signals hold
    np.testing.assert_allclose(fixed[:, keep], ref[:, keep], atol=1e-7)
    # Beyond the search window nothing is shifted.
    if lag > 10:
        assert estimate_delay(ref.sum(0), late.sum(0), max_delay=10) != lag


def test_missing_ffmpeg_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(bl.shutil, "which", lambda name: None)
    with pytest.raises(bl.FFmpegMissingError, match="ffmpeg.*apt-get install ffmpeg"):
        roundtrip(music(0.2, 16_000), 16_000, BaselineSpec("opus", 6000))
    with pytest.raises(bl.FFmpegMissingError, match="drop --baseline"):
        bl.check_encoders([BaselineSpec("mp3", 32000)])
    bl.check_encoders([])  # no baselines: ffmpeg not needed


@needs_ffmpeg
@pytest.mark.parametrize(
    ("spec", "sr", "channels", "min_snr"),
    [
        (BaselineSpec("opus", 24000), 16_000, 1, 3.0),
        # At 6 kbit/s Opus codes stereo as mono; our channels differ slightly, so SNR is low.
        (BaselineSpec("opus", 6000), 44_100, 2, 0.5),
        (BaselineSpec("mp3", 32000), 22_050, 1, 3.0),
    ],
)
def test_roundtrip_keeps_rate_shape_and_alignment(spec, sr, channels, min_snr) -> None:
    ref = music(1.0, sr, channels)
    out = roundtrip(ref, sr, spec)
    assert out.shape == ref.shape and out.dtype == np.float32
    # Aligned: no residual delay, and a lossy but faithful copy.
    assert estimate_delay(ref.sum(0), out.sum(0), max_delay=200) == 0
    assert snr_db(ref, out) > min_snr
    assert not np.array_equal(ref, out)


@needs_ffmpeg
def test_higher_bitrate_is_closer() -> None:
    ref = music(1.0, 48_000)
    low = snr_db(ref, roundtrip(ref, 48_000, BaselineSpec("opus", 8000)))
    high = snr_db(ref, roundtrip(ref, 48_000, BaselineSpec("opus", 64000)))
    assert high > low + 3


@needs_ffmpeg
def test_check_encoders_accepts_installed_ones() -> None:
    bl.check_encoders(parse_baselines("opus:6k,mp3:32k"))


@needs_ffmpeg
def test_validation_baselines_score_each_codec_on_the_clips(tmp_path) -> None:
    from soundry.train.tasks.codec import write_valid_baselines

    items = [(f"c{i}", music(1.0, 16000, seed=i)) for i in range(2)]
    out = write_valid_baselines(tmp_path, "opus:6k,opus:24k", items, 16000)
    got = out["baselines"]
    assert set(got) == {"opus 6k", "opus 24k"} and out["clips"] == 2
    assert got["opus 24k"]["mel_distance"] < got["opus 6k"]["mel_distance"]
    assert got["opus 6k"]["kbps"] == 6.0
    import json

    assert json.loads((tmp_path / "valid" / "baselines.json").read_text()) == out


def test_validation_baselines_skip_without_ffmpeg(tmp_path, monkeypatch) -> None:
    from soundry.train.tasks.codec import write_valid_baselines

    monkeypatch.setattr(bl.shutil, "which", lambda name: None)
    out = write_valid_baselines(tmp_path, "opus:6k", [("c", music(0.5, 16000))], 16000)
    assert out["baselines"] == {} and "ffmpeg" in out["skipped"]["opus 6k"]


def test_codec_recipe_rejects_a_malformed_baseline() -> None:
    from soundry.errors import ConfigError
    from soundry.train.recipes import recipe_from_dict

    with pytest.raises((ConfigError, SoundryError), match="codec:bitrate"):
        recipe_from_dict({"task": "codec", "valid": {"baselines": "opus6k"}})
