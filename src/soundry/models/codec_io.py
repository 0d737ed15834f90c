"""File-level codec use: audio file <-> codes (.npz) <-> audio file, chunked for long files.

An `.npz` of codes holds `codes` (int16 or int32 [channels, levels, frames]) and a JSON
`meta` string: sample rate, channel count, length in samples, levels, codebook size, frame
rate and the source file, so `decode` needs nothing but the model and the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundry import __version__
from soundry.errors import SoundryError

log = logging.getLogger("soundry.codec")


def load_codec(path: Path | str) -> Any:
    """Load an exported codec (eval mode); a clear error if the export is not a codec."""
    from soundry.models.export import load_export

    model = load_export(path)
    if not hasattr(model, "encode") or not hasattr(model, "decode_codes"):
        raise SoundryError(f"{path} is not a codec export")
    return model


def read_for_codec(codec: Any, path: Path) -> tuple[np.ndarray, int]:
    """Read `path` as float32 [C, T] at the codec's rate and channel count.

    A sample-rate mismatch is resampled with a notice (never silently); mono input to a
    stereo model is duplicated, stereo input to a mono model is mixed down, also noted.
    Returns the audio and the file's original sample rate.
    """
    from soundry.audio.io import audio_info, read_audio

    info = audio_info(path)
    if info.sample_rate != codec.sample_rate:
        log.warning(
            "%s: %d Hz resampled to the model's %d Hz",
            path,
            info.sample_rate,
            codec.sample_rate,
        )
    if info.channels != codec.channels:
        log.warning(
            "%s: %d channel(s) converted to the model's %d", path, info.channels, codec.channels
        )
    audio, _ = read_audio(path, sample_rate=codec.sample_rate, channels=codec.channels)
    return audio, info.sample_rate


def _codes_dtype(codebook_size: int) -> Any:
    return np.int16 if codebook_size <= 32767 else np.int32


def encode_file(
    codec: Any,
    src: Path,
    dst: Path,
    levels: int | None = None,
    chunk_seconds: float = 10.0,
) -> dict[str, Any]:
    """Encode one audio file to an .npz of codes; returns the metadata written."""
    from soundry.models.chunked import encode_chunked

    levels = _check_levels(codec, levels)
    audio, orig_sr = read_for_codec(codec, src)
    codes = encode_chunked(codec, torch.from_numpy(audio), chunk_seconds=chunk_seconds)
    codes = codes[:, :levels].cpu().numpy().astype(_codes_dtype(codec.codebook_size))
    meta = {
        "soundry_version": __version__,
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "length": int(audio.shape[-1]),
        "levels": levels,
        "codebook_size": codec.codebook_size,
        "frame_rate": codec.frame_rate,
        "source": str(src),
        "source_sample_rate": orig_sr,
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, codes=codes, meta=np.array(json.dumps(meta)))
    tmp.replace(dst)
    return meta


def read_codes(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(codes [C, K, F], meta) from an .npz written by `encode_file`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "latents" in data and "codes" not in data:
                raise SoundryError(f"{path} holds VAE latents, not codes; decode it with the "
                                   "VAE that made it")
            codes = data["codes"]
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise SoundryError(f"{path} is not a soundry codes file ({exc})") from None
    return codes, meta


def decode_file(codec: Any, src: Path, dst: Path, chunk_seconds: float = 10.0) -> None:
    """Decode an .npz of codes to a WAV/FLAC file at the model's sample rate."""
    from soundry.audio.io import write_audio
    from soundry.models.chunked import decode_chunked

    codes, meta = read_codes(src)
    if meta.get("sample_rate") != codec.sample_rate or meta.get("codebook_size") not in (
        None,
        codec.codebook_size,
    ):
        raise SoundryError(
            f"{src} was encoded for a {meta.get('sample_rate')} Hz codec with "
            f"{meta.get('codebook_size')} codes per level; this model is {codec.sample_rate} Hz "
            f"with {codec.codebook_size}"
        )
    if codes.shape[1] > codec.n_codebooks:
        raise SoundryError(f"{src} has {codes.shape[1]} levels; the model has {codec.n_codebooks}")
    audio = decode_chunked(
        codec, torch.from_numpy(codes.astype(np.int64)), chunk_seconds=chunk_seconds
    )
    audio = audio[..., : meta.get("length", audio.shape[-1])]
    write_audio(dst, audio.float().cpu().numpy(), codec.sample_rate)


def reconstruct_file(
    codec: Any,
    src: Path,
    dst: Path,
    levels: int | None = None,
    chunk_seconds: float = 10.0,
) -> None:
    """Encode then decode one file (same result as `encode_file` + `decode_file`)."""
    from soundry.audio.io import write_audio
    from soundry.models.chunked import decode_chunked, encode_chunked

    levels = _check_levels(codec, levels)
    audio, _ = read_for_codec(codec, src)
    codes = encode_chunked(codec, torch.from_numpy(audio), chunk_seconds=chunk_seconds)
    out = decode_chunked(codec, codes[:, :levels], chunk_seconds=chunk_seconds)
    write_audio(dst, out[..., : audio.shape[-1]].float().cpu().numpy(), codec.sample_rate)


def _check_levels(codec: Any, levels: int | None) -> int:
    if levels is None:
        return int(codec.n_codebooks)
    if not 1 <= levels <= codec.n_codebooks:
        raise SoundryError(f"--levels must be between 1 and {codec.n_codebooks}, got {levels}")
    return int(levels)
