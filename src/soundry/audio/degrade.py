"""Degradations that make (degraded input, clean target) pairs on the fly.

Each degradation is registered in `DEGRADATIONS` under the name of its `data.degrade`
section and has two halves: `draw(rng)` picks its parameters from the configured ranges
(plain JSON values, kept in the item's metadata: a pair can be rebuilt from them), and
`apply(audio, params)` is a pure function of the clean [C, T] float32 audio and those
parameters (random realisations, such as the noise itself, are seeded by a `seed` the draw
made). `Degrader` runs the configured chain:

    params = degrader.draw(item_rng)        # {"noise": {"snr_db": 7.2, ...}, ...}
    noisy = degrader.apply(clean, params)   # same length as clean, in [-1, 1]

Every degradation keeps the length and the time alignment of its input: the model maps
input sample t to target sample t.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import signal

from soundry.audio.augment import (
    apply_gain,
    fit_length,
    hard_clip,
    log_uniform,
    lowpass,
    pitch_shift,
)
from soundry.audio.io import resample
from soundry.errors import ConfigError, DataError
from soundry.registry import Registry

if TYPE_CHECKING:
    from soundry.data.config import (
        ClipDegrade,
        CodecDegrade,
        DegradeConfig,
        GainDegrade,
        LowpassDegrade,
        NoiseDegrade,
        PitchDegrade,
        ReverbDegrade,
    )

log = logging.getLogger(__name__)

DEGRADATIONS: Registry[Any] = Registry("degradation")

#: spectral exponent a of each noise colour (power ~ f^-a)
COLOUR_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0, "violet": -2.0}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _power(audio: np.ndarray) -> float:
    return float(np.mean(np.square(audio, dtype=np.float64))) if audio.size else 0.0


def _audio_files(folder: str, what: str) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{what} folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ConfigError(f"{what} folder {root} holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
    return files


# ----------------------------------------------------------------------------- signals


def coloured_noise(shape: tuple[int, ...], colour: str, rng: np.random.Generator
                   ) -> np.ndarray:
    """Gaussian noise [..., T] whose power spectrum falls as f^-a (`COLOUR_EXPONENTS`),
    scaled to unit power. The DC bin is zeroed (a brown noise would otherwise drift)."""
    t = shape[-1]
    white = rng.standard_normal(shape)
    a = COLOUR_EXPONENTS[colour]
    if a == 0.0 or t < 2:
        out = white
    else:
        spec = np.fft.rfft(white, axis=-1)
        f = np.fft.rfftfreq(t)
        f[0] = f[1]
        spec *= f ** (-a / 2.0)
        spec[..., 0] = 0.0
        out = np.fft.irfft(spec, n=t, axis=-1)
    return (out / max(math.sqrt(float(np.mean(out**2))), 1e-12)).astype(np.float32)


def mix_at_snr(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """audio + noise scaled so that power(audio) / power(scaled noise) = snr_db exactly
    (a silent clip gets the noise at 1e-8 power times the ratio: a faint floor)."""
    p_signal = max(_power(audio), 1e-8)
    p_noise = max(_power(noise), 1e-20)
    scale = math.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (audio + noise * np.float32(scale)).astype(np.float32)


def bandlimit(audio: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Resample down to twice `cutoff_hz` and back up: nothing above the cutoff survives
    (soxr's anti-aliasing filter), the length is kept."""
    low_rate = max(2, round(2 * min(cutoff_hz, 0.45 * sample_rate)))
    back = resample(resample(audio, sample_rate, low_rate), low_rate, sample_rate)
    return fit_length(back, audio.shape[-1])


def _nearest_peak(mag: np.ndarray) -> np.ndarray:
    """For each bin of magnitudes [bins], the index of the spectral peak whose region it lies
    in (regions split half-way between neighbouring peaks)."""
    inner = (mag[1:-1] >= mag[:-2]) & (mag[1:-1] >= mag[2:])
    peaks = np.flatnonzero(inner) + 1
    if peaks.size == 0:
        peaks = np.array([int(np.argmax(mag))])
    edges = (peaks[:-1] + peaks[1:]) / 2.0
    return peaks[np.searchsorted(edges, np.arange(mag.size), side="right")]


def time_stretch(audio: np.ndarray, factor: float, n_fft: int = 1024) -> np.ndarray:
    """Phase-vocoder time stretch of [C, T] audio to about T * factor samples, pitch kept
    (hop n_fft / 4, Hann windows). Spectral peaks advance by their measured frequency; the
    bins around each peak keep their phase offset to it (identity phase locking, Laroche &
    Dolson), so a partial's bins stay coherent and the level is kept."""
    hop = n_fft // 4
    window = signal.get_window("hann", n_fft)
    c, t = audio.shape
    pad = np.pad(audio.astype(np.float64), ((0, 0), (n_fft, n_fft + hop)))
    _, _, spec = signal.stft(pad, nperseg=n_fft, noverlap=n_fft - hop, window=window,
                             boundary=None, padded=False)  # [C, bins, frames]
    frames = spec.shape[-1]
    steps = np.arange(0.0, frames - 1, 1.0 / factor)
    expected = 2 * np.pi * hop * np.arange(spec.shape[1]) / n_fft
    angles = np.angle(spec)
    phase = angles[..., 0].copy()
    out = np.empty((c, spec.shape[1], len(steps)), dtype=np.complex128)
    for k, pos in enumerate(steps):
        i, frac = int(pos), pos - int(pos)
        mag = (1 - frac) * np.abs(spec[..., i]) + frac * np.abs(spec[..., i + 1])
        for ch in range(c):  # lock each bin to its peak: phase offsets of the input frame
            peak = _nearest_peak(mag[ch])
            phase[ch] = phase[ch][peak] + angles[ch, :, i] - angles[ch, peak, i]
        out[..., k] = mag * np.exp(1j * phase)
        delta = angles[..., i + 1] - angles[..., i] - expected
        delta -= 2 * np.pi * np.round(delta / (2 * np.pi))
        phase = phase + expected + delta
    with warnings.catch_warnings():  # the zero-padded edges fail NOLA; they are cut off
        warnings.simplefilter("ignore", UserWarning)
        _, y = signal.istft(out, nperseg=n_fft, noverlap=n_fft - hop, window=window,
                            boundary=False)
    start = round(n_fft * factor)  # the leading pad, stretched
    return fit_length(np.asarray(y[..., start:], dtype=np.float32), round(t * factor))


def pitch_shift_keep_length(audio: np.ndarray, sample_rate: int, semitones: float
                            ) -> np.ndarray:
    """Shift the pitch of [C, T] audio by `semitones`, duration and alignment kept:
    stretch by the pitch ratio, then resample by it (`augment.pitch_shift`)."""
    if abs(semitones) < 1e-6:
        return audio
    ratio = 2.0 ** (semitones / 12.0)
    stretched = time_stretch(audio, ratio)
    return fit_length(pitch_shift(stretched, sample_rate, ratio), audio.shape[-1])


def synthetic_rir(sample_rate: int, rt60: float, drr_db: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """A room impulse response [n]: a unit direct path at sample 0 and, after a 2-8 ms gap,
    Gaussian noise decaying by 60 dB over `rt60` s (1.2 x rt60 long), scaled so the direct
    path's energy is `drr_db` above the tail's."""
    n = max(2, int(1.2 * rt60 * sample_rate))
    gap = int(rng.uniform(0.002, 0.008) * sample_rate)
    t = np.arange(n - gap) / sample_rate
    tail = rng.standard_normal(n - gap) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    tail *= math.sqrt(1.0 / (float(np.sum(tail**2)) * 10.0 ** (drr_db / 10.0)))
    ir = np.zeros(n)
    ir[0] = 1.0
    ir[gap:] += tail
    return ir.astype(np.float32)


def room_rir(sample_rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """An impulse response [n] of a shoebox room simulated by pyroomacoustics (image
    source method) at the given RT60, source and microphone placed at random, aligned to
    its direct path and peak-normalised."""
    import pyroomacoustics as pra

    dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.4, 4)])
    absorption, max_order = pra.inverse_sabine(rt60, dims)
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption),
                       max_order=min(int(max_order), 30))
    room.add_source(dims * rng.uniform(0.2, 0.8, 3))
    room.add_microphone(dims * rng.uniform(0.2, 0.8, 3))
    room.compute_rir()
    return align_rir(np.asarray(room.rir[0][0], dtype=np.float32))


def align_rir(ir: np.ndarray) -> np.ndarray:
    """An impulse response [n] cut to start at its peak (the direct path) and scaled to a
    unit peak, so convolving keeps the target's timing and level of the direct sound."""
    peak = int(np.argmax(np.abs(ir)))
    ir = ir[peak:]
    return (ir / max(float(np.abs(ir[0])), 1e-12)).astype(np.float32)


def convolve(audio: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """[C, T] audio through an impulse response [n], cut to T samples."""
    wet = signal.fftconvolve(audio, ir[None, :], axes=-1)[..., : audio.shape[-1]]
    return wet.astype(np.float32)


@lru_cache(maxsize=64)
def _read_mono(path: str, sample_rate: int) -> np.ndarray:
    from soundry.audio.io import read_audio

    audio, rate = read_audio(path)
    audio = resample(np.asarray(audio, dtype=np.float32), rate, sample_rate)
    return audio.mean(axis=0)


# ----------------------------------------------------------------------------- degradations


@DEGRADATIONS.register("noise")
class Noise:
    """`NoiseDegrade`: synthetic coloured noise or a folder's noise at a drawn SNR."""

    def __init__(self, cfg: NoiseDegrade, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate
        self.files = _audio_files(cfg.folder, "noise") if cfg.folder else []

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.cfg
        out: dict[str, Any] = {"snr_db": round(float(rng.uniform(c.min_snr_db, c.max_snr_db)), 3)}
        if self.files:
            out["file"] = int(rng.integers(len(self.files)))
        else:
            out["colour"] = c.colours[int(rng.integers(len(c.colours)))]
        out["seed"] = _seed(rng)
        return out

    def noise(self, shape: tuple[int, ...], params: dict[str, Any]) -> np.ndarray:
        """The unscaled noise [C, T] of a draw."""
        rng = np.random.default_rng(params["seed"])
        if "file" not in params:
            return coloured_noise(shape, params["colour"], rng)
        path = self.files[params["file"] % len(self.files)]
        try:
            source = _read_mono(str(path), self.sample_rate)
        except Exception as exc:  # a broken noise file must not stop training
            raise DataError(f"noise file {path} is unreadable: {exc}") from exc
        t = shape[-1]
        if source.size == 0:
            raise DataError(f"noise file {path} is empty")
        reps = -(-t // source.size) + 1
        looped = np.tile(source, reps)
        start = int(rng.integers(0, max(1, looped.size - t)))
        return np.broadcast_to(looped[start:start + t], shape).astype(np.float32)

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return mix_at_snr(audio, self.noise(audio.shape, params), params["snr_db"])


@DEGRADATIONS.register("lowpass")
class Lowpass:
    """`LowpassDegrade`: Butterworth low-pass or resampling bandwidth limit."""

    def __init__(self, cfg: LowpassDegrade, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        hz = min(log_uniform(rng, self.cfg.min_hz, self.cfg.max_hz), 0.45 * self.sample_rate)
        return {"cutoff_hz": round(hz, 1), "method": self.cfg.method}

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        if params["method"] == "resample":
            return bandlimit(audio, self.sample_rate, params["cutoff_hz"])
        return lowpass(audio, self.sample_rate, params["cutoff_hz"], self.cfg.order)


@DEGRADATIONS.register("clip")
class Clip:
    """`ClipDegrade`: hard clipping at a fraction of the clip's peak."""

    def __init__(self, cfg: ClipDegrade, sample_rate: int) -> None:
        self.cfg = cfg

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"level": round(float(rng.uniform(self.cfg.min_level, self.cfg.max_level)), 4)}

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return hard_clip(audio, params["level"])


@DEGRADATIONS.register("gain")
class Gain:
    """`GainDegrade`: a level change of the input (peak kept at most 1)."""

    def __init__(self, cfg: GainDegrade, sample_rate: int) -> None:
        self.cfg = cfg

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"db": round(float(rng.uniform(self.cfg.min_db, self.cfg.max_db)), 3)}

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return apply_gain(audio, params["db"])


@DEGRADATIONS.register("reverb")
class Reverb:
    """`ReverbDegrade`: convolution with a synthetic, simulated or recorded IR."""

    def __init__(self, cfg: ReverbDegrade, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate
        self.files = _audio_files(cfg.folder, "reverb IR") if cfg.source == "folder" else []
        if cfg.source == "room":
            try:
                import pyroomacoustics  # noqa: F401
            except ImportError as exc:
                raise ConfigError("data.degrade.reverb source 'room' needs pyroomacoustics "
                                  "(pip install pyroomacoustics), or use source "
                                  "'synthetic'") from exc

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.cfg
        out: dict[str, Any] = {"source": c.source}
        if self.files:
            out["file"] = int(rng.integers(len(self.files)))
        else:
            out["rt60"] = round(float(rng.uniform(c.min_rt60, c.max_rt60)), 4)
            if c.source == "synthetic":
                out["drr_db"] = round(float(rng.uniform(c.min_drr_db, c.max_drr_db)), 3)
        out["seed"] = _seed(rng)
        return out

    def impulse_response(self, params: dict[str, Any]) -> np.ndarray:
        """The IR [n] of a draw."""
        rng = np.random.default_rng(params["seed"])
        if params["source"] == "folder":
            path = self.files[params["file"] % len(self.files)]
            try:
                return align_rir(_read_mono(str(path), self.sample_rate))
            except Exception as exc:
                raise DataError(f"impulse response {path} is unreadable: {exc}") from exc
        if params["source"] == "room":
            return room_rir(self.sample_rate, params["rt60"], rng)
        return synthetic_rir(self.sample_rate, params["rt60"], params["drr_db"], rng)

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return convolve(audio, self.impulse_response(params))


@DEGRADATIONS.register("pitch")
class Pitch:
    """`PitchDegrade`: a duration-keeping pitch shift by drawn semitones."""

    def __init__(self, cfg: PitchDegrade, sample_rate: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.cfg
        return {"semitones": round(float(rng.uniform(c.min_semitones, c.max_semitones)), 4)}

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return pitch_shift_keep_length(audio, self.sample_rate, params["semitones"])


@DEGRADATIONS.register("codec")
class Codec:
    """`CodecDegrade`: an MP3/Opus/Vorbis/AAC round trip through ffmpeg."""

    def __init__(self, cfg: CodecDegrade, sample_rate: int) -> None:
        from soundry.audio.codecs import BaselineSpec, check_encoders

        self.cfg, self.sample_rate = cfg, sample_rate
        if shutil.which("ffmpeg") is None:
            raise ConfigError("data.degrade.codec needs ffmpeg on PATH (Debian/Ubuntu: "
                              "apt-get install ffmpeg), or set its prob to 0")
        check_encoders([BaselineSpec(name, 64000) for name in cfg.codecs])

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.cfg
        return {"codec": c.codecs[int(rng.integers(len(c.codecs)))],
                "kbps": round(float(rng.uniform(c.min_kbps, c.max_kbps)), 1)}

    def apply(self, audio: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        from soundry.audio.codecs import BaselineSpec, roundtrip

        spec = BaselineSpec(params["codec"], int(params["kbps"] * 1000))
        return roundtrip(audio, self.sample_rate, spec)


# ----------------------------------------------------------------------------- the chain


def _stream_key(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across runs (str hash is salted)


class Degrader:
    """Draws and applies the degradations of a `DegradeConfig` (input side of a pair), in
    the config's `order`; only those with prob > 0 are built."""

    def __init__(self, cfg: DegradeConfig, sample_rate: int) -> None:
        self.cfg = cfg
        self.sample_rate = int(sample_rate)
        self.steps = {name: DEGRADATIONS.get(name)(getattr(cfg, name), self.sample_rate)
                      for name in cfg.order if getattr(cfg, name).prob > 0}

    def draw(self, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
        """Which degradations fire and their parameters: {name: params}. One generator per
        degradation, derived from one draw of `rng` and the degradation's name."""
        base = int(rng.integers(0, 2**63 - 1))
        out = {}
        for name, step in self.steps.items():
            sub = np.random.default_rng([base, _stream_key(name)])
            fires = sub.random() < getattr(self.cfg, name).prob
            params = step.draw(sub)
            if fires:
                out[name] = params
        return out

    def apply(self, audio: np.ndarray, params: dict[str, dict[str, Any]]) -> np.ndarray:
        """The degraded copy of clean [C, T] audio (same shape, clipped to [-1, 1])."""
        out = np.asarray(audio, dtype=np.float32)
        for name, step in self.steps.items():
            if name in params:
                out = step.apply(out, params[name])
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)
