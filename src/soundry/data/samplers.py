"""Batch samplers: which items make up batch `b` of epoch `e`.

Every sampler here is a pure function of (seed, epoch): `epoch_batches(epoch)` lists the
epoch's batches, each a list of `ItemKey`s, and iterating the sampler walks them endlessly
from its current (epoch, batch) position. A torch DataLoader hands those keys to its
workers; the dataset derives every random choice for an item from (seed, epoch, index), so
which worker reads an item, and how far ahead it was prefetched, never changes the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

# Stream ids keep the generators of different purposes apart for the same (seed, epoch).
STREAM_ITEM = 0
STREAM_MIX = 1
STREAM_CYCLE = 2
STREAM_BUCKET = 3


class ItemKey(NamedTuple):
    """Address of one training item.

    `epoch` and `index` (position in the epoch) seed the item's random choices; `source` and
    `item` say which file of which source the sampler assigned to that position.
    """

    epoch: int
    index: int
    source: int
    item: int


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy Generator determined only by the seed and the integer keys."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


#: what an item generator is for: separate streams, so that turning augmentation or
#: degradation on or off leaves the crops where they were
PURPOSE_CROP = 0
PURPOSE_AUGMENT = 1
PURPOSE_DEGRADE = 2
PURPOSE_REPLACE = 3


def item_rng(
    seed: int, epoch: int, index: int, attempt: int = 0, purpose: int = PURPOSE_CROP
) -> np.random.Generator:
    """A generator for the random choices of item `index` of `epoch`.

    `attempt` > 0 is used when the item is replaced because its file turned out unreadable;
    `purpose` separates crop choices from augmentation and degradation parameters.
    """
    return make_rng(seed, STREAM_ITEM, epoch, index, attempt, purpose)


class EpochBatchSampler:
    """Base class: an endless, resumable walk over `epoch_batches(0)`, `epoch_batches(1)`, ...

    `epoch` and `batch` are the position of the next batch to yield.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.batch = 0
        # two epochs: the prefetching iterator may run one epoch ahead of the consumer
        self._cache: dict[int, list[list[ItemKey]]] = {}

    def epoch_batches(self, epoch: int) -> list[list[ItemKey]]:
        """The batches of `epoch`, in order (deterministic; the last two epochs are cached)."""
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            self._cache[epoch] = self._build(epoch)
        return self._cache[epoch]

    def _build(self, epoch: int) -> list[list[ItemKey]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[ItemKey]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            if self.batch >= len(batches):
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            keys = batches[self.batch]
            self.batch += 1
            yield keys

    def advance(self, epoch: int, batch: int) -> tuple[int, int]:
        """The position after batch `batch` of `epoch`."""
        if batch + 1 >= len(self.epoch_batches(epoch)):
            return epoch + 1, 0
        return epoch, batch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class MixedSourceSampler(EpochBatchSampler):
    """Fixed-size batches drawn from several sources in proportion to their weights.

    An epoch holds `epoch_size` positions: the source sizes summed, rounded up to whole
    batches. Each source gets a share of the positions proportional to its weight (largest
    remainder rounding, so the shares are exact every epoch) and the positions are shuffled
    per epoch. Within a source, files are visited in a shuffled cycle that continues across
    epochs, so every file of a source is used equally often (DAC balances sources the same
    way).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        batch_size: int,
        seed: int = 0,
        epoch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not sizes or any(n <= 0 for n in sizes):
            raise ValueError(f"every source needs at least one item, got sizes {list(sizes)}")
        if len(weights) != len(sizes):
            raise ValueError("one weight per source")
        self.sizes = [int(n) for n in sizes]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        total = epoch_size if epoch_size is not None else sum(self.sizes)
        self.epoch_size = max(1, math.ceil(total / self.batch_size)) * self.batch_size
        self.counts = _shares(self.epoch_size, weights)

    def _build(self, epoch: int) -> list[list[ItemKey]]:
        rng = make_rng(self.seed, STREAM_MIX, epoch)
        order = rng.permutation(np.repeat(np.arange(len(self.sizes)), self.counts))
        items = np.empty(self.epoch_size, dtype=np.int64)
        for s, count in enumerate(self.counts):
            positions = np.flatnonzero(order == s)
            items[positions] = self._cycle_items(s, epoch * count, count)
        keys = [ItemKey(epoch, i, int(order[i]), int(items[i])) for i in range(self.epoch_size)]
        return [keys[b : b + self.batch_size] for b in range(0, self.epoch_size, self.batch_size)]

    def _cycle_items(self, source: int, start: int, count: int) -> np.ndarray:
        """Items number start .. start+count-1 of source's endless sequence of shuffled cycles."""
        n = self.sizes[source]
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            cycle, pos = divmod(start + done, n)
            perm = make_rng(self.seed, STREAM_CYCLE, source, cycle).permutation(n)
            take = min(n - pos, count - done)
            out[done : done + take] = perm[pos : pos + take]
            done += take
        return out


class FixedItemsSampler(EpochBatchSampler):
    """The same `count` items over and over (overfitting sanity checks).

    The items are the first `count` keys of `base`'s epoch 0, so they are the very same
    crops and augmentations every time they come round.
    """

    def __init__(self, base: EpochBatchSampler, count: int, batch_size: int) -> None:
        super().__init__()
        keys: list[ItemKey] = []
        epoch = 0
        while len(keys) < count:  # a base epoch smaller than count: take further epochs
            keys += [k for batch in base.epoch_batches(epoch) for k in batch]
            epoch += 1
        self.keys = keys[:count]
        self.batch_size = int(batch_size)
        self.per_epoch = max(1, math.ceil(count / self.batch_size))

    def _build(self, epoch: int) -> list[list[ItemKey]]:
        n = len(self.keys)
        start = epoch * self.per_epoch * self.batch_size
        return [
            [self.keys[(start + b * self.batch_size + i) % n] for i in range(self.batch_size)]
            for b in range(self.per_epoch)
        ]


class DurationBucketSampler(EpochBatchSampler):
    """Batches of items of similar duration, capped in padded seconds, shuffled per epoch.

    Items are grouped into buckets `bucket_seconds` wide (by duration). Every epoch each
    bucket is shuffled and cut greedily into batches whose padded size (items x longest
    item) stays within `max_batch_seconds` and whose item count stays within
    `max_batch_size`; then the order of all batches is shuffled. An item longer than the
    cap forms a batch of its own. Sorting by duration instead would feed the model short,
    then long batches in a cycle, which shows up as periodic loss spikes.

    `ids` gives (source, item) for each entry of `durations` (default: source 0, item i).
    Keys carry the item's position in `durations` as their `index`.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        bucket_seconds: float = 1.0,
        max_batch_size: int | None = None,
        seed: int = 0,
        ids: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        if not durations:
            raise ValueError("no items to batch")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_batch_seconds = float(max_batch_seconds)
        self.max_batch_size = max_batch_size
        self.seed = int(seed)
        self.ids = list(ids) if ids is not None else [(0, i) for i in range(len(durations))]
        buckets = np.floor(self.durations / bucket_seconds).astype(np.int64)
        self.buckets = [np.flatnonzero(buckets == b) for b in np.unique(buckets)]

    def _build(self, epoch: int) -> list[list[ItemKey]]:
        rng = make_rng(self.seed, STREAM_BUCKET, epoch)
        batches: list[list[int]] = []
        for members in self.buckets:
            current: list[int] = []
            longest = 0.0
            for i in rng.permutation(members):
                d = float(self.durations[i])
                full = self.max_batch_size is not None and len(current) >= self.max_batch_size
                padded = (len(current) + 1) * max(longest, d)
                if current and (full or padded > self.max_batch_seconds):
                    batches.append(current)
                    current, longest = [], 0.0
                current.append(int(i))
                longest = max(longest, d)
            if current:
                batches.append(current)
        order = rng.permutation(len(batches))
        return [[ItemKey(epoch, i, *self.ids[i]) for i in batches[b]] for b in order]


class ShardedSampler(EpochBatchSampler):
    """This process's share of a data-parallel run's batches.

    Every batch of `base` is a global batch (built for all processes together); rank r
    takes items r, r + world_size, ... of it. All processes therefore step equally often,
    and items keep the keys the base sampler gave them, so the data of a run does not
    depend on which process reads what. A batch with fewer items than processes lends its
    items round (a rare case of tiny variable-size batches).
    """

    def __init__(self, base: EpochBatchSampler, rank: int, world_size: int) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.base, self.rank, self.world_size = base, rank, world_size

    def _build(self, epoch: int) -> list[list[ItemKey]]:
        return [
            batch[self.rank :: self.world_size] or [batch[self.rank % len(batch)]]
            for batch in self.base.epoch_batches(epoch)
        ]


def _shares(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any():
        raise ValueError("source weights must be positive")
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    for i in np.argsort(-(exact - counts), kind="stable")[:remainder]:
        counts[i] += 1
    return [int(c) for c in counts]
