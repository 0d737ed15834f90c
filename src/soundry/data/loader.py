"""Training and validation data from a `data:` recipe section.

`build_train_loader` scans the sources, builds the dataset of `data.mode` and a batch
sampler, and wraps a torch DataLoader with `num_workers` workers in a `ClipLoader`: an
endless iterator whose position (epoch, batch of batches consumed by the caller) can be
saved and restored exactly. Batches are dicts of tensors:

- `audio`: float32 [B, C, T] in [-1, 1] (for pairs: the clean target; `target` is the same
  tensor and `input` the degraded side, both [B, C, T]);
- `lengths`: samples of each item that hold audio (the rest is end padding);
- `index`, `epoch`, `source`, `offset` (crop start in samples), `replaced` (how many bad
  files each item had to skip), `file` (the file's index in its source), `file_frames`
  (the file's length in samples): int64 [B]. The health monitors read the windows from
  these, so crop coverage costs no extra pass over the data.

Validation: `build_valid_items` returns fixed, deterministic crops. When `data.valid` names
a folder or manifest, the crops come from there. When it is None, files are held out of the
training sources: about a tenth of each source (chosen by a hash of the file's path within
its source, so the choice is stable as files are added), at most `valid_count` files in
all, and those files are never used for training. Sources of fewer than ten files give up
none; when no source can spare a file, validation crops come from the training files and a
warning says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from soundry.audio.degrade import Degrader
from soundry.data.config import DataConfig
from soundry.data.datasets import (
    DATASETS,
    ClipDataset,
    fixed_crops,
    normalization_gain,
    read_crop,
    round_robin,
)
from soundry.data.samplers import (
    DurationBucketSampler,
    EpochBatchSampler,
    FixedItemsSampler,
    MixedSourceSampler,
    ShardedSampler,
    make_rng,
)
from soundry.data.scan import AudioItem, DatasetIndex, scan, scan_pairs
from soundry.errors import DataError

log = logging.getLogger("soundry.data")

#: a tenth of each source is held out for validation when `data.valid` is None
HOLDOUT_FRACTION = 10
#: seed of the deterministic degradations of validation pairs
VALID_SEED = 0


# ----------------------------------------------------------------------------- sources


@dataclass
class Sources:
    """Scanned sources of a data config, split into training and held-out files."""

    names: list[str]
    weights: list[float]
    indexes: list[DatasetIndex]
    train: list[list[AudioItem]]
    held_out: list[AudioItem] = field(default_factory=list)

    @property
    def skipped(self) -> list[dict[str, str]]:
        return [s for index in self.indexes for s in index.skipped]


def load_sources(cfg: DataConfig, cache: bool = True) -> Sources:
    """Scan every source of `cfg` (bad files skipped) and hold out validation files.

    Raises DataError when there is no source or a source has no usable file.
    """
    if not cfg.sources:
        raise DataError(
            "data.sources is empty: add at least one folder or manifest, e.g. "
            "data.sources=[{path: data/train}]"
        )
    names, indexes = [], []
    for i, src in enumerate(cfg.sources):
        if src.target is not None:
            index = scan_pairs(src.path, src.target, min_seconds=cfg.min_seconds, cache=cache)
        else:
            index = scan(src.path, min_seconds=cfg.min_seconds, cache=cache)
        index.require_usable()
        names.append(src.name or _source_name(src.path, i))
        indexes.append(index)
    train = [list(index.items) for index in indexes]
    held: list[AudioItem] = []
    if cfg.valid is None:
        train, held = _hold_out(indexes, cfg.valid_count)
    return Sources(names, [s.weight for s in cfg.sources], indexes, train, held)


def _source_name(path: str, i: int) -> str:
    stem = os.path.basename(os.path.normpath(path))
    return stem or f"source{i}"


def _hold_out(
    indexes: list[DatasetIndex], count: int
) -> tuple[list[list[AudioItem]], list[AudioItem]]:
    """(training items per source, held-out items): see the module docstring."""
    ranked = []
    for index in indexes:
        root = index.root if os.path.isdir(index.root) else os.path.dirname(index.root)

        def rank(item: AudioItem, root: str = root) -> str:
            # a packed item ranks by its original relative path: a packed set holds out
            # the same files as the folder it was packed from
            rel = item.label if item.label is not None else \
                os.path.relpath(item.path, os.path.abspath(root))
            return hashlib.sha1(rel.encode()).hexdigest()

        ranked.append(sorted(index.items, key=rank)[: len(index.items) // HOLDOUT_FRACTION])
    held = round_robin(ranked)[:count]
    held_paths = {item.path for item in held}
    train = [[it for it in index.items if it.path not in held_paths] for index in indexes]
    return train, held


# ----------------------------------------------------------------------------- batches


# item key -> batch key of the per-item integers
_INT_FIELDS = (
    ("length", "lengths"),
    ("index", "index"),
    ("epoch", "epoch"),
    ("source", "source"),
    ("offset", "offset"),
    ("replaced", "replaced"),
    ("file", "file"),
    ("file_frames", "file_frames"),
)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch; variable-length items are zero-padded to the longest."""
    longest = max(item["audio"].shape[-1] for item in items)

    def stack(key: str) -> torch.Tensor:
        arrays = []
        for item in items:
            x = item[key]
            if x.shape[-1] < longest:
                x = np.pad(x, ((0, 0), (0, longest - x.shape[-1])))
            arrays.append(x)
        return torch.from_numpy(np.stack(arrays))

    batch: dict[str, Any] = {"audio": stack("audio")}
    if "input" in items[0]:
        batch["input"] = stack("input")
        batch["target"] = batch["audio"]
    for key, name in _INT_FIELDS:
        batch[name] = torch.tensor([int(item[key]) for item in items], dtype=torch.long)
    batch["meta"] = [item["meta"] for item in items]
    return batch


class ClipLoader:
    """Endless, resumable iterator of training batches (the `TrainLoader` protocol).

    `state_dict()` is the position of the next batch the caller will receive: batches a
    worker prefetched but the caller never took are made again, identically, after
    `load_state_dict`, because items depend only on (seed, epoch, index).

    Counters: `replaced` (items whose file was unreadable or held NaN/Inf and were replaced),
    `bad_files` (paths that failed while training), `skipped` (files the scan rejected).
    """

    def __init__(
        self,
        dataset: ClipDataset,
        sampler: EpochBatchSampler,
        num_workers: int = 0,
        sources: Sources | None = None,
        with_meta: bool = False,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.sources = sources
        self.with_meta = with_meta
        self.epoch = 0
        self.batch = 0
        self.replaced = 0
        self.bad_files: set[str] = set()
        self._it: Iterator[dict[str, Any]] | None = None

    # -------------------------------------------------------------- iteration

    def __iter__(self) -> ClipLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self.epoch, self.batch = self.sampler.advance(self.epoch, self.batch)
        meta = batch.pop("meta")
        self._count_bad(batch, meta)
        if self.with_meta:
            batch["meta"] = meta
        return batch

    def _start(self) -> Iterator[dict[str, Any]]:
        self.sampler.load_state_dict({"epoch": self.epoch, "batch": self.batch})
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers > 0 else None,
            # Items seed themselves from (seed, epoch, index); this generator only keeps the
            # DataLoader from drawing its workers' base seed from the global generator.
            generator=torch.Generator().manual_seed(self.epoch),
        )
        return iter(loader)

    def _count_bad(self, batch: dict[str, Any], meta: list[dict[str, Any]]) -> None:
        n = int((batch["replaced"] > 0).sum())
        if not n:
            return
        self.replaced += n
        for m in meta:
            for fail in m.get("failed", ()):
                if fail["path"] not in self.bad_files:
                    self.bad_files.add(fail["path"])
                    log.warning("replaced a training item: %s: %s", fail["path"], fail["reason"])

    def close(self) -> None:
        """Stop the worker processes (they are restarted by the next `next()`)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean up
            pass

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """{"epoch", "batch"}: where the next batch comes from; plus the `replaced` count."""
        return {"epoch": self.epoch, "batch": self.batch, "replaced": self.replaced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume so that the next batch is batch `batch` of epoch `epoch`."""
        self.close()
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.replaced = int(state.get("replaced", 0))

    # -------------------------------------------------------------- reporting

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files the scan rejected, as {path, reason}."""
        return self.sources.skipped if self.sources is not None else []

    def health_context(self) -> dict[str, Any]:
        """For the health monitors: the files' stored sample rates (count per rate), the
        rate the model sees, and whether training windows are random crops."""
        rates: dict[int, int] = {}
        for items in self.dataset.sources:
            for it in items:
                rates[int(it.sample_rate)] = rates.get(int(it.sample_rate), 0) + 1
        return {"file_rates": rates, "sample_rate": self.dataset.sample_rate,
                "random_windows": self.dataset.random_windows}

    def summary(self) -> dict[str, Any]:
        """Counts for a run summary: usable and skipped files, hours, replaced items."""
        usable = sum(len(items) for items in self.dataset.sources)
        seconds = sum(it.duration for items in self.dataset.sources for it in items)
        return {
            "usable_files": usable,
            "total_seconds": round(seconds, 3),
            "skipped_files": len(self.skipped),
            "replaced_items": self.replaced,
            "bad_files": sorted(self.bad_files),
        }


def build_train_loader(
    data_cfg: DataConfig,
    seed: int,
    hop: int = 1,
    augment: bool = True,
    overfit: int | None = None,
    with_meta: bool = False,
    num_workers: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ClipLoader:
    """The training loader of a `data:` section (see the module docstring).

    `hop`: the model's hop in samples (crops snap to it when `data.snap_to_hop`);
    `augment`: apply `data.augment`; `overfit`: cycle over that many fixed items;
    `with_meta`: batches also carry `meta`, a list of per-item dicts (source file, offset,
    augmentations applied); `num_workers` overrides `data.num_workers`.
    `rank`, `world_size`: data-parallel sharding. `data.batch_size` is per process; the
    processes together consume global batches of `batch_size * world_size` items.
    """
    sources = load_sources(data_cfg)
    dataset = DATASETS[data_cfg.mode](sources.train, data_cfg, seed, hop=hop, augment=augment)
    sampler = _sampler(data_cfg, sources, seed, dataset, world_size)
    if overfit is not None:
        sampler = FixedItemsSampler(sampler, int(overfit), data_cfg.batch_size * world_size)
    if world_size > 1:
        sampler = ShardedSampler(sampler, rank, world_size)
    usable = sum(len(items) for items in sources.train)
    hours = sum(it.duration for items in sources.train for it in items) / 3600
    log.info(
        "training data: %d files (%.2f h) from %d source(s); %d skipped, %d held out for "
        "validation", usable, hours, len(sources.train), len(sources.skipped),
        len(sources.held_out),
    )
    for s in sources.skipped[:5]:
        log.info("skipped %s: %s", s["path"], s["reason"])
    workers = data_cfg.num_workers if num_workers is None else num_workers
    return ClipLoader(dataset, sampler, workers, sources=sources, with_meta=with_meta)


def _sampler(
    cfg: DataConfig, sources: Sources, seed: int, dataset: ClipDataset, world_size: int = 1
) -> EpochBatchSampler:
    if cfg.mode == "utterances":
        durations, ids = [], []
        for s, items in enumerate(sources.train):
            for i, item in enumerate(items):
                durations.append(min(item.duration, dataset.frames / cfg.sample_rate))
                ids.append((s, i))
        b = cfg.bucket  # limits per process: the global batches hold world_size times more
        size = b.max_batch_size * world_size if b.max_batch_size else None
        return DurationBucketSampler(
            durations, b.max_batch_seconds * world_size, b.bucket_seconds, size, seed, ids
        )
    sizes = [len(items) for items in sources.train]
    return MixedSourceSampler(sizes, sources.weights, cfg.batch_size * world_size, seed)


# ----------------------------------------------------------------------------- validation


def _valid_files(cfg: DataConfig) -> list[AudioItem]:
    if cfg.valid is not None:
        index = scan(cfg.valid, min_seconds=cfg.min_seconds)
        index.require_usable()
        return index.items
    sources = load_sources(cfg)
    if sources.held_out:
        return sources.held_out
    log.warning(
        "validation crops come from training files: set data.valid, or give a source at "
        "least %d files so some can be held out", HOLDOUT_FRACTION,
    )
    return round_robin(sources.train)


def _valid_name(i: int, item: AudioItem) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in item.name)
    return f"{i:02d}_{stem}"[:64]


def _read_valid(
    cfg: DataConfig, item: AudioItem, offset: int, frames: int, path: str
) -> np.ndarray:
    return read_crop(path, item, offset, frames, cfg.sample_rate, cfg.channels)


def build_valid_items(data_cfg: DataConfig, hop: int = 1) -> list[tuple[str, np.ndarray]]:
    """Fixed validation clips: [(name, float32 [C, T])], loudness-normalised, no augmentation.

    Crops are `valid_seconds` long (snapped to `hop`), `valid_count` of them, from
    `data.valid` or from files held out of the sources (see the module docstring). For a
    paired source the clip is the target side; see `build_valid_pairs` for both sides.
    """
    return [(name, target) for name, _, target, _, _ in _valid_crops(data_cfg, hop)]


def build_valid_windows(
    data_cfg: DataConfig, hop: int = 1
) -> list[tuple[str, np.ndarray, AudioItem, int]]:
    """`build_valid_items` with where each clip was cut: [(name, clip [C, T], file, offset
    in samples at `data.sample_rate`)], for tasks that look up per-file data (transcripts,
    precomputed features) of a validation clip."""
    return [(name, target, item, offset)
            for name, _, target, item, offset in _valid_crops(data_cfg, hop)]


def build_valid_pairs(
    data_cfg: DataConfig, hop: int = 1
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Fixed validation pairs for audio-to-audio tasks: [(name, input [C, T], target [C, T])].

    Paired files give their real input; other files are degraded with `data.degrade`
    (deterministically: the generator of item i is seeded by a fixed seed and i).
    """
    if not data_cfg.paired:
        raise DataError("validation pairs need paired sources or a `data.degrade` section")
    return [(name, noisy, clean) for name, noisy, clean, _, _ in _valid_crops(data_cfg, hop)]


def _valid_crops(cfg: DataConfig, hop: int
                 ) -> list[tuple[str, np.ndarray, np.ndarray, AudioItem, int]]:
    items = _valid_files(cfg)
    degrader = Degrader(cfg.degrade, cfg.sample_rate) if cfg.degrade else None
    out = []
    for i, (item, offset, frames) in enumerate(
        fixed_crops(items, cfg.valid_count, cfg.valid_seconds, cfg, hop)
    ):
        try:
            clean = _read_valid(cfg, item, offset, frames, item.target or item.path)
            noisy = clean
            if item.target is not None:
                noisy = _read_valid(cfg, item, offset, frames, item.path)
        except DataError as exc:
            log.warning("validation clip left out: %s", exc)
            continue
        gain = normalization_gain(clean, cfg.sample_rate, cfg.loudness)
        clean, noisy = clean * gain, noisy * gain
        if item.target is None and degrader is not None:
            rng = make_rng(VALID_SEED, i)
            noisy = degrader.apply(clean, degrader.draw(rng))
        elif item.target is None and cfg.paired:
            raise DataError(
                f"validation file {item.path} has no target: with paired sources leave "
                "data.valid unset (pairs are then held out of the sources) or set data.degrade"
            )
        if not (np.isfinite(clean).all() and np.isfinite(noisy).all()):
            log.warning("validation clip from %s holds NaN/Inf samples; left out", item.path)
            continue
        out.append((_valid_name(i, item), noisy, clean, item, offset))
    if not out:
        raise DataError("no usable validation clip (every candidate held NaN/Inf samples)")
    return out

