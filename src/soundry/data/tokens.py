"""Token shards: a dataset encoded once by a codec, read back as memory-mapped arrays.

Layout of a token directory::

    OUT/index.json          {"format", "codec": {...}, "levels", "codebook_size",
                             "frame_rate", "sample_rate", "channels", "shards": [...],
                             "items": [...], "skipped": [...], "sources_done": [...]}
    OUT/shard_00000.npy     int16/int32 [levels, frames]: items laid end to end in time

Each item records its shard, frame offset and length, and the manifest fields `text`,
`tags` (a list of strings) and `speaker`. `sources_done` lists the inputs already handled
(encoded or skipped), so an interrupted `soundry tokenize` resumes where it stopped.

`TokenDataset` crops a random window of each item, drawn from the generator of
(seed, epoch, index), so every epoch sees different windows and a resume rebuilds the same
batches. `build_token_loader` batches windows of similar duration (`DurationBucketSampler`)
and implements the engine's `TrainLoader` protocol.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from soundry.config import Strict
from soundry.data.samplers import (
    DurationBucketSampler,
    EpochBatchSampler,
    FixedItemsSampler,
    ItemKey,
    ShardedSampler,
    item_rng,
)
from soundry.errors import DataError

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "soundry-tokens/1"


# ----------------------------------------------------------------------------- config


class TokenDataConfig(Strict):
    """Where token shards are and how they are cut into training windows.

    window_seconds: longest training window (items shorter than it are used whole, with
      their end). Batches hold windows of similar duration: buckets `bucket_seconds` wide,
      at most `max_batch_seconds` of padded audio and `max_batch_size` items.
    valid_count: items held out of training for validation (ignored with --overfit).
    """

    path: str = ""
    window_seconds: float = Field(10.0, gt=0)
    bucket_seconds: float = Field(1.0, gt=0)
    max_batch_seconds: float = Field(64.0, gt=0)
    max_batch_size: int | None = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    valid_count: int = Field(4, ge=0)


# ----------------------------------------------------------------------------- index


@dataclass
class TokenItem:
    """One encoded item: `frames` frames at `offset` in shard `shard`."""

    id: str
    source: str
    shard: int
    offset: int
    frames: int
    text: str | None = None
    tags: list[str] = field(default_factory=list)
    speaker: str | None = None


class TokenIndex:
    """A token directory: metadata, items and lazily opened memory-mapped shards."""

    def __init__(self, root: Path, meta: dict[str, Any], items: list[TokenItem],
                 shards: list[str], skipped: list[dict[str, str]],
                 sources_done: list[str]) -> None:
        self.root = Path(root)
        self.meta = meta
        self.items = items
        self.shards = shards
        self.skipped = skipped
        self.sources_done = sources_done
        self._maps: dict[int, np.ndarray] = {}

    # -- metadata --------------------------------------------------------------------------

    @property
    def levels(self) -> int:
        return int(self.meta["levels"])

    @property
    def codebook_size(self) -> int:
        return int(self.meta["codebook_size"])

    @property
    def frame_rate(self) -> float:
        return float(self.meta["frame_rate"])

    @property
    def sample_rate(self) -> int:
        return int(self.meta["sample_rate"])

    @property
    def codec(self) -> dict[str, Any]:
        return dict(self.meta.get("codec", {}))

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, root: str | Path) -> TokenIndex:
        root = Path(root)
        path = root / INDEX_NAME
        if not path.is_file():
            raise DataError(f"'{root}' is not a token directory (no {INDEX_NAME}); "
                            "make one with `soundry tokenize CODEC DATA OUT`")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON ({exc})") from None
        if raw.get("format") != FORMAT:
            raise DataError(f"{path}: unknown token format {raw.get('format')!r}")
        meta = {k: v for k, v in raw.items()
                if k not in ("items", "shards", "skipped", "sources_done", "format")}
        items = [TokenItem(**it) for it in raw.get("items", [])]
        return cls(root, meta, items, list(raw.get("shards", [])),
                   list(raw.get("skipped", [])), list(raw.get("sources_done", [])))

    def shard(self, i: int) -> np.ndarray:
        """Shard `i` as a read-only memory map [levels, frames] (opened once per process)."""
        arr = self._maps.get(i)
        if arr is None:
            arr = np.load(self.root / self.shards[i], mmap_mode="r")
            self._maps[i] = arr
        return arr

    def codes(self, i: int, start: int = 0, length: int | None = None) -> np.ndarray:
        """Codes [levels, n] of item `i` from frame `start`, n = min(length, what is left)
        (a view of the memory map)."""
        item = self.items[i]
        start = min(max(int(start), 0), item.frames)
        rest = item.frames - start
        length = rest if length is None else min(int(length), rest)  # never into the next item
        begin = item.offset + start
        return self.shard(item.shard)[:, begin : begin + length]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # memory maps are reopened in each worker process
        return state

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            **self.meta,
            "shards": self.shards,
            "items": [asdict(it) for it in self.items],
            "skipped": self.skipped,
            "sources_done": self.sources_done,
        }

    def save(self) -> None:
        """Write index.json atomically."""
        path = self.root / INDEX_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)


def tag_list(tags: dict[str, str] | Sequence[str] | None) -> list[str]:
    """Manifest tags -> a list of strings: 'keywords' split at commas, other keys' values."""
    if not tags:
        return []
    if not isinstance(tags, dict):
        return [str(t).strip() for t in tags if str(t).strip()]
    out: list[str] = []
    for key, value in tags.items():
        parts = str(value).split(",") if key == "keywords" else [str(value)]
        out += [p.strip() for p in parts if p.strip()]
    return out


class TokenShardWriter:
    """Appends encoded items to a token directory, resumably.

    Items are buffered and written as one shard every `shard_frames` frames; the index is
    rewritten after each shard, so an interruption loses at most the buffered items, which
    a rerun encodes again (their sources are not yet in `sources_done`).
    """

    def __init__(self, root: str | Path, meta: dict[str, Any],
                 shard_frames: int = 1 << 20) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_frames = int(shard_frames)
        if (self.root / INDEX_NAME).is_file():
            self.index = TokenIndex.load(self.root)
            for key in ("levels", "codebook_size", "frame_rate", "sample_rate"):
                if self.index.meta.get(key) != meta.get(key):
                    raise DataError(
                        f"{self.root} holds tokens with {key}={self.index.meta.get(key)}, "
                        f"not {meta.get(key)}; use a new output directory"
                    )
        else:
            self.index = TokenIndex(self.root, dict(meta), [], [], [], [])
            self.index.save()
        self._done = set(self.index.sources_done)
        self._pending: list[tuple[TokenItem, np.ndarray]] = []
        self._pending_sources: list[str] = []
        self._pending_frames = 0
        self.dtype = np.int16 if int(meta["codebook_size"]) <= 32767 else np.int32

    def done(self, source: str) -> bool:
        """True when `source` was already encoded or skipped by an earlier run."""
        return source in self._done

    def add(self, source: str, codes: Sequence[np.ndarray], ids: Sequence[str],
            text: str | None = None, tags: list[str] | None = None,
            speaker: str | None = None) -> None:
        """Queue the items of one source (e.g. one per channel): codes [levels, frames]."""
        for item_id, c in zip(ids, codes, strict=True):
            c = np.asarray(c)
            if c.ndim != 2 or c.shape[0] != self.index.levels:
                raise ValueError(f"codes must be [{self.index.levels}, frames], got {c.shape}")
            item = TokenItem(id=item_id, source=source, shard=-1, offset=-1,
                             frames=int(c.shape[1]), text=text, tags=list(tags or []),
                             speaker=speaker)
            self._pending.append((item, c.astype(self.dtype)))
            self._pending_frames += item.frames
        self._pending_sources.append(source)
        if self._pending_frames >= self.shard_frames:
            self.flush()

    def skip(self, source: str, reason: str) -> None:
        """Record an unusable input (listed in the index, not retried on resume)."""
        self.index.skipped.append({"path": source, "reason": reason})
        self._pending_sources.append(source)

    def flush(self) -> None:
        """Write the buffered items as a new shard and save the index."""
        if self._pending:
            number = len(self.index.shards)
            name = f"shard_{number:05d}.npy"
            data = np.concatenate([c for _, c in self._pending], axis=1)
            tmp = self.root / (name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, data)
            os.replace(tmp, self.root / name)
            offset = 0
            for item, c in self._pending:
                item.shard, item.offset = number, offset
                offset += c.shape[1]
                self.index.items.append(item)
            self.index.shards.append(name)
        self.index.sources_done += self._pending_sources
        self._done.update(self._pending_sources)
        self._pending, self._pending_sources, self._pending_frames = [], [], 0
        self.index.save()


# ----------------------------------------------------------------------------- dataset


class TokenDataset(torch.utils.data.Dataset):
    """Random windows of token items, keyed by `ItemKey` (item = position in `items`).

    Each item yields codes [levels, n] (n <= window), `end` (the window reaches the item's
    end, so the pattern places EOS), the window `offset`, its text/tags/speaker and `seed`,
    an integer drawn from the same (seed, epoch, index) generator for conditioning choices
    (tag shuffling, condition dropout).
    """

    def __init__(self, index: TokenIndex, items: Sequence[int], window_frames: int,
                 seed: int, levels: int | None = None) -> None:
        self.index = index
        self.items = list(items)
        self.window = int(window_frames)
        self.seed = int(seed)
        self.levels = index.levels if levels is None else int(levels)
        if self.levels > index.levels:
            raise DataError(f"the model uses {self.levels} levels; the tokens in "
                            f"{index.root} have {index.levels}")
        if self.window < 1:
            raise DataError("the training window is shorter than one frame")

    def __len__(self) -> int:
        return len(self.items)

    def durations(self) -> list[float]:
        """Seconds of each item's window (for duration bucketing)."""
        rate = self.index.frame_rate
        return [min(self.index.items[i].frames, self.window) / rate for i in self.items]

    def window_of(self, item_frames: int, rng: np.random.Generator) -> tuple[int, int]:
        """(offset, length) of a uniformly placed window; the whole item if it fits."""
        if item_frames <= self.window:
            return 0, item_frames
        return int(rng.integers(0, item_frames - self.window + 1)), self.window

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        position = key.item
        item = self.index.items[self.items[position]]
        rng = item_rng(self.seed, key.epoch, key.index)
        offset, length = self.window_of(item.frames, rng)
        codes = self.index.codes(self.items[position], offset, length)[: self.levels]
        return {
            "codes": np.asarray(codes, dtype=np.int64),
            "offset": offset,
            "frames": item.frames,
            "end": offset + length == item.frames,
            "text": item.text,
            "tags": list(item.tags),
            "speaker": item.speaker,
            "seed": int(rng.integers(0, 2**62)),
            "id": item.id,
        }


def collate_tokens(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch: codes [B, K, T] (zero-padded), lengths/offsets [B], item_frames [B] (each
    item's whole length; when known), ends [B] bool, and lists text, tags, speaker, seed, id."""
    longest = max(it["codes"].shape[1] for it in items)
    levels = items[0]["codes"].shape[0]
    codes = torch.zeros(len(items), levels, longest, dtype=torch.long)
    for b, it in enumerate(items):
        codes[b, :, : it["codes"].shape[1]] = torch.from_numpy(it["codes"])
    batch: dict[str, Any] = {
        "codes": codes,
        "lengths": torch.tensor([it["codes"].shape[1] for it in items], dtype=torch.long),
        "offsets": torch.tensor([it["offset"] for it in items], dtype=torch.long),
        "ends": torch.tensor([bool(it["end"]) for it in items], dtype=torch.bool),
    }
    if all("frames" in it for it in items):
        batch["item_frames"] = torch.tensor([it["frames"] for it in items], dtype=torch.long)
    for key in ("text", "tags", "speaker", "seed", "id"):
        batch[key] = [it[key] for it in items]
    return batch


class TokenLoader:
    """Endless, resumable batches of token windows (the engine's `TrainLoader`).

    `state_dict()` is the position of the next batch the caller receives; batches prefetched
    but not taken are rebuilt identically after `load_state_dict`, since every random choice
    of an item depends only on (seed, epoch, index).

    The torch DataLoader gets its own generator, seeded from `seed` (default: the dataset's,
    i.e. the run seed), so starting it never draws from torch's global generator (see the
    engine's `TrainLoader` protocol).
    """

    def __init__(self, dataset: TokenDataset, sampler: EpochBatchSampler,
                 num_workers: int = 0, seed: int | None = None,
                 collate: Any = None) -> None:
        self.dataset = dataset
        self.collate = collate or collate_tokens
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.seed = int(dataset.seed if seed is None else seed)
        self.epoch = 0
        self.batch = 0
        self._it: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self.sampler.load_state_dict({"epoch": self.epoch, "batch": self.batch})
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate,
                prefetch_factor=2 if self.num_workers > 0 else None,
                generator=torch.Generator().manual_seed(self.seed),
            )
            self._it = iter(loader)
        batch = next(self._it)
        self.epoch, self.batch = self.sampler.advance(self.epoch, self.batch)
        return batch

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def health_context(self) -> dict[str, Any]:
        """For the health monitors: token windows are random (crop_coverage checks them)."""
        return {"random_windows": True}


def split_items(index: TokenIndex, valid_count: int) -> tuple[list[int], list[int]]:
    """(train, valid) item positions: every n-th item is held out, `valid_count` in all."""
    n = len(index.items)
    if n == 0:
        raise DataError(f"{index.root} holds no items")
    count = min(valid_count, n - 1)
    if count <= 0:
        return list(range(n)), []
    step = n / count
    valid = sorted({int(i * step + step / 2) for i in range(count)})
    held = set(valid)
    return [i for i in range(n) if i not in held], valid


def build_token_loader(cfg: TokenDataConfig, seed: int, levels: int | None = None,
                       overfit: int | None = None, index: TokenIndex | None = None,
                       rank: int = 0, world_size: int = 1) -> TokenLoader:
    """The training loader of a `tokens:` section; `overfit` cycles over N fixed items.

    With several data-parallel processes, each batch is a global batch and process `rank`
    takes its share of it (`ShardedSampler`).
    """
    index = index or TokenIndex.load(cfg.path)
    if overfit:
        train = list(range(len(index.items)))
    else:
        train, _ = split_items(index, cfg.valid_count)
    window = max(1, round(cfg.window_seconds * index.frame_rate))
    dataset = TokenDataset(index, train, window, seed, levels)
    sampler: EpochBatchSampler = DurationBucketSampler(
        dataset.durations(), cfg.max_batch_seconds, cfg.bucket_seconds, cfg.max_batch_size,
        seed,
    )
    if overfit:
        count = min(int(overfit), len(train))
        sampler = FixedItemsSampler(sampler, count, min(count, cfg.max_batch_size or count))
    if world_size > 1:
        sampler = ShardedSampler(sampler, rank, world_size)
    log.info("token data: %d training items (%.2f h) from %s", len(train),
             sum(index.items[i].frames for i in train) / index.frame_rate / 3600, index.root)
    return TokenLoader(dataset, sampler, cfg.num_workers, seed=seed)
