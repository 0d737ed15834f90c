"""Augmentations and degradations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from soundry.audio.augment import (
    Augmenter,
    allpass_coefficients,
    apply_gain,
    dequantize,
    hard_clip,
    lowpass,
    phase_mangle,
    pitch_input_frames,
    pitch_shift,
)
from soundry.data.config import AugmentConfig

SR = 16000


def _noise(n: int = SR, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((1, n))).astype(np.float32)


def _peak_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


@pytest.mark.parametrize("freq", [20.0, 300.0, 2000.0])
def test_allpass_keeps_magnitude_and_changes_phase(freq):
    b, a = allpass_coefficients(freq, SR, 0.99)
    w, h = signal.freqz(b, a, worN=2**16, fs=SR)
    np.testing.assert_allclose(np.abs(h), 1.0, atol=1e-9)
    # the phase falls monotonically through 2 pi, half of it around the centre frequency
    phase = np.unwrap(np.angle(h))
    assert np.all(np.diff(phase) <= 1e-12)
    assert phase[-1] == pytest.approx(-2 * np.pi, abs=1e-3)
    half_way = w[np.argmin(np.abs(phase + np.pi))]
    assert freq / 1.5 < half_way < freq * 1.7

    # on real audio: a long impulse response decays, so the magnitude spectrum is kept
    # while the phase spectrum changes
    x = _noise(SR * 2)
    y = phase_mangle(x, SR, freq)
    assert y.shape == x.shape and y.dtype == np.float32
    tail = 4000  # room for the filter's ringing: circular equals linear convolution
    padded = np.pad(x[0], (0, tail))
    X = np.fft.rfft(padded)
    Y = np.fft.rfft(phase_mangle(padded[None], SR, freq)[0])
    np.testing.assert_allclose(np.abs(Y), np.abs(X), rtol=1e-3, atol=1e-4 * np.abs(X).max())
    freqs = np.fft.rfftfreq(len(padded), 1 / SR)
    near = np.abs(freqs - freq) < 10.0
    assert np.mean(np.abs(np.angle(Y[near] / X[near]))) > 1.0
    assert not np.allclose(y, x, atol=1e-3)


def test_gain_polarity_dequantize_primitives():
    x = _noise()
    assert np.allclose(apply_gain(x, -6.0), x * 10 ** (-6 / 20), atol=1e-7)
    loud = apply_gain(x, 40.0)
    assert np.max(np.abs(loud)) == pytest.approx(1.0, abs=1e-6)  # peak limited
    rng = np.random.default_rng(0)
    d = dequantize(x, rng, bits=16)
    step = 2.0 / 2**16
    assert np.max(np.abs(d - x)) <= step / 2 + 1e-9
    assert np.std(d - x) == pytest.approx(step / np.sqrt(12), rel=0.05)


def test_pitch_shift_scales_frequency_and_length():
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    for ratio in (0.8, 1.25):
        y = pitch_shift(x, SR, ratio)
        assert y.shape[1] == pytest.approx(SR / ratio, abs=2)
        assert _peak_freq(y[0], SR) == pytest.approx(440 * ratio, abs=2)
        assert pitch_input_frames(8000, ratio) >= 8000 * ratio


def _cfg(**probs: float) -> AugmentConfig:
    return AugmentConfig.model_validate({k: {"prob": p} for k, p in probs.items()})


def test_augmenter_is_seeded_and_respects_probabilities():
    x = _noise()
    everything = Augmenter(_cfg(gain=1, polarity=1, phase=1, dequantize=1, pitch=1), SR)
    p1 = everything.draw(np.random.default_rng(5))
    p2 = everything.draw(np.random.default_rng(5))
    assert p1 == p2
    assert set(p1) == {"gain_db", "polarity", "phase_hz", "dequantize_bits", "pitch_ratio"}
    y1 = everything.apply(x, p1, np.random.default_rng(1), frames=8000)
    y2 = everything.apply(x, p2, np.random.default_rng(1), frames=8000)
    assert y1.shape == (1, 8000) and np.array_equal(y1, y2)

    nothing = Augmenter(_cfg(), SR)
    assert not nothing.active
    assert nothing.draw(np.random.default_rng(0)) == {}
    assert np.array_equal(nothing.apply(x, {}, np.random.default_rng(0)), x)

    half = Augmenter(_cfg(polarity=0.5), SR)
    flips = [bool(half.draw(np.random.default_rng(s))) for s in range(400)]
    assert 0.4 < np.mean(flips) < 0.6

    cfg = AugmentConfig.model_validate({"gain": {"prob": 1, "min_db": -6, "max_db": -3}})
    gains = [Augmenter(cfg, SR).draw(np.random.default_rng(s))["gain_db"] for s in range(200)]
    assert min(gains) >= -6 and max(gains) <= -3 and np.std(gains) > 0.5


def test_changing_one_probability_keeps_the_other_parameters():
    a = Augmenter(_cfg(gain=1, phase=1), SR).draw(np.random.default_rng(3))
    b = Augmenter(_cfg(gain=1, phase=1, pitch=1), SR).draw(np.random.default_rng(3))
    assert a["gain_db"] == b["gain_db"] and a["phase_hz"] == b["phase_hz"]


def test_degradations():
    t = np.arange(SR) / SR
    x = (0.3 * (np.sin(2 * np.pi * 200 * t) + np.sin(2 * np.pi * 6000 * t))).astype(np.float32)
    y = lowpass(x[None], SR, 1000.0)[0]
    spec_x, spec_y = np.abs(np.fft.rfft(x)), np.abs(np.fft.rfft(y))
    assert spec_y[6000] < 1e-3 * spec_x[6000] and spec_y[200] > 0.8 * spec_x[200]
    clipped = hard_clip(x[None], 0.5)
    assert np.max(np.abs(clipped)) == pytest.approx(0.5 * np.max(np.abs(x)))
