"""Waveform augmentations (and the primitives of `soundry.audio.degrade`) on float32 numpy
audio [C, T].

Each transform is a plain function of explicit parameters; `Augmenter` (and `Degrader`) draw
those parameters (and whether each transform happens at all) from a numpy Generator handed
to them, so an item's augmentations depend only on how that generator was seeded. The drawn
parameters are returned as a small dict, which `soundry data preview` lists per item.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import signal

from soundry.audio.io import resample

if TYPE_CHECKING:  # the policies only read config attributes; audio/ does not import data/
    from soundry.data.config import AugmentConfig

# ----------------------------------------------------------------------------- primitives


def allpass_coefficients(freq_hz: float, sample_rate: int, r: float = 0.99) -> tuple:
    """(b, a) of RAVE's second-order all-pass centred at `freq_hz` with pole radius `r`.

    H(z) = (r^2 - 2 r cos(w) z^-1 + z^-2) / (1 - 2 r cos(w) z^-1 + r^2 z^-2), w = 2 pi f / sr.
    The numerator is the reversed denominator, so |H| = 1 at every frequency while the phase
    turns by 2 pi around `freq_hz` (faster the closer `r` is to 1).
    """
    w = 2.0 * math.pi * freq_hz / sample_rate
    c = -2.0 * r * math.cos(w)
    return np.array([r * r, c, 1.0]), np.array([1.0, c, r * r])


def phase_mangle(
    audio: np.ndarray, sample_rate: int, freq_hz: float, r: float = 0.99
) -> np.ndarray:
    """Filter [C, T] audio through the all-pass of `allpass_coefficients` (scipy's C lfilter)."""
    b, a = allpass_coefficients(freq_hz, sample_rate, r)
    return signal.lfilter(b, a, audio, axis=-1).astype(np.float32)


def apply_gain(audio: np.ndarray, gain_db: float, peak: float | None = 1.0) -> np.ndarray:
    """Multiply by 10^(gain_db / 20); then scale down if the peak would exceed `peak`."""
    out = audio * np.float32(10.0 ** (gain_db / 20.0))
    if peak is not None and out.size:
        top = float(np.max(np.abs(out)))
        if top > peak:
            out *= np.float32(peak / top)
    return out.astype(np.float32, copy=False)


def dequantize(audio: np.ndarray, rng: np.random.Generator, bits: int = 16) -> np.ndarray:
    """Add uniform noise of +-half a quantisation step at `bits` resolution over [-1, 1].

    Hides the staircase of integer-coded sources so a model cannot learn the bit depth.
    """
    step = 2.0 / (2**bits)
    noise = rng.uniform(-0.5 * step, 0.5 * step, size=audio.shape).astype(np.float32)
    return audio + noise


def pitch_shift(audio: np.ndarray, sample_rate: int, ratio: float) -> np.ndarray:
    """Resample [C, T] audio so it plays `ratio` times faster: pitch and tempo scale by ratio.

    The input is treated as if it were recorded at sample_rate * ratio, so the output has
    about T / ratio samples. The ratio is rounded to a rational rate (an integer number of Hz)
    so soxr uses an exact rational resampler.
    """
    in_rate = max(1, round(sample_rate * ratio))
    return resample(audio, in_rate, sample_rate)


def pitch_input_frames(frames: int, ratio: float) -> int:
    """Frames to read so that `pitch_shift` by `ratio` yields at least `frames` samples."""
    return int(math.ceil(frames * ratio)) + 1


def fit_length(audio: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad [C, T] audio at the end to exactly `frames` samples."""
    length = audio.shape[-1]
    if length == frames:
        return audio
    if length > frames:
        return np.ascontiguousarray(audio[..., :frames])
    pad = np.zeros((*audio.shape[:-1], frames - length), dtype=np.float32)
    return np.concatenate([audio.astype(np.float32, copy=False), pad], axis=-1)


@lru_cache(maxsize=256)
def _lowpass_sos(cutoff_hz: float, sample_rate: int, order: int) -> np.ndarray:
    return signal.butter(order, cutoff_hz, btype="lowpass", fs=sample_rate, output="sos")


def lowpass(audio: np.ndarray, sample_rate: int, cutoff_hz: float, order: int = 8) -> np.ndarray:
    """Butterworth low-pass (second-order sections); the cutoff is capped below Nyquist."""
    cutoff_hz = min(float(cutoff_hz), 0.45 * sample_rate)
    sos = _lowpass_sos(round(cutoff_hz, 1), int(sample_rate), int(order))
    return signal.sosfilt(sos, audio, axis=-1).astype(np.float32)


def hard_clip(audio: np.ndarray, level: float) -> np.ndarray:
    """Clip at `level` times the clip's own peak (so the amount of distortion is relative)."""
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    if top <= 0.0:
        return audio
    limit = np.float32(level * top)
    return np.clip(audio, -limit, limit)


# ----------------------------------------------------------------------------- random policies


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


class Augmenter:
    """Draws and applies the augmentations of an `AugmentConfig` at `sample_rate` Hz.

    Usage for one item (so the crop can be read at the length pitch shifting needs)::

        params = aug.draw(rng)
        x = read(aug.input_frames(frames, params))
        x = aug.apply(x, params, rng, frames)

    `params` holds only the transforms that fire, e.g. {"phase_hz": 312.5, "gain_db": -3.1}.
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int) -> None:
        self.cfg = cfg
        self.sample_rate = int(sample_rate)

    @property
    def active(self) -> bool:
        """True when any augmentation has a non-zero probability."""
        c = self.cfg
        probs = (c.gain.prob, c.polarity.prob, c.phase.prob, c.dequantize.prob, c.pitch.prob)
        return any(p > 0 for p in probs)

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """Decide which transforms fire and with what parameters.

        Every transform consumes the same draws whether or not it fires, so changing one
        probability does not reshuffle the parameters of the others.
        """
        c = self.cfg
        params: dict[str, Any] = {}
        u = rng.random(5)
        pitch = float(rng.uniform(c.pitch.min_ratio, c.pitch.max_ratio))
        phase_hz = log_uniform(rng, c.phase.min_hz, min(c.phase.max_hz, 0.49 * self.sample_rate))
        gain_db = float(rng.uniform(c.gain.min_db, c.gain.max_db))
        if u[0] < c.pitch.prob:
            params["pitch_ratio"] = round(pitch, 4)
        if u[1] < c.phase.prob:
            params["phase_hz"] = round(phase_hz, 2)
        if u[2] < c.gain.prob:
            params["gain_db"] = round(gain_db, 3)
        if u[3] < c.polarity.prob:
            params["polarity"] = -1
        if u[4] < c.dequantize.prob:
            params["dequantize_bits"] = c.dequantize.bits
        return params

    def input_frames(self, frames: int, params: dict[str, Any]) -> int:
        """Frames to read so that the output of `apply` has `frames` samples."""
        if "pitch_ratio" in params:
            return pitch_input_frames(frames, params["pitch_ratio"])
        return frames

    def apply(
        self,
        audio: np.ndarray,
        params: dict[str, Any],
        rng: np.random.Generator,
        frames: int | None = None,
    ) -> np.ndarray:
        """Apply `params` (from `draw`) to [C, T] audio; the result has `frames` samples."""
        if "pitch_ratio" in params:
            audio = pitch_shift(audio, self.sample_rate, params["pitch_ratio"])
        if frames is not None:
            audio = fit_length(audio, frames)
        return self.apply_level(audio, params, rng)

    def apply_level(
        self, audio: np.ndarray, params: dict[str, Any], rng: np.random.Generator
    ) -> np.ndarray:
        """Apply every transform in `params` except pitch shifting (length is unchanged)."""
        if "phase_hz" in params:
            audio = phase_mangle(audio, self.sample_rate, params["phase_hz"], self.cfg.phase.r)
        if "gain_db" in params:
            audio = apply_gain(audio, params["gain_db"])
        if "polarity" in params:
            audio = -audio
        if "dequantize_bits" in params:
            audio = dequantize(audio, rng, params["dequantize_bits"])
        return audio.astype(np.float32, copy=False)
