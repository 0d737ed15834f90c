"""Loudness measurement and normalisation.

Loudness is integrated LUFS (ITU-R BS.1770, via `pyloudnorm`) when that package is installed
and the clip is at least one 400 ms gating block long; otherwise it is the RMS level in dBFS
(power summed over channels, as BS.1770 does), which agrees with LUFS within a dB or so for
mid-frequency material. Silence measures as `SILENCE_DB`, never -inf, so values stay finite
in logs and comparisons.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any

import numpy as np

#: loudness reported for digital silence (dB)
SILENCE_DB = -120.0
#: shortest clip pyloudnorm can gate (one 400 ms block)
_LUFS_BLOCK_SECONDS = 0.4


@lru_cache(maxsize=8)
def _meter(sample_rate: int) -> Any | None:
    try:
        import pyloudnorm
    except ImportError:
        return None
    return pyloudnorm.Meter(sample_rate)


def rms_db(audio: np.ndarray) -> float:
    """RMS level of [C, T] audio in dBFS, channel powers summed; SILENCE_DB for silence."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return SILENCE_DB
    power = float(np.mean(np.square(audio, dtype=np.float64), axis=-1).sum())
    if power <= 0.0:
        return SILENCE_DB
    return max(10.0 * np.log10(power), SILENCE_DB)


def measure_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Loudness of [C, T] audio: LUFS when possible, else RMS dBFS (see module docstring)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    meter = _meter(int(sample_rate))
    if meter is None or audio.shape[-1] < _LUFS_BLOCK_SECONDS * sample_rate or audio.shape[0] > 5:
        return rms_db(audio)
    with warnings.catch_warnings():
        # pyloudnorm warns about samples at full scale; loudness is still well defined
        warnings.simplefilter("ignore")
        value = float(meter.integrated_loudness(audio.T.astype(np.float64)))
    if not np.isfinite(value):
        return SILENCE_DB
    return max(value, SILENCE_DB)


def loudness_gain(
    audio: np.ndarray,
    sample_rate: int,
    target: float,
    peak: float | None = 1.0,
    level: float | None = None,
) -> float:
    """Linear gain that brings [C, T] audio to `target` loudness.

    Reduced when needed so the peak stays at or below `peak` (None: no limit); 1.0 for
    silence, which is never amplified without bound. `level`: the loudness of `audio` when
    it was already measured.
    """
    if level is None:
        level = measure_loudness(audio, sample_rate)
    if level <= SILENCE_DB:
        return 1.0
    gain = 10.0 ** ((target - level) / 20.0)
    if peak is not None:
        top = float(np.max(np.abs(audio))) if audio.size else 0.0
        if top * gain > peak:
            gain = peak / top
    return float(gain)


def normalize_loudness(
    audio: np.ndarray, sample_rate: int, target: float, peak: float | None = 1.0
) -> np.ndarray:
    """Scale [C, T] audio to `target` loudness (LUFS/dB, as `measure_loudness` measures).

    The gain is reduced when needed so that the peak stays at or below `peak` (None: no
    limit). Silence is returned unchanged rather than amplified without bound.
    """
    audio = np.asarray(audio, dtype=np.float32)
    gain = loudness_gain(audio, sample_rate, target, peak)
    return (audio * np.float32(gain)).astype(np.float32, copy=False)
