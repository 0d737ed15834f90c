"""Loudness measurement and normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from soundry.audio import loudness
from soundry.audio.loudness import SILENCE_DB, measure_loudness, normalize_loudness, rms_db


def _sine(amp: float, seconds: float, sr: int = 16000, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]


def test_lufs_of_a_1khz_sine_matches_its_level():
    pytest.importorskip("pyloudnorm")
    for amp in (0.5, 0.1):
        # BS.1770 is calibrated so a 1 kHz sine reads its RMS level in dB (-3.01 dB at 0 dBFS)
        expected = 20 * np.log10(amp) - 3.01
        assert measure_loudness(_sine(amp, 2.0), 16000) == pytest.approx(expected, abs=0.3)


def test_short_clips_and_missing_pyloudnorm_fall_back_to_rms(monkeypatch):
    short = _sine(0.5, 0.1)  # shorter than one 400 ms gating block
    assert measure_loudness(short, 16000) == pytest.approx(rms_db(short))
    assert rms_db(short) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    loudness._meter.cache_clear()
    monkeypatch.setattr(loudness, "_meter", lambda sr: None)
    long = _sine(0.5, 1.0)
    assert measure_loudness(long, 16000) == pytest.approx(rms_db(long))


def test_silence_is_finite():
    silent = np.zeros((1, 16000), dtype=np.float32)
    assert measure_loudness(silent, 16000) == SILENCE_DB
    assert rms_db(silent[:, :100]) == SILENCE_DB
    assert np.array_equal(normalize_loudness(silent, 16000, -16.0), silent)


def test_normalize_reaches_the_target_and_respects_the_peak():
    x = _sine(0.05, 1.0)
    y = normalize_loudness(x, 16000, -20.0)
    assert measure_loudness(y, 16000) == pytest.approx(-20.0, abs=0.1)
    assert y.dtype == np.float32
    # a target that would need a peak above 1 is limited instead
    z = normalize_loudness(x, 16000, 0.0)
    assert np.max(np.abs(z)) == pytest.approx(1.0, abs=1e-4)
    assert measure_loudness(z, 16000) < 0.0
