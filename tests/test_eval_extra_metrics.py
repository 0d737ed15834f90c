"""Loudness difference, PESQ, STOI and ViSQOL against known cases."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from soundry.errors import MissingDependencyError, SoundryError
from soundry.eval import extra_metrics as xm
from soundry.eval.runner import resolve_extra_metrics

SR = 16_000


def speechlike(seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    """Harmonics of a gliding 120-180 Hz pitch, syllable-rate amplitude modulation: [1, T]."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 16))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 2
    x = x * envelope
    return (0.3 * x / np.abs(x).max())[None].astype(np.float32)


def with_noise(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    noise *= np.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def test_loudness_difference_of_a_known_gain() -> None:
    pytest.importorskip("pyloudnorm", reason="pyloudnorm ([eval] extra) is not installed")
    t = np.arange(2 * 48_000) / 48_000
    ref = (0.5 * np.sin(2 * np.pi * 997 * t))[None]
    # A gain of g changes BS.1770 loudness by exactly 20 log10 g.
    assert xm.loudness_diff_lufs(ref, 0.5 * ref, 48_000) == pytest.approx(-6.0206, abs=0.01)
    assert xm.loudness_diff_lufs(ref, 2 * ref, 48_000) == pytest.approx(6.0206, abs=0.01)
    assert xm.loudness_diff_lufs(ref, ref, 48_000) == pytest.approx(0.0, abs=1e-9)
    # Stereo is one programme (channel powers summed), not two.
    stereo = np.concatenate([ref, ref])
    assert xm.loudness_diff_lufs(stereo, stereo * 0.1, 48_000) == pytest.approx(-20, abs=0.01)


def test_pesq_wideband_known_cases() -> None:
    pytest.importorskip("pesq", reason="pesq ([eval] extra) is not installed")
    ref = speechlike()
    identical = xm.pesq_wb(ref, ref, SR)
    assert identical > 4.5  # wide-band PESQ tops out at about 4.64
    clean, noisy = xm.pesq_wb(ref, with_noise(ref, 30), SR), xm.pesq_wb(ref, with_noise(ref, 5), SR)
    assert identical > clean > noisy >= 1.0
    # Another rate is resampled to 16 kHz first: same score for the same content.
    ref48 = speechlike(sr=48_000)
    assert xm.pesq_wb(ref48, ref48, 48_000) == pytest.approx(identical, abs=0.05)


def test_pesq_unscorable_clip_is_nan_not_a_crash() -> None:
    pytest.importorskip("pesq", reason="pesq ([eval] extra) is not installed")
    silence = np.zeros((1, SR), dtype=np.float32)
    assert np.isnan(xm.pesq_wb(silence, silence, SR))


def test_stoi_known_cases_and_channel_average() -> None:
    pytest.importorskip("pystoi", reason="pystoi ([eval] extra) is not installed")
    ref = speechlike()
    assert xm.stoi(ref, ref, SR) == pytest.approx(1.0, abs=1e-6)
    high, low = xm.stoi(ref, with_noise(ref, 10), SR), xm.stoi(ref, with_noise(ref, -10), SR)
    assert 1.0 > high > low > 0.0
    stereo_ref = np.concatenate([ref, ref])
    stereo_out = np.concatenate([ref, with_noise(ref, -10)])
    assert xm.stoi(stereo_ref, stereo_out, SR) == pytest.approx((1.0 + low) / 2, abs=1e-6)


def test_visqol_audio_mode_known_cases() -> None:
    pytest.importorskip("visqol", reason="visqol-python ([eval] extra) is not installed")
    ref = speechlike(seconds=2.0)
    identical = xm.visqol(ref, ref, SR)
    assert identical > 4.5  # audio mode's ceiling is about 4.73
    assert xm.visqol(ref, with_noise(ref, 0), SR) < identical - 1.0
    # Too short for ViSQOL's patches: NaN, with a warning, not an exception.
    assert np.isnan(xm.visqol(ref[:, :1000], ref[:, :1000], SR))


def test_visqol_speech_mode_known_cases() -> None:
    pytest.importorskip("visqol", reason="visqol-python ([eval] extra) is not installed")
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert ([eval] extra) is not installed")
    ref = speechlike(seconds=3.0)
    identical = xm.visqol_speech(ref, ref, SR)
    assert identical > 4.0
    # the lattice mapper is harsh on broadband noise between the sparse harmonics of this
    # synthetic voice: 50 dB SNR already costs ~0.7, 45 dB ~2.5
    noisy = [xm.visqol_speech(ref, with_noise(ref, snr), SR) for snr in (50, 45)]
    assert identical > noisy[0] + 0.3 and noisy[0] > noisy[1] + 0.5
    # at 32 kHz the inputs are resampled to the mode's 16 kHz first: about the same score
    import soxr

    up = lambda x: soxr.resample(x[0].astype(np.float64), SR, 32_000)[None]  # noqa: E731
    assert xm.visqol_speech(up(ref), up(with_noise(ref, 50)), 32_000) == pytest.approx(
        noisy[0], abs=0.3)


@pytest.mark.parametrize(
    ("metric", "module", "package"),
    [
        ("pesq", "pesq", "pesq"),
        ("stoi", "pystoi", "pystoi"),
        ("visqol", "visqol", "visqol-python"),
        ("visqol_speech", "ai_edge_litert", "ai-edge-litert"),
        ("loudness_diff_lufs", "pyloudnorm", "pyloudnorm"),
    ],
)
def test_missing_package_gives_a_clear_message(monkeypatch, metric, module, package) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    ref = speechlike(1.0)
    with pytest.raises(
        MissingDependencyError, match=rf"'{package}'.*pip install 'soundry\[eval\]'"
    ):
        xm.EXTRA_METRICS[metric].fn(ref, ref, SR)
    reasons = xm.availability()
    assert reasons[metric] is not None and "soundry[eval]" in reasons[metric]
    # 'auto' skips it with the reason; naming it explicitly is an error.
    names, skipped = resolve_extra_metrics("auto")
    assert metric not in names and metric in skipped
    with pytest.raises(MissingDependencyError):
        resolve_extra_metrics(metric)


def test_metric_selection() -> None:
    assert resolve_extra_metrics("none") == ([], {})
    with pytest.raises(SoundryError, match="unknown metric 'pesqq'"):
        resolve_extra_metrics("pesqq")
