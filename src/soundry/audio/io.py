"""Reading, writing and resampling audio files.

Arrays are float32 `[channels, time]` in [-1, 1]. Reading uses libsndfile (through
`soundfile`), so anything it decodes works: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...
Partial reads seek to the requested frame, so a random crop never decodes the whole file.
Resampling uses soxr.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from soundry.audio.tar_members import is_member_ref, open_source
from soundry.errors import DataError

#: extensions treated as audio when a folder is scanned
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")

_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: rate in Hz, channel count, length in frames and seconds."""

    sample_rate: int
    channels: int
    frames: int
    duration: float


def audio_info(path: str | Path) -> AudioInfo:
    """Header information of an audio file; DataError when libsndfile cannot open it."""
    try:
        if is_member_ref(path):
            with sf.SoundFile(open_source(path)) as f:
                sr, ch, n = int(f.samplerate), int(f.channels), max(int(f.frames), 0)
            return AudioInfo(sr, ch, n, n / sr if sr > 0 else 0.0)
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"cannot read audio file '{path}': {error_reason(exc)}") from None
    frames = max(int(info.frames), 0)
    sr = int(info.samplerate)
    return AudioInfo(sr, int(info.channels), frames, frames / sr if sr > 0 else 0.0)


def read_audio(
    path: str | Path,
    offset: int = 0,
    frames: int = -1,
    sample_rate: int | None = None,
    channels: int | None = None,
) -> tuple[np.ndarray, int]:
    """Read `frames` frames starting at frame `offset` (both in the file's own sample rate).

    `frames=-1` reads to the end. The result is resampled to `sample_rate` (None: keep the
    file's rate) and mixed to `channels` (1: mean of all channels; 2 from mono: duplicated;
    fewer than the file has: the first ones; None: as stored).

    Returns (audio float32 [channels, time], sample_rate). A read past the end returns what
    is there (possibly nothing). Raises DataError for an unreadable or corrupt file.
    """
    try:
        with sf.SoundFile(open_source(path)) as f:
            file_sr = int(f.samplerate)
            if offset > 0:
                f.seek(min(int(offset), max(f.frames, 0)))
            data = f.read(frames=int(frames), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise DataError(f"cannot read audio file '{path}': {error_reason(exc)}") from None
    audio = np.ascontiguousarray(data.T)
    if channels is not None:
        audio = convert_channels(audio, channels)
    if sample_rate is not None and sample_rate != file_sr:
        audio = resample(audio, file_sr, sample_rate)
        file_sr = sample_rate
    return audio, file_sr


def convert_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """[C, T] -> [channels, T]: mean to mono, duplicate mono, or keep the first channels."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if have > channels:
        return np.ascontiguousarray(audio[:channels])
    raise DataError(f"cannot make {channels} channels from {have}")


def resample(audio: np.ndarray, sr_in: float, sr_out: float, quality: str = "HQ") -> np.ndarray:
    """Resample float32 audio [C, T] from `sr_in` to `sr_out` Hz with soxr.

    The output has round(T * sr_out / sr_in) samples. Rates may be non-integer (used by
    resampling-based pitch shift).
    """
    if sr_in == sr_out or audio.shape[-1] == 0:
        return audio.astype(np.float32, copy=False)
    # soxr wants [time, channels]
    out = soxr.resample(audio.T.astype(np.float32, copy=False), sr_in, sr_out, quality=quality)
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 1:
        out = out[:, None]
    return np.ascontiguousarray(out.T)


def write_audio(
    path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None
) -> Path:
    """Write float audio [C, T] (or [T]) as WAV or FLAC, chosen by the extension.

    The default subtype is 16-bit PCM for both; WAV also takes 'PCM_24', 'FLOAT', ...
    Samples are clipped to [-1, 1] for integer subtypes. The file is written to a temporary
    name in the same folder and renamed, so a reader never sees a half-written file.
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot write '{path}': use a .wav or .flac extension")
    subtype = subtype or "PCM_16"
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [channels, time], got shape {audio.shape}")
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            sf.write(handle, audio.T, int(sample_rate), format=fmt, subtype=subtype)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def error_reason(exc: BaseException) -> str:
    """libsndfile's message without its "Error opening '<path>': " prefix or final dot."""
    text = str(exc).strip()
    # libsndfile prefixes messages with "Error opening '<path>': "; the caller names the path
    if text.startswith("Error opening") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.rstrip(".") or type(exc).__name__
