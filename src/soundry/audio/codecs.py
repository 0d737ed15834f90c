"""Classical codecs through ffmpeg: baselines next to a neural codec, and the codec
round-trip degradation of audio-to-audio data.

A baseline is written `codec:bitrate`, e.g. `opus:6k`, `mp3:32k`, `vorbis:64000`. Each
clip is written to a temporary float WAV, encoded with ffmpeg at that bitrate, decoded
back to float WAV at the reference's sample rate, and aligned to the reference: the codec's
delay (if any survives ffmpeg's own pre-skip/gapless handling) is removed by
cross-correlation within `MAX_DELAY_SECONDS`, then the length is trimmed or zero-padded to
match.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from soundry.errors import SoundryError

# codec name -> (ffmpeg encoder, container extension)
CODECS: dict[str, tuple[str, str]] = {
    "opus": ("libopus", "ogg"),
    "mp3": ("libmp3lame", "mp3"),
    "vorbis": ("libvorbis", "ogg"),
    "aac": ("aac", "m4a"),
}
MAX_DELAY_SECONDS = 0.05

_SPEC = re.compile(r"^\s*([a-z0-9]+)\s*[:@]\s*([0-9]*\.?[0-9]+)\s*(k|kbps|kb/s|b|bps)?\s*$", re.I)


class FFmpegMissingError(SoundryError):
    """ffmpeg (or the encoder a baseline needs) is not installed."""


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline: a codec name and a bitrate in bits per second."""

    codec: str
    bitrate: int

    @property
    def name(self) -> str:
        """System name used in tables and JSON, e.g. 'opus 6k'."""
        kbps = self.bitrate / 1000
        return f"{self.codec} {kbps:g}k"

    @property
    def kbps(self) -> float:
        return self.bitrate / 1000


def parse_baselines(text: str | None) -> list[BaselineSpec]:
    """'opus:6k,mp3:32k' -> specs; a bare number is bits per second unless it ends in k."""
    if not text:
        return []
    specs = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _SPEC.match(part)
        if not m:
            raise SoundryError(
                f"baseline '{part.strip()}' must look like codec:bitrate, e.g. opus:6k or mp3:32k"
            )
        codec, number, unit = m.group(1).lower(), float(m.group(2)), (m.group(3) or "").lower()
        if codec not in CODECS:
            raise SoundryError(
                f"unknown baseline codec '{codec}' (known: {', '.join(sorted(CODECS))})"
            )
        bitrate = int(round(number * 1000)) if unit.startswith("k") else int(round(number))
        if bitrate < 500:
            raise SoundryError(
                f"baseline '{part.strip()}': bitrate {bitrate} bit/s is too low "
                "(write e.g. opus:6k for 6 kbit/s)"
            )
        specs.append(BaselineSpec(codec, bitrate))
    return specs


def find_ffmpeg() -> str:
    """Path of the ffmpeg executable, or FFmpegMissingError saying how to get it."""
    path = shutil.which("ffmpeg")
    if path is None:
        raise FFmpegMissingError(
            "baselines need ffmpeg, which is not on PATH. Install it (Debian/Ubuntu: "
            "apt-get install ffmpeg; macOS: brew install ffmpeg) or drop --baseline"
        )
    return path


def check_encoders(specs: list[BaselineSpec]) -> None:
    """Fail early, with a clear message, if ffmpeg lacks an encoder the specs need."""
    if not specs:
        return
    ffmpeg = find_ffmpeg()
    result = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    )
    listed = result.stdout
    for spec in specs:
        encoder = CODECS[spec.codec][0]
        if not re.search(rf"\s{re.escape(encoder)}\s", listed):
            raise FFmpegMissingError(
                f"baseline '{spec.name}' needs ffmpeg's '{encoder}' encoder, which this ffmpeg "
                "lacks; install an ffmpeg built with it or choose another codec"
            )


def roundtrip(audio: np.ndarray, sample_rate: int, spec: BaselineSpec) -> np.ndarray:
    """Encode and decode float audio [C, T] with a classical codec; returns [C, T] aligned.

    The output has the reference's sample rate, channel count and length.
    """
    ffmpeg = find_ffmpeg()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    encoder, ext = CODECS[spec.codec]
    with tempfile.TemporaryDirectory(prefix="soundry-baseline-") as tmp:
        src, enc, dec = Path(tmp) / "in.wav", Path(tmp) / f"enc.{ext}", Path(tmp) / "out.wav"
        sf.write(src, audio.T, sample_rate, subtype="FLOAT")
        _run(
            [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-y",
                "-i",
                str(src),
                "-c:a",
                encoder,
                "-b:a",
                str(spec.bitrate),
                str(enc),
            ],
            spec,
        )
        _run(
            [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-y",
                "-i",
                str(enc),
                "-ar",
                str(sample_rate),
                "-ac",
                str(audio.shape[0]),
                "-c:a",
                "pcm_f32le",
                str(dec),
            ],
            spec,
        )
        decoded, _ = sf.read(dec, dtype="float32", always_2d=True)
    return align(audio, decoded.T, max_delay=int(MAX_DELAY_SECONDS * sample_rate))


def align(reference: np.ndarray, output: np.ndarray, max_delay: int) -> np.ndarray:
    """Shift `output` [C, T'] by the lag (|lag| <= max_delay) that best matches `reference`
    [C, T] (cross-correlation of the channel sums), then trim/zero-pad to T samples."""
    n = reference.shape[-1]
    lag = estimate_delay(reference.sum(0), output.sum(0), max_delay)
    if lag > 0:  # output is late: drop its first `lag` samples
        output = output[:, lag:]
    elif lag < 0:
        output = np.pad(output, ((0, 0), (-lag, 0)))
    if output.shape[-1] >= n:
        return np.ascontiguousarray(output[:, :n])
    return np.pad(output, ((0, 0), (0, n - output.shape[-1])))


def estimate_delay(reference: np.ndarray, output: np.ndarray, max_delay: int) -> int:
    """Lag in samples (positive: output is late) maximising the cross-correlation."""
    n = min(len(reference), len(output))
    if n == 0 or max_delay <= 0:
        return 0
    a, b = reference[:n].astype(np.float64), output[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, max_delay + 1), np.arange(-max_delay, 0)])
    values = corr[lags % size]
    if not np.any(values > 0):
        return 0
    return int(lags[int(np.argmax(values))])


def _run(cmd: list[str], spec: BaselineSpec) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise SoundryError(f"ffmpeg failed for baseline '{spec.name}': {detail[0]}")
