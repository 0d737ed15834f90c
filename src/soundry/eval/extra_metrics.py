"""Evaluation metrics beyond the core ones, from optional packages (the `[eval]` extra).

- `loudness_diff_lufs`: integrated loudness (ITU-R BS.1770, `pyloudnorm`) of the output
  minus that of the reference, in LU; negative means the output is quieter.
- `pesq_wb`: PESQ wide-band MOS-LQO (`pesq`), computed at 16 kHz (the only wide-band rate
  PESQ defines); range about 1.0 to 4.64.
- `stoi`: short-time objective intelligibility (`pystoi`), 0 to 1; pystoi resamples to its
  own 10 kHz internally.
- `visqol`: ViSQOL v3 audio mode MOS-LQO (`visqol-python`), computed at 48 kHz; range
  about 1 to 4.75. Needs at least about a second of audio.
- `visqol_speech`: ViSQOL v3 speech mode MOS-LQO at 16 kHz (inputs resampled to 16 kHz),
  with the deep-lattice quality mapper that is ViSQOL's own default (`ai-edge-litert`, in
  the `[eval]` extra; without it the metric is unavailable rather than silently scored
  with the polynomial fallback, whose scale differs). Range about 1 to 5; for speech.

Inputs are float arrays `[channels, time]` (or `[time]`) at `sample_rate`, reference first.
Multichannel audio is scored per channel and averaged (PESQ, STOI and ViSQOL are mono
measures). A missing package raises `MissingDependencyError`; a clip a measure cannot score
(too short, silent, no speech found) gives NaN, so one bad file does not stop an evaluation;
the reasons are counted (`take_failures`) so the caller can report them once.
"""

from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundry.errors import MissingDependencyError

log = logging.getLogger("soundry.eval")

PESQ_RATE = 16_000
VISQOL_AUDIO_RATE = 48_000


@dataclass(frozen=True)
class ExtraMetric:
    """A metric, the optional package (import name, pip name) it needs, and what it is."""

    name: str
    fn: Callable[[Any, Any, int], float]
    module: str
    package: str
    purpose: str
    higher_is_better: bool
    #: further (import name, pip name) the metric needs
    also: tuple[tuple[str, str], ...] = ()


def _require(module: str, package: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, "eval", purpose) from None


def _as_2d(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] == 1:  # [1, C, T]
        a = a[0]
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"audio must be [channels, time], got shape {a.shape}")
    return a


def _pair(reference: Any, output: Any) -> tuple[np.ndarray, np.ndarray]:
    ref, out = _as_2d(reference), _as_2d(output)
    if ref.shape[0] != out.shape[0]:
        raise ValueError(f"channel counts differ: reference {ref.shape[0]}, output {out.shape[0]}")
    n = min(ref.shape[-1], out.shape[-1])
    return ref[:, :n], out[:, :n]


def _resample(a: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return a
    from soundry.audio.io import resample

    return resample(a.astype(np.float32), sr_in, sr_out).astype(np.float64)


_FAILURES: dict[str, Counter[str]] = {}


def take_failures() -> dict[str, Counter[str]]:
    """Metric name -> Counter of reasons clips could not be scored since the last call."""
    out = dict(_FAILURES)
    _FAILURES.clear()
    return out


def _per_channel(
    name: str, score: Callable[[np.ndarray, np.ndarray], float], ref: np.ndarray, out: np.ndarray
) -> float:
    values = []
    for r, o in zip(ref, out, strict=True):
        try:
            values.append(float(score(r, o)))
        except Exception as exc:  # noqa: BLE001  (each package raises its own error types)
            reason = exc.args[0] if exc.args else type(exc).__name__
            if isinstance(reason, bytes):
                reason = reason.decode(errors="replace")
            log.debug("%s could not score a clip (%s); recorded as NaN", name, reason)
            _FAILURES.setdefault(name, Counter())[str(reason)] += 1
            values.append(float("nan"))
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------- metrics


def loudness_diff_lufs(reference: Any, output: Any, sample_rate: int) -> float:
    """Loudness of `output` minus loudness of `reference` in LU (BS.1770 integrated).

    Clips shorter than one 400 ms gating block are measured by RMS level instead (see
    `soundry.audio.loudness`). Silence measures as -120, so the difference stays finite.
    """
    _require("pyloudnorm", "pyloudnorm", "Loudness difference (LUFS)")
    from soundry.audio.loudness import measure_loudness

    ref, out = _pair(reference, output)
    return float(
        measure_loudness(out.astype(np.float32), sample_rate)
        - measure_loudness(ref.astype(np.float32), sample_rate)
    )


def pesq_wb(reference: Any, output: Any, sample_rate: int) -> float:
    """Wide-band PESQ (MOS-LQO) at 16 kHz; inputs are resampled to 16 kHz first."""
    pesq_mod = _require("pesq", "pesq", "PESQ")
    ref, out = _pair(reference, output)
    ref, out = _resample(ref, sample_rate, PESQ_RATE), _resample(out, sample_rate, PESQ_RATE)

    def score(r: np.ndarray, o: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pesq divides by the peak: warns on silence
            return pesq_mod.pesq(PESQ_RATE, r, o, "wb")

    return _per_channel("pesq", score, ref, out)


def stoi(reference: Any, output: Any, sample_rate: int) -> float:
    """Short-time objective intelligibility (0..1)."""
    pystoi = _require("pystoi", "pystoi", "STOI")
    ref, out = _pair(reference, output)

    def score(r: np.ndarray, o: np.ndarray) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pystoi warns on clips shorter than 30 frames
            return pystoi.stoi(r, o, sample_rate, extended=False)

    return _per_channel("stoi", score, ref, out)


VISQOL_SPEECH_RATE = 16_000
_VISQOL_APIS: dict[str, Any] = {}  # mode -> a created VisqolApi (model loading is slow)


def _visqol(name: str, mode: str, rate: int, reference: Any, output: Any, sample_rate: int,
            **create: Any) -> float:
    """ViSQOL MOS-LQO in `mode` at `rate` (inputs resampled to it), per channel."""
    visqol_mod = _require("visqol", "visqol-python", "ViSQOL")
    if mode not in _VISQOL_APIS:
        api = visqol_mod.VisqolApi()
        api.create(mode=mode, **create)
        _VISQOL_APIS[mode] = api
    api = _VISQOL_APIS[mode]
    ref, out = _pair(reference, output)
    ref, out = _resample(ref, sample_rate, rate), _resample(out, sample_rate, rate)
    return _per_channel(name, lambda r, o: api.measure_from_arrays(r, o, rate).moslqo, ref, out)


def visqol(reference: Any, output: Any, sample_rate: int) -> float:
    """ViSQOL v3 audio-mode MOS-LQO at 48 kHz (inputs resampled to 48 kHz first)."""
    return _visqol("visqol", "audio", VISQOL_AUDIO_RATE, reference, output, sample_rate)


def visqol_speech(reference: Any, output: Any, sample_rate: int) -> float:
    """ViSQOL v3 speech-mode MOS-LQO at 16 kHz with the lattice mapper (see module doc)."""
    _require("ai_edge_litert", "ai-edge-litert", "ViSQOL speech mode")
    return _visqol("visqol_speech", "speech", VISQOL_SPEECH_RATE, reference, output,
                   sample_rate, use_lattice_model=True)


EXTRA_METRICS: dict[str, ExtraMetric] = {
    m.name: m
    for m in (
        ExtraMetric(
            "loudness_diff_lufs",
            loudness_diff_lufs,
            "pyloudnorm",
            "pyloudnorm",
            "Loudness difference (LUFS)",
            higher_is_better=False,
        ),
        ExtraMetric("pesq", pesq_wb, "pesq", "pesq", "PESQ", higher_is_better=True),
        ExtraMetric("stoi", stoi, "pystoi", "pystoi", "STOI", higher_is_better=True),
        ExtraMetric("visqol", visqol, "visqol", "visqol-python", "ViSQOL", higher_is_better=True),
        ExtraMetric(
            "visqol_speech",
            visqol_speech,
            "visqol",
            "visqol-python",
            "ViSQOL speech mode",
            higher_is_better=True,
            also=(("ai_edge_litert", "ai-edge-litert"),),
        ),
    )
}


def availability() -> dict[str, str | None]:
    """Metric name -> None when it can run, else the reason it cannot (install hint)."""
    out: dict[str, str | None] = {}
    for name, metric in EXTRA_METRICS.items():
        try:
            _require(metric.module, metric.package, metric.purpose)
            for module, package in metric.also:
                _require(module, package, metric.purpose)
            out[name] = None
        except MissingDependencyError as exc:
            out[name] = str(exc)
    return out


def compute_extra(
    names: list[str], reference: Any, output: Any, sample_rate: int
) -> dict[str, float]:
    """The named extra metrics for one clip; a metric that fails gives NaN (and a warning)."""
    out = {}
    for name in names:
        value = EXTRA_METRICS[name].fn(reference, output, sample_rate)
        out[name] = value if math.isfinite(value) else float("nan")
    return out
