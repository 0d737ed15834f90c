"""Datasets that turn indexed files into training items.

`ClipDataset` is map-style over `ItemKey`s (see `soundry.data.samplers`): item
`(epoch, index, source, file)` is a crop of that file whose every random choice (crop
offset, silence retries, augmentation and degradation parameters) comes from a generator
seeded by (seed, epoch, index) only. Workers, ranks and prefetching never change an item.

Item kinds, chosen by `data.mode`:

- `ClipDataset` (`clips`): random crops of `segment_seconds`, offsets (and the length)
  snapped to a multiple of the model hop when `snap_to_hop`; files shorter than the crop are
  zero-padded at the end. With `loudness.min_lufs`, a crop quieter than that is re-drawn at
  a new offset up to `loudness.retries` times and the loudest try is kept.
- `OneShotDataset` (`oneshot`): the first `segment_seconds` of each file, padded/trimmed.
- `UtteranceDataset` (`utterances`): whole files, cut to at most `segment_seconds` (a random
  window of longer ones), for the duration-bucketed sampler.

Pairs: when a file has a `target` (a paired source), the target is read at the same window
and becomes `audio`, the file itself `input`. With `data.degrade`, files without a target
become pairs on the fly: `audio` = the clean crop, `input` = a degraded copy. Level
augmentations (phase, gain, polarity, dequantisation) are applied identically to both.

Bad files: a read error or a NaN/Inf sample replaces the item by another file, chosen by
the item's generator (so deterministically): first from the same source, then from any.
The item records how many replacements it took (`replaced`) and which files failed.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch.utils.data

from soundry.audio.augment import Augmenter, fit_length, pitch_shift
from soundry.audio.degrade import Degrader
from soundry.audio.io import read_audio
from soundry.audio.loudness import loudness_gain, measure_loudness
from soundry.data.config import DataConfig, LoudnessConfig
from soundry.data.samplers import (
    PURPOSE_AUGMENT,
    PURPOSE_CROP,
    PURPOSE_DEGRADE,
    PURPOSE_REPLACE,
    ItemKey,
    item_rng,
)
from soundry.data.scan import AudioItem
from soundry.errors import DataError

T = TypeVar("T")

#: replacement attempts within the item's own source, then across all sources
SAME_SOURCE_ATTEMPTS = 8
ANY_SOURCE_ATTEMPTS = 8


def segment_frames(seconds: float, sample_rate: int, hop: int = 1, snap: bool = True) -> int:
    """Length in samples of a `seconds` crop, a multiple of `hop` (at least one hop) if `snap`."""
    frames = max(1, round(seconds * sample_rate))
    if snap and hop > 1:
        frames = max(hop, frames // hop * hop)
    return frames


def random_offset(rng: np.random.Generator, total: int, frames: int, hop: int = 1) -> int:
    """Uniform crop start in [0, total - frames], on a multiple of `hop`; 0 if it does not fit."""
    if total <= frames:
        return 0
    return int(rng.integers(0, (total - frames) // hop + 1)) * hop


def target_frames(item: AudioItem, sample_rate: int) -> int:
    """Length of `item` in samples once resampled to `sample_rate`."""
    return item.frames * sample_rate // item.sample_rate


def read_crop(
    path: str,
    item: AudioItem,
    offset: int,
    frames: int,
    sample_rate: int,
    channels: int,
) -> np.ndarray:
    """`frames` samples at `sample_rate` starting at `offset` (both at that rate): [C, frames].

    The file is read only around the crop (converted to its own rate), resampled, and
    zero-padded at the end when it runs out.
    """
    if item.sample_rate == sample_rate:
        audio, _ = read_audio(path, offset, frames, channels=channels)
    else:
        ratio = item.sample_rate / sample_rate
        start = int(math.floor(offset * ratio))
        # a few extra input frames so the resampled chunk is not short of `frames`
        need = int(math.ceil(frames * ratio)) + 2
        audio, _ = read_audio(path, start, need, sample_rate=sample_rate, channels=channels)
    return fit_length(audio, frames)


class ClipDataset(torch.utils.data.Dataset):
    """Random crops of the files of several sources; `dataset[key]` is one item (a dict).

    An item holds numpy arrays / ints: `audio` float32 [C, T] in [-1, 1] (the target of a
    pair), `input` float32 [C, T] (pairs only), `length` (valid samples of `audio`), `epoch`,
    `index`, `source`, `offset` (crop start in samples at `data.sample_rate`), `replaced`
    (replacements needed), `file` (the file's index in its source), `file_frames` (its
    length in samples at `data.sample_rate`) and `meta` (path, offset, applied
    augmentations, failed files).
    """

    #: training windows are random crops (the health monitors check that they move)
    random_windows = True

    def __init__(
        self,
        sources: list[list[AudioItem]],
        cfg: DataConfig,
        seed: int,
        hop: int = 1,
        augment: bool = True,
    ) -> None:
        if not sources or any(len(items) == 0 for items in sources):
            raise DataError("every data source needs at least one usable file")
        self.sources = sources
        self.cfg = cfg
        self.seed = int(seed)
        self.hop = max(1, int(hop)) if cfg.snap_to_hop else 1
        self.sample_rate = cfg.sample_rate
        self.frames = segment_frames(cfg.segment_seconds, cfg.sample_rate, hop, cfg.snap_to_hop)
        self.augmenter = Augmenter(cfg.augment, cfg.sample_rate) if augment else None
        self.degrader = Degrader(cfg.degrade, cfg.sample_rate) if cfg.degrade else None

    # -------------------------------------------------------------- subclasses refine these

    def window(self, item: AudioItem, rng: np.random.Generator, frames: int) -> tuple[int, int]:
        """(offset, length) of the output window in samples at `sample_rate` (random crop)."""
        return random_offset(rng, target_frames(item, self.sample_rate), frames, self.hop), frames

    def retries(self, item: AudioItem, frames: int) -> int:
        """How many more windows to try when the first is too quiet."""
        if self.cfg.loudness.min_lufs is None:
            return 0
        if target_frames(item, self.sample_rate) <= frames:
            return 0  # only one possible window
        return self.cfg.loudness.retries

    # -------------------------------------------------------------- items

    def __len__(self) -> int:
        return sum(len(items) for items in self.sources)

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        key = ItemKey(*key)
        failed: list[dict[str, str]] = []
        source, index = key.source, key.item
        total = SAME_SOURCE_ATTEMPTS + ANY_SOURCE_ATTEMPTS
        for attempt in range(total + 1):
            if attempt > 0:  # a deterministic replacement for the failed file
                pick = item_rng(self.seed, key.epoch, key.index, attempt, PURPOSE_REPLACE)
                if attempt > SAME_SOURCE_ATTEMPTS:
                    source = int(pick.integers(len(self.sources)))
                index = int(pick.integers(len(self.sources[source])))
            item = self.sources[source][index]
            try:
                out = self._make(key, item, attempt)
            except DataError as exc:
                failed.append({"path": item.path, "reason": str(exc)})
                continue
            if not all(np.isfinite(out[k]).all() for k in ("audio", "input") if k in out):
                failed.append({"path": item.path, "reason": "non-finite samples (NaN/Inf)"})
                continue
            out.update(source=source, replaced=attempt, file=index,
                       file_frames=target_frames(item, self.sample_rate))
            out["meta"].update(source=source, item=index, replaced=attempt, failed=failed)
            return out
        raise DataError(
            f"item {key.index} of epoch {key.epoch}: {len(failed)} files in a row were "
            f"unreadable or held NaN/Inf samples (last: {failed[-1]['path']}: "
            f"{failed[-1]['reason']}); check the data with `soundry data scan`"
        )

    def _make(self, key: ItemKey, item: AudioItem, attempt: int) -> dict[str, Any]:
        rng = item_rng(self.seed, key.epoch, key.index, attempt, PURPOSE_CROP)
        aug_rng = item_rng(self.seed, key.epoch, key.index, attempt, PURPOSE_AUGMENT)
        deg_rng = item_rng(self.seed, key.epoch, key.index, attempt, PURPOSE_DEGRADE)
        aug = self.augmenter.draw(aug_rng) if self.augmenter is not None else {}
        paired = item.target is not None
        deg = self.degrader.draw(deg_rng) if self.degrader is not None and not paired else {}
        frames = self.augmenter.input_frames(self.frames, aug) if aug else self.frames

        offset, length = self.window(item, rng, frames)
        clean = self._read(item, offset, length)
        level = None
        if self.cfg.loudness.min_lufs is not None:
            best, level = (offset, clean), measure_loudness(clean, self.sample_rate)
            for _ in range(self.retries(item, frames)):
                if level >= self.cfg.loudness.min_lufs:
                    break
                offset, length = self.window(item, rng, frames)
                clean = self._read(item, offset, length)
                new_level = measure_loudness(clean, self.sample_rate)
                if new_level > level:
                    best, level = (offset, clean), new_level
            offset, clean = best

        out_frames = self.frames if length == frames else self._output_length(length, aug)
        noisy = None
        if paired:  # the target file is the clean side; the file itself is the input
            noisy, clean = clean, self._read(item, offset, length, path=item.target)
            level = None
        if "pitch_ratio" in aug:
            # the level measured before resampling is kept: a pitch shift hardly changes it
            clean, noisy = self._both(self._pitch, clean, noisy, aug, out_frames)
        gain = self._loudness_gain(clean, level)
        clean, noisy = clean * gain, (None if noisy is None else noisy * gain)
        if self.augmenter is not None and aug:
            clean, noisy = self._both(self.augmenter.apply_level, clean, noisy, aug, aug_rng)
        if self.degrader is not None and not paired:
            noisy = self.degrader.apply(clean, deg)

        valid = min(out_frames, self._valid_length(item, offset, aug))
        out: dict[str, Any] = {
            "audio": np.ascontiguousarray(clean, dtype=np.float32),
            "length": valid,
            "epoch": key.epoch,
            "index": key.index,
            "offset": offset,
            "meta": {
                "path": item.path,
                "offset": offset,
                "offset_seconds": round(offset / self.sample_rate, 6),
                "augment": aug,
            },
        }
        if noisy is not None:
            out["input"] = np.ascontiguousarray(noisy, dtype=np.float32)
            out["meta"]["target"] = item.target
            if deg:
                out["meta"]["degrade"] = deg
        return out

    def _read(
        self, item: AudioItem, offset: int, frames: int, path: str | None = None
    ) -> np.ndarray:
        return read_crop(
            path or item.path, item, offset, frames, self.sample_rate, self.cfg.channels
        )

    @staticmethod
    def _both(fn: Any, clean: np.ndarray, noisy: np.ndarray | None, *args: Any) -> tuple:
        """Apply `fn(audio, *args)` to clean and noisy at once (same parameters for both)."""
        if noisy is None:
            return fn(clean, *args), None
        channels = clean.shape[0]
        out = fn(np.concatenate([clean, noisy]), *args)
        return out[:channels], out[channels:]

    def _pitch(self, audio: np.ndarray, aug: dict[str, Any], frames: int) -> np.ndarray:
        return fit_length(pitch_shift(audio, self.sample_rate, aug["pitch_ratio"]), frames)

    def _output_length(self, length: int, aug: dict[str, Any]) -> int:
        """Output samples for a window of `length` read samples (pitch shifting rescales it)."""
        frames = int(length / aug.get("pitch_ratio", 1.0))
        return max(self.hop, frames // self.hop * self.hop)

    def _valid_length(self, item: AudioItem, offset: int, aug: dict[str, Any]) -> int:
        """Samples of the output that hold audio rather than end padding."""
        left = target_frames(item, self.sample_rate) - offset
        return max(0, int(left / aug.get("pitch_ratio", 1.0)))

    def _loudness_gain(self, audio: np.ndarray, level: float | None = None) -> np.float32:
        return normalization_gain(audio, self.sample_rate, self.cfg.loudness, level)


def normalization_gain(audio: np.ndarray, sample_rate: int, cfg: LoudnessConfig,
                       level: float | None = None) -> np.float32:
    """Gain that brings `audio` [C, T] to `cfg.peak` (peak) or `cfg.target_lufs`
    (loudness, peak-limited; `level`: its loudness when already measured); 1 when neither
    is set or the audio is silent."""
    if cfg.peak is not None:
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        return np.float32(cfg.peak / peak if peak > 1e-6 else 1.0)
    if cfg.target_lufs is None:
        return np.float32(1.0)
    return np.float32(loudness_gain(audio, sample_rate, cfg.target_lufs, level=level))


class OneShotDataset(ClipDataset):
    """The first `segment_seconds` of every file, zero-padded or trimmed (short sounds); with
    `start_jitter_seconds`, starting at a random offset up to that (never past the file)."""

    random_windows = False

    def window(self, item: AudioItem, rng: np.random.Generator, frames: int) -> tuple[int, int]:
        jitter = round(self.cfg.start_jitter_seconds * self.sample_rate)
        if jitter <= 0:
            return 0, frames
        return int(rng.integers(0, min(jitter, target_frames(item, self.sample_rate) - 1)
                                + 1)), frames

    def retries(self, item: AudioItem, frames: int) -> int:
        return 0


class UtteranceDataset(ClipDataset):
    """Whole files up to `segment_seconds` (random window of longer ones); variable length.

    The length is a multiple of the hop when snapping. Batches are padded by the collate
    function and carry `lengths`.
    """

    def window(self, item: AudioItem, rng: np.random.Generator, frames: int) -> tuple[int, int]:
        total = target_frames(item, self.sample_rate)
        if total <= frames:
            length = max(self.hop, total // self.hop * self.hop)
            return 0, length
        return random_offset(rng, total, frames, self.hop), frames

    def retries(self, item: AudioItem, frames: int) -> int:
        return 0


DATASETS: dict[str, type[ClipDataset]] = {
    "clips": ClipDataset,
    "oneshot": OneShotDataset,
    "utterances": UtteranceDataset,
}


# ----------------------------------------------------------------------------- validation


def fixed_crops(
    items: list[AudioItem],
    count: int,
    seconds: float,
    cfg: DataConfig,
    hop: int = 1,
) -> list[tuple[AudioItem, int, int]]:
    """Deterministic validation windows: (item, offset, frames) at `cfg.sample_rate`.

    Mode `oneshot`: the start of each of the first `count` files.
    Each file contributes as many non-overlapping windows as fit (at least one; shorter
    files are padded), evenly spaced and centred in the file; files are visited round-robin
    so `count` windows spread over as many files as possible. Offsets are multiples of
    `hop` when `snap_to_hop`.
    """
    sr = cfg.sample_rate
    step = hop if cfg.snap_to_hop else 1
    frames = segment_frames(seconds, sr, hop, cfg.snap_to_hop)
    if cfg.mode == "oneshot":  # a one-shot is its start: one window per file, at 0
        return [(item, 0, frames) for item in items[:count]]
    per_file = []
    for item in items:
        total = target_frames(item, sr)
        n = max(1, total // frames)
        spare = max(0, total - n * frames)
        starts = [(spare // 2 + k * frames) // step * step for k in range(n)]
        per_file.append([(item, start, frames) for start in starts])
    return round_robin(per_file)[:count]


def round_robin(lists: list[list[T]]) -> list[T]:
    """The first element of every list, then the second of every list, and so on."""
    out: list[T] = []
    for depth in range(max((len(x) for x in lists), default=0)):
        out.extend(x[depth] for x in lists if depth < len(x))
    return out
