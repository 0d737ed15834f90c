"""Precomputed per-file features (a teacher's, at a codec's frame rate) in safetensors shards.

A store is one folder ROOT/<name>-<key hash>-<data hash>/:

    index.json          what the features are (`key`: everything that defines them, e.g. the
                        teacher's content hash, layer, rates and pooling), their size `dim`,
                        and per file: shard, tensor name, frames, and the file's size
    shard-00000.safetensors ...   float32 tensors [dim, frames], one per file

The folder is written under a temporary name and renamed when complete, so a killed
extraction leaves no half store that training could mistake for a whole one (and nothing
an earlier complete store holds is touched). `find_store` picks, among the stores under
ROOT, one with the wanted key that covers the wanted files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from soundry.errors import DataError

INDEX = "index.json"
SHARD_BYTES = 256 << 20  # a new shard after this many bytes of features


def key_hash(key: dict[str, Any]) -> str:
    """sha256 of a key's canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def data_hash(files: Iterable[tuple[str, int]]) -> str:
    """sha256 over (path, frames) of the files a store covers (the data index)."""
    h = hashlib.sha256()
    for path, frames in sorted(files):
        h.update(f"{path}\t{frames}\n".encode())
    return h.hexdigest()


def text_digest(text: str | None) -> str | None:
    """A short hash of a transcript (a text teacher's features depend on it)."""
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def write_store(root: str | Path, name: str, key: dict[str, Any],
                items: Iterable[tuple[str, int, torch.Tensor]], files: list[tuple[str, int]],
                texts: dict[str, str | None] | None = None) -> Path:
    """Write the features `items` yields, (path, frames at the data rate, features [dim, F]),
    as a store for `files` [(path, frames)]; returns its folder. `texts`: the transcripts a
    text teacher read, by path (their hashes are kept, so an edited transcript is not
    served stale features). An existing complete store of the same key and data is
    replaced only once the new one is complete."""
    from safetensors.torch import save_file

    root = Path(root)
    final = root / f"{name}-{key_hash(key)[:12]}-{data_hash(files)[:8]}"
    tmp = root / f".{final.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    index: dict[str, Any] = {"name": name, "key": key, "key_hash": key_hash(key),
                             "data_hash": data_hash(files), "dim": None, "items": {}}
    shard: dict[str, torch.Tensor] = {}
    size, n_shard = 0, 0

    def flush() -> None:
        nonlocal shard, size, n_shard
        if shard:
            save_file(shard, str(tmp / f"shard-{n_shard:05d}.safetensors"))
            shard, size, n_shard = {}, 0, n_shard + 1

    for i, (path, frames, feats) in enumerate(items):
        feats = feats.detach().float().cpu().contiguous()
        if index["dim"] is None:
            index["dim"] = int(feats.shape[0])
        tensor = f"f{i}"
        shard[tensor] = feats
        index["items"][path] = {"shard": n_shard, "tensor": tensor, "codec_frames":
                                int(feats.shape[-1]), "frames": int(frames),
                                "size": _file_size(path),
                                "text": text_digest((texts or {}).get(path))}
        size += feats.numel() * 4
        if size >= SHARD_BYTES:
            flush()
    flush()
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


class FeatureStore:
    """A complete store, read lazily: `get(path, start, frames)` -> ([dim, frames], valid)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.index = json.loads((self.folder / INDEX).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"feature store {self.folder}: unreadable {INDEX} ({exc})") from None
        self.dim = int(self.index["dim"] or 0)
        self.items: dict[str, dict[str, Any]] = self.index["items"]
        self._handles: dict[int, Any] = {}

    def covers(self, files: Iterable[tuple[str, int]],
               texts: dict[str, str | None] | None = None) -> list[str]:
        """The files [(path, frames)] this store lacks, or holds for another length, size or
        (with `texts`) another transcript."""
        missing = []
        for path, frames in files:
            entry = self.items.get(path)
            if (entry is None or int(entry["frames"]) != int(frames)
                    or entry.get("size", -1) != _file_size(path)
                    or (texts is not None and entry.get("text") != text_digest(texts.get(path)))):
                missing.append(path)
        return missing

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard not in self._handles:
            path = self.folder / f"shard-{shard:05d}.safetensors"
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard]

    def full(self, path: str) -> torch.Tensor:
        """All stored features of a file [dim, F]."""
        entry = self._entry(path)
        return self._handle(int(entry["shard"])).get_tensor(entry["tensor"])

    def _entry(self, path: str) -> dict[str, Any]:
        entry = self.items.get(path)
        if entry is None:
            raise DataError(f"feature store {self.folder} holds no features of {path}; run "
                            "`soundry teacher-features` again over the training data")
        return entry

    def get(self, path: str, start: int, frames: int) -> tuple[torch.Tensor, int]:
        """Features of frames [start, start + frames) of a file: ([dim, frames], the number
        of them that exist; the rest, past the file's end, are zeros)."""
        entry = self._entry(path)
        total = int(entry["codec_frames"])
        stop = min(total, start + frames)
        out = torch.zeros(self.dim, frames)
        if stop > start:
            sl = self._handle(int(entry["shard"])).get_slice(entry["tensor"])
            out[:, : stop - start] = sl[:, start:stop]
        return out, max(0, stop - start)


def find_store(root: str | Path, key: dict[str, Any], files: list[tuple[str, int]],
               texts: dict[str, str | None] | None = None) -> tuple[FeatureStore | None, str]:
    """The store under `root` with this key that covers `files` (and `texts`, see
    `covers`), or (None, why not)."""
    root = Path(root)
    want = key_hash(key)
    seen = []
    for index in sorted(root.glob(f"*/{INDEX}")):
        if index.parent.name.startswith("."):
            continue  # an unfinished extraction
        try:
            meta = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("key_hash") != want:
            continue
        store = FeatureStore(index.parent)
        missing = store.covers(files, texts)
        if not missing:
            return store, ""
        seen.append(f"{index.parent.name} lacks {len(missing)} file(s), e.g. {missing[0]}")
    if seen:
        return None, "; ".join(seen)
    return None, f"no store under {root} has these features (key {want[:12]})"
