"""Shared test fixtures. Data-pipeline fixtures are prefixed `data_`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# ----------------------------------------------------------------------------- data pipeline

#: encoded samples: value = (file << 16 | position) / 2**24, exact in float32 and in [0, 0.5)
ENCODE_SCALE = float(2**24)


def encode_samples(file_index: int, frames: int) -> np.ndarray:
    """Samples that spell their own file index and position (float32, [frames])."""
    codes = (file_index << 16) + np.arange(frames, dtype=np.int64)
    return (codes / ENCODE_SCALE).astype(np.float32)


def decode_samples(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file indices, positions) of samples written by `encode_samples`."""
    codes = np.rint(np.asarray(audio, dtype=np.float64) * ENCODE_SCALE).astype(np.int64)
    return codes >> 16, codes & 0xFFFF


@pytest.fixture
def data_encoded_dir(tmp_path: Path) -> Callable[..., Path]:
    """Make a folder of float WAV files whose samples encode (file index, position).

    Call with a list of lengths in samples; file i is `enc_{i:02d}.wav`.
    """

    def make(lengths: list[int], sample_rate: int = 8000, name: str = "encoded") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for i, n in enumerate(lengths):
            sf.write(folder / f"enc_{i:02d}.wav", encode_samples(i, n), sample_rate, "FLOAT")
        return folder

    return make


@pytest.fixture
def data_tone_dir(tmp_path: Path) -> Callable[..., Path]:
    """Make a folder of 16-bit WAV sine tones (a different frequency per file)."""

    def make(
        count: int, seconds: float = 1.0, sample_rate: int = 8000, name: str = "tones"
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        for i in range(count):
            x = 0.5 * np.sin(2 * np.pi * (200 + 50 * i) * t)
            sf.write(folder / f"tone_{i:02d}.wav", x.astype(np.float32), sample_rate, "PCM_16")
        return folder

    return make


def write_bad_files(folder: Path, sample_rate: int = 8000) -> dict[str, str]:
    """Every kind of unusable file, plus two good ones; returns {file name: expected reason}.

    The reason values are substrings the scan must report.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(sample_rate)).astype(np.float32)
    sf.write(folder / "good_a.wav", x, sample_rate, "PCM_16")
    sf.write(folder / "good_b.flac", x, sample_rate, "PCM_16")
    wav = (folder / "good_a.wav").read_bytes()
    flac = (folder / "good_b.flac").read_bytes()
    (folder / "zero.wav").write_bytes(b"")
    (folder / "header_only.wav").write_bytes(wav[:44])
    (folder / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (folder / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (folder / "corrupt.wav").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    noise = rng.integers(0, 256, len(flac) - 300, dtype=np.uint8).tobytes()
    (folder / "corrupt.flac").write_bytes(flac[:300] + noise)
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    sf.write(folder / "short.wav", x[: sample_rate // 100], sample_rate, "PCM_16")
    bad = x.copy()
    bad[:10] = np.nan
    sf.write(folder / "nan_head.wav", bad, sample_rate, "FLOAT")
    bad = x.copy()
    bad[-5:] = np.inf
    sf.write(folder / "inf_tail.wav", bad, sample_rate, "FLOAT")
    return {
        "zero.wav": "empty",
        "header_only.wav": "no audio frames",
        "truncated.wav": "truncated",
        "truncated.flac": "truncated",
        "corrupt.wav": "not readable",
        "corrupt.flac": "corrupt",
        "text.wav": "not readable",
        "short.wav": "too short",
        "nan_head.wav": "non-finite",
        "inf_tail.wav": "non-finite",
    }


@pytest.fixture
def data_bad_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with every kind of bad file and two good ones (see `write_bad_files`)."""
    folder = tmp_path / "bad"
    return folder, write_bad_files(folder)


@pytest.fixture
def data_decode() -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`decode_samples`: (file indices, positions) of encoded samples."""
    return decode_samples
