"""Core metrics against known cases and an independent numpy/librosa computation."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch

from soundry.errors import DataError
from soundry.eval.metrics import (
    bitrate_kbps,
    codebook_usage,
    l1,
    mel_distance,
    onset_pop,
    si_sdr,
    spectral_line,
    stft_distance,
)

SR = 16000


def _pair(seed: int = 0, t: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = 0.3 * rng.standard_normal((1, t))
    ref[0] += 0.5 * np.sin(2 * np.pi * 440 * np.arange(t) / SR)
    est = 0.8 * ref + 0.05 * rng.standard_normal((1, t))
    return ref, est


def _magnitude(x: np.ndarray, window: int) -> np.ndarray:
    return np.abs(librosa.stft(x, n_fft=window, hop_length=window // 4, window="hann",
                               center=True, pad_mode="reflect"))


def _reference_mel_distance(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    """DAC's 7-scale mel distance written out directly with numpy + librosa."""
    total = 0.0
    for n_mels, window in zip([5, 10, 20, 40, 80, 160, 320],
                              [32, 64, 128, 256, 512, 1024, 2048], strict=True):
        fb = librosa.filters.mel(sr=sr, n_fft=window, n_mels=n_mels, fmin=0.0, fmax=sr / 2,
                                 htk=False, norm="slaney")
        mr = np.einsum("mf,...ft->...mt", fb, _magnitude(ref, window))
        me = np.einsum("mf,...ft->...mt", fb, _magnitude(est, window))
        lr = np.log10(np.maximum(mr, 1e-5))
        le = np.log10(np.maximum(me, 1e-5))
        total += np.mean(np.abs(lr - le))
    return float(total)


def _reference_stft_distance(ref: np.ndarray, est: np.ndarray) -> float:
    total = 0.0
    for window in (2048, 512):
        mr, me = _magnitude(ref, window), _magnitude(est, window)
        total += np.mean(np.abs(2 * np.log10(np.maximum(mr, 1e-5))
                                - 2 * np.log10(np.maximum(me, 1e-5))))
        total += np.mean(np.abs(mr - me))
    return float(total)


def test_identical_signals() -> None:
    ref, _ = _pair()
    assert mel_distance(ref, ref.copy(), SR) == 0.0
    assert stft_distance(ref, ref.copy(), SR) == 0.0
    assert l1(ref, ref.copy()) == 0.0
    assert si_sdr(ref, ref.copy()) == math.inf


def test_mel_distance_matches_direct_librosa_computation() -> None:
    ref, est = _pair(seed=1)
    expected = _reference_mel_distance(ref, est, SR)
    assert expected > 0.1
    assert mel_distance(ref, est, SR) == pytest.approx(expected, abs=1e-4)
    ref44, est44 = _pair(seed=2, t=12000)
    assert mel_distance(ref44, est44, 44100) == pytest.approx(
        _reference_mel_distance(ref44, est44, 44100), abs=1e-4
    )


def test_stft_distance_matches_direct_computation() -> None:
    ref, est = _pair(seed=3)
    assert stft_distance(ref, est, SR) == pytest.approx(_reference_stft_distance(ref, est),
                                                        abs=1e-4)


def test_known_snr_gives_that_si_sdr() -> None:
    rng = np.random.default_rng(4)
    t = 16000
    ref = np.sin(2 * np.pi * 220 * np.arange(t) / SR) + 0.1 * rng.standard_normal(t)
    ref -= ref.mean()
    noise = rng.standard_normal(t)
    noise -= noise.mean()
    noise -= (noise @ ref) / (ref @ ref) * ref  # orthogonal to the reference
    for snr_db in (20.0, 3.0, -5.0):
        scaled = noise * np.sqrt((ref @ ref) / (noise @ noise) / 10 ** (snr_db / 10))
        assert si_sdr(ref[None], (ref + scaled)[None]) == pytest.approx(snr_db, abs=1e-6)


def test_si_sdr_is_scale_and_offset_invariant() -> None:
    ref, est = _pair(seed=5)
    base = si_sdr(ref, est)
    assert math.isfinite(base)
    assert si_sdr(ref, 3.7 * est) == pytest.approx(base, abs=1e-9)
    assert si_sdr(ref, 0.01 * est + 0.2) == pytest.approx(base, abs=1e-9)
    assert si_sdr(ref, -est) == pytest.approx(base, abs=1e-9)  # negative scales too
    assert si_sdr(ref, est + 0.1 * np.random.default_rng(9).standard_normal(est.shape)) < base
    assert si_sdr(ref, np.zeros_like(est)) == -math.inf


def test_inputs_numpy_torch_single_and_batched() -> None:
    ref, est = _pair(seed=6)
    values = [mel_distance(ref, est, SR), stft_distance(ref, est, SR), si_sdr(ref, est),
              l1(ref, est)]
    tr, te = torch.from_numpy(ref).float()[None], torch.from_numpy(est).float()[None]
    batched = [mel_distance(tr, te, SR), stft_distance(tr, te, SR), si_sdr(tr, te), l1(tr, te)]
    np.testing.assert_allclose(batched, values, rtol=1e-4)
    # a batch averages its items
    ref2, est2 = _pair(seed=7)
    both_r, both_e = np.stack([ref, ref2]), np.stack([est, est2])
    assert l1(both_r, both_e) == pytest.approx((l1(ref, est) + l1(ref2, est2)) / 2)
    assert si_sdr(both_r, both_e) == pytest.approx((si_sdr(ref, est) + si_sdr(ref2, est2)) / 2)


def test_mismatched_shapes_are_a_clear_error() -> None:
    ref, est = _pair()
    with pytest.raises(DataError, match="differ in shape"):
        mel_distance(ref, est[:, :-10], SR)
    with pytest.raises(DataError, match="channels"):
        l1(ref[0], est[0])


def test_codebook_usage_on_known_codes() -> None:
    size = 8
    level0 = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # two codes, equally often
    level1 = np.zeros(8, dtype=np.int64)  # one code
    level2 = np.arange(8)  # every code once
    codes = np.stack([level0, level1, level2])  # [K, N]
    stats = codebook_usage(codes, size)
    assert stats["usage"] == pytest.approx([2 / 8, 1 / 8, 1.0])
    assert stats["perplexity"] == pytest.approx([2.0, 1.0, 8.0])
    assert stats["dead"] == [6.0, 7.0, 0.0]
    # [B, K, F] with the same codes split over two items gives the same statistics
    batched = torch.from_numpy(codes).reshape(3, 2, 4).transpose(0, 1)
    assert codebook_usage(batched, size) == stats
    with pytest.raises(DataError, match="lie in"):
        codebook_usage(codes, 4)


def test_bitrate_arithmetic() -> None:
    assert bitrate_kbps(44100 / 512, 9, 1024) == pytest.approx(7.75, abs=0.01)  # DAC 44 kHz
    assert bitrate_kbps(16000 / 320, 12, 1024) == pytest.approx(6.0)  # DAC 16 kHz
    assert bitrate_kbps(75, 8, 2048) == pytest.approx(6.6)


def test_onset_pop_reads_a_click_at_the_start() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    ref = (0.3 * np.sin(2 * np.pi * 300 * t) * np.minimum(1, t / 0.005)).astype(np.float32)
    popped = ref.copy()
    popped[:80] += np.hanning(80).astype(np.float32) * 0.8  # a 5 ms bump
    assert onset_pop(ref[None], ref[None], sr) == pytest.approx(0.0, abs=1e-9)
    assert onset_pop(ref[None], popped[None], sr) > 5.0
    late = ref.copy()
    late[8000:8080] += np.hanning(80).astype(np.float32) * 0.8  # after the first 10 ms
    assert onset_pop(ref[None], late[None], sr) == pytest.approx(0.0, abs=1e-9)
    silent = np.zeros((1, sr), np.float32)
    assert onset_pop(silent, silent, sr) == pytest.approx(0.0)


def test_spectral_line_reads_a_stationary_tone_not_broadband_noise() -> None:
    sr = 16000
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal(sr) * 0.1).astype(np.float32)
    t = np.arange(sr) / sr
    line = ref + 0.05 * np.sin(2 * np.pi * 3000 * t).astype(np.float32)
    broad = ref + (rng.standard_normal(sr) * 0.03).astype(np.float32)
    assert spectral_line(ref[None], ref[None]) == pytest.approx(0.0, abs=1e-9)
    assert spectral_line(ref[None], line[None]) > 10.0
    assert spectral_line(ref[None], broad[None]) < 4.0  # chance excess of some bin


def test_artifact_measures_ignore_a_faint_floor_where_the_target_is_silent() -> None:
    sr = 16000
    rng = np.random.default_rng(1)
    t = np.arange(sr) / sr
    ref = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    ref[:4000] = 0.0  # silent start and
    ref[-4000:] = 0.0  # silent end, as zero-padded clips have
    faint = ref + (rng.standard_normal(sr) * 1e-4).astype(np.float32)  # -70 dB floor
    assert abs(onset_pop(ref[None], faint[None], sr)) < 1.0
    assert spectral_line(ref[None], faint[None]) < 3.0


def test_spectral_line_ignores_residue_in_a_whole_band() -> None:
    from scipy import signal

    sr = 16000
    rng = np.random.default_rng(2)
    ref = signal.lfilter(*signal.butter(6, 3000, fs=sr), rng.standard_normal(sr) * 0.1)
    hiss = signal.lfilter(*signal.butter(4, 5000, "high", fs=sr), rng.standard_normal(sr))
    residue = (ref + 0.01 * hiss).astype(np.float32)  # a denoiser's leftover high band
    ref = ref.astype(np.float32)
    assert spectral_line(ref[None], residue[None]) < 4.0
    t = np.arange(sr) / sr
    line = residue + (0.003 * np.sin(2 * np.pi * 6500 * t)).astype(np.float32)
    assert spectral_line(ref[None], line[None]) > 10.0
