"""`soundry data pack`: write a folder or manifest as WebDataset shards with an index (the
layout and how training reads it: `soundry.data.shards`)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from soundry.data.shards import FORMAT, INDEX_NAME, ITEMS_NAME
from soundry.errors import DataError

FORMATS = {"flac": ("FLAC", "PCM_24"), "wav": ("WAV", "FLOAT")}


@dataclass
class PackResult:
    """What `pack` wrote."""

    out: Path
    shards: list[dict[str, Any]]
    items: int
    hours: float
    skipped: list[dict[str, str]]


def _encode(audio: np.ndarray, sample_rate: int, fmt: str, bits: int = 24) -> bytes:
    kind, subtype = FORMATS[fmt]
    if fmt == "flac":
        subtype = f"PCM_{bits}"
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.T, -1.0, 1.0) if fmt == "flac" else audio.T, sample_rate,
             format=kind, subtype=subtype)
    return buf.getvalue()


def pack(
    data: str | Path,
    out: str | Path,
    *,
    shard_bytes: int = 512 * 2**20,
    sample_rate: int | None = None,
    fmt: str = "flac",
    bits: int = 24,
    min_seconds: float = 0.0,
) -> PackResult:
    """Pack the usable files of `data` (folder or manifest) into shards under `out` (see the
    module docstring). `sample_rate`: resample every file to it (None: keep each file's);
    `fmt`: "flac" (`bits` 24: lossless for 16/24-bit sources, or 16; samples clipped to
    [-1, 1]) or "wav" (32-bit float). Bad files and files with non-finite samples are skipped and
    listed in index.json."""
    import webdataset as wds

    from soundry.audio.io import read_audio
    from soundry.data.scan import scan

    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if bits not in (16, 24):
        raise DataError(f"FLAC bit depth must be 16 or 24, got {bits}")
    if shard_bytes < 1:
        raise DataError("shard size must be positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_NAME).exists():
        raise DataError(f"'{out}' already holds a packed set ({INDEX_NAME}); choose another "
                        "folder or delete it")
    index = scan(data, min_seconds=min_seconds, cache=False)
    skipped = list(index.skipped)
    shards: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    writer: Any = None
    pending: list[dict[str, Any]] = []
    size = 0

    def close_shard() -> None:
        nonlocal writer, pending, size
        if writer is None:
            return
        writer.close()
        name = shards[-1]["name"]
        with tarfile.open(out / name) as tar:
            members = {m.name: m for m in tar.getmembers()}
        for entry in pending:
            m = members[entry.pop("_member")]
            lines.append({**entry, "shard": name, "offset": m.offset_data, "size": m.size})
        shards[-1]["bytes"] = (out / name).stat().st_size
        writer, pending, size = None, [], 0

    root = Path(index.root)
    root = root.parent if root.is_file() else root  # a manifest: paths relative to its folder
    for n, item in enumerate(index.items):
        try:
            audio, sr = read_audio(item.path, sample_rate=sample_rate)
        except DataError as exc:
            skipped.append({"path": item.path, "reason": str(exc)})
            continue
        if not np.isfinite(audio).all():
            skipped.append({"path": item.path, "reason": "non-finite samples (NaN or Inf)"})
            continue
        data_bytes = _encode(audio, sr, fmt, bits)
        if writer is not None and size + len(data_bytes) > shard_bytes:
            close_shard()
        if writer is None:
            name = f"shard-{len(shards):06d}.tar"
            writer = wds.TarWriter(str(out / name))
            shards.append({"name": name, "items": 0, "bytes": 0})
        key = f"{n:09d}"
        try:
            rel = str(Path(item.path).resolve().relative_to(root.resolve()))
        except ValueError:
            rel = Path(item.path).name
        meta = {"key": key, "source": rel, "sample_rate": sr, "channels": int(audio.shape[0]),
                "frames": int(audio.shape[-1]), "duration": audio.shape[-1] / sr,
                "text": item.text, "speaker": item.speaker, "tags": item.tags, "format": fmt}
        writer.write({"__key__": key, fmt: data_bytes,
                      "json": json.dumps(meta).encode()})
        size += len(data_bytes)
        shards[-1]["items"] += 1
        pending.append({**meta, "_member": f"{key}.{fmt}"})
    close_shard()
    hours = sum(line["duration"] for line in lines) / 3600.0
    (out / ITEMS_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    head = {"format": FORMAT, "version": 1, "shards": shards, "items": len(lines),
            "hours": hours, "audio_format": fmt, "sample_rate": sample_rate,
            "source": str(data), "skipped": skipped}
    tmp = out / f".{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(head, indent=1))
    tmp.replace(out / INDEX_NAME)
    return PackResult(out, shards, len(lines), hours, skipped)


__all__ = ["FORMATS", "PackResult", "pack"]
