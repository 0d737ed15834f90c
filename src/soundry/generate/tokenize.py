"""Encode a dataset into token shards with a codec, and decode tokens back to audio.

Codecs (`open_codec`):
- a soundry codec export directory (config.json with "kind": "codec");
- a `transformers` EnCodec, DAC or Mimi model saved in a local directory (config.json with
  "model_type" encodec / dac / mimi; needs the `[hf]` extra). Nothing is downloaded.

Every handle turns audio [C, T] at its sample rate into codes [C, K, F] and codes [K, F] of
one stream back into audio [C, T]. Multi-channel audio is tokenized one stream per channel
(items `<id>`, `<id>#1`, ...), which is what a token LM models.
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundry.errors import DataError, MissingDependencyError, SoundryError

log = logging.getLogger(__name__)

HF_CODECS = ("encodec", "dac", "mimi")


class CodecHandle(ABC):
    """A codec used for tokens: rates, code layout, encode and decode."""

    kind: str = ""
    path: str = ""
    name: str = ""
    sample_rate: int = 0
    channels: int = 1
    levels: int = 0
    codebook_size: int = 0
    frame_rate: float = 0.0

    @abstractmethod
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Audio float32 [C, T] at `sample_rate` -> codes int64 [streams, levels, F]: one
        stream per channel, or one for all (EnCodec codes its channels jointly)."""

    @abstractmethod
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [K', F] of one stream (K' <= levels) -> audio float32 [C, T]."""

    def record(self) -> dict[str, Any]:
        """What a token index and an LM export store to find this codec again."""
        return {"type": self.kind, "path": self.path, "name": self.name}


class SoundryCodecHandle(CodecHandle):
    kind = "soundry"

    def __init__(self, path: Path, levels: int | None = None, chunk_seconds: float = 30.0):
        from soundry.models.codec_io import load_codec

        self.model = load_codec(path)
        self.path = str(Path(path).resolve())
        self.name = Path(path).name
        self.sample_rate = int(self.model.sample_rate)
        self.channels = int(self.model.channels)
        self.levels = int(levels or self.model.n_codebooks)
        if not 1 <= self.levels <= self.model.n_codebooks:
            raise SoundryError(f"{path} has {self.model.n_codebooks} codebooks; "
                               f"{self.levels} were asked for")
        self.codebook_size = int(self.model.codebook_size)
        self.frame_rate = float(self.model.frame_rate)
        self.chunk_seconds = chunk_seconds

    def encode(self, audio: np.ndarray) -> np.ndarray:
        from soundry.models.chunked import encode_chunked

        codes = encode_chunked(self.model, torch.from_numpy(audio), self.chunk_seconds,
                               n_levels=self.levels)
        return codes.cpu().numpy()

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        from soundry.models.chunked import decode_chunked

        stream = codes.long().cpu()[None].expand(self.channels, -1, -1)
        return decode_chunked(self.model, stream, self.chunk_seconds).float().numpy()


class HFCodecHandle(CodecHandle):
    """EnCodec / DAC / Mimi from `transformers`, loaded from a local directory."""

    kind = "transformers"

    def __init__(self, path: Path, levels: int | None = None) -> None:
        try:
            import transformers
        except ImportError:
            raise MissingDependencyError("transformers", "hf", "a transformers codec") from None
        cfg = json.loads((Path(path) / "config.json").read_text())
        self.model_type = cfg.get("model_type")
        classes = {"encodec": "EncodecModel", "dac": "DacModel", "mimi": "MimiModel"}
        if self.model_type not in classes:
            raise SoundryError(f"{path}: model_type {self.model_type!r} is not one of "
                               f"{', '.join(HF_CODECS)}")
        model_cls = getattr(transformers, classes[self.model_type])
        try:
            self.model = model_cls.from_pretrained(str(path), local_files_only=True).eval()
        except OSError as exc:
            raise SoundryError(
                f"cannot load a {self.model_type} model from {path}: {exc}"
            ) from None
        c = self.model.config
        self.path = str(Path(path).resolve())
        self.name = f"{self.model_type}:{Path(path).name}"
        self.sample_rate = int(c.sampling_rate)
        self.codebook_size = int(c.codebook_size)
        self.frame_rate = float(c.frame_rate)
        if self.model_type == "encodec":
            self.channels = int(c.audio_channels)
            self.bandwidth = max(c.target_bandwidths)
            full = int(c.num_quantizers)
        elif self.model_type == "dac":
            self.channels = 1
            full = int(c.n_codebooks)
        else:
            self.channels = int(getattr(c, "audio_channels", 1))
            full = int(c.num_quantizers)
        self.levels = int(levels or full)
        if not 1 <= self.levels <= full:
            raise SoundryError(f"{path} has {full} codebooks; {self.levels} were asked for")

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(audio)
        if self.model_type == "encodec":
            out = self.model.encode(x[None], bandwidth=self.bandwidth)
            codes = out.audio_codes  # [chunks, B, K, F]
            codes = torch.cat(list(codes), dim=-1) if codes.dim() == 4 else codes
            streams = codes[:1]  # [1, K, F]: EnCodec codes all channels as one stream
        elif self.model_type == "dac":
            streams = self.model.encode(x[:, None]).audio_codes  # channels as batch
        else:
            streams = self.model.encode(x[:, None], num_quantizers=self.levels).audio_codes
        return streams[:, : self.levels].long().cpu().numpy()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        codes = codes.long().cpu()[None]  # [1, K', F]
        if self.model_type == "encodec":
            audio = self.model.decode(codes[None], [None]).audio_values
        elif self.model_type == "dac":
            audio = self.model.decode(audio_codes=codes).audio_values
        else:
            audio = self.model.decode(codes).audio_values
        audio = audio.reshape(-1, audio.shape[-1]) if audio.dim() > 1 else audio[None]
        if audio.shape[0] != self.channels:
            audio = audio[:1].expand(self.channels, -1)
        return audio.float().numpy()


def open_codec(path: str | Path, levels: int | None = None) -> CodecHandle:
    """A soundry codec export or a transformers EnCodec/DAC/Mimi directory."""
    path = Path(path).expanduser()
    config = path / "config.json"
    if not config.is_file():
        raise SoundryError(f"codec '{path}' is not a model directory (no config.json)")
    try:
        cfg = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise SoundryError(f"{config} is not valid JSON ({exc})") from None
    if "kind" in cfg:
        if cfg["kind"] != "codec":
            raise SoundryError(f"{path} is a '{cfg['kind']}' export, not a codec")
        return SoundryCodecHandle(path, levels)
    if cfg.get("model_type") in HF_CODECS:
        return HFCodecHandle(path, levels)
    raise SoundryError(f"{path} is neither a soundry codec export nor a transformers "
                       f"{'/'.join(HF_CODECS)} model")


def open_recorded_codec(record: dict[str, Any], base: Path | None = None) -> CodecHandle:
    """The codec a token index or LM export recorded ({'type', 'path'}); a relative path is
    resolved against `base`."""
    path = Path(record.get("path", ""))
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise SoundryError(f"the recorded codec '{path}' does not exist any more")
    return open_codec(path, record.get("levels"))


def tokenize_dataset(
    codec: CodecHandle,
    data: str | Path,
    out: str | Path,
    shard_frames: int = 1 << 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every usable file of `data` (folder or manifest) into token shards in `out`.

    Resumable: inputs already in the index are skipped. Unreadable or corrupt inputs are
    listed in the index's `skipped` (with the reason) and never stop the run.
    Returns a summary {items, frames, skipped, seconds, out}.
    """
    from soundry.audio.io import read_audio
    from soundry.data.scan import scan
    from soundry.data.tokens import TokenShardWriter, tag_list

    scanned = scan(data)
    meta = {
        "codec": codec.record(),
        "levels": codec.levels,
        "codebook_size": codec.codebook_size,
        "frame_rate": codec.frame_rate,
        "sample_rate": codec.sample_rate,
        "channels": codec.channels,
        "data": str(Path(data).resolve()),
    }
    writer = TokenShardWriter(out, meta, shard_frames=shard_frames)
    root = Path(scanned.root)
    root = root if root.is_dir() else root.parent
    for bad in scanned.skipped:
        if not writer.done(bad["path"]):
            writer.skip(bad["path"], bad["reason"])
    todo = [it for it in scanned.items if not writer.done(it.path)]
    start = time.time()
    encoded = 0
    for n, item in enumerate(todo, 1):
        try:
            audio, _ = read_audio(item.path, sample_rate=codec.sample_rate,
                                  channels=codec.channels)
            if not np.isfinite(audio).all():
                raise DataError("audio holds NaN or Inf samples")
            if audio.shape[-1] == 0:
                raise DataError("no audio")
            codes = codec.encode(np.ascontiguousarray(audio, dtype=np.float32))
        except (SoundryError, RuntimeError, ValueError, OSError) as exc:
            writer.skip(item.path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            log.warning("skipped %s: %s", item.path, exc)
            continue
        try:
            rel = str(Path(item.path).resolve().relative_to(root.resolve()))
        except ValueError:
            rel = item.path
        ids = [rel if c == 0 else f"{rel}#{c}" for c in range(codes.shape[0])]
        writer.add(item.path, list(codes), ids, text=item.text, tags=tag_list(item.tags),
                   speaker=item.speaker)
        encoded += 1
        if progress and (n % 50 == 0 or n == len(todo)):
            rate = n / max(time.time() - start, 1e-9)
            log.info("tokenized %d/%d files (%.1f files/s, ETA %.0f s)", n, len(todo), rate,
                     (len(todo) - n) / rate)
    writer.flush()
    index = writer.index
    return {
        "items": len(index.items),
        "frames": sum(it.frames for it in index.items),
        "encoded_now": encoded,
        "skipped": index.skipped,
        "seconds": round(time.time() - start, 2),
        "out": str(Path(out)),
    }
