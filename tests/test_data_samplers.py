"""Batch samplers: weighted mixing, duration buckets, saved and restored positions."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from soundry.data.samplers import (
    DurationBucketSampler,
    FixedItemsSampler,
    MixedSourceSampler,
    _shares,
)


def test_shares_are_exact_and_proportional():
    assert _shares(10, [0.5, 0.3, 0.2]) == [5, 3, 2]
    assert sum(_shares(7, [1, 1, 1])) == 7
    assert _shares(16, [3, 1]) == [12, 4]


def test_mixed_sampler_epochs_visit_each_file_evenly():
    sampler = MixedSourceSampler([3, 7], [1.0, 1.0], batch_size=4, seed=0)
    assert sampler.epoch_size == 12 and sampler.counts == [6, 6]
    uses: Counter = Counter()
    for epoch in range(7):
        batches = sampler.epoch_batches(epoch)
        assert all(len(b) == 4 for b in batches)
        keys = [k for b in batches for k in b]
        assert [k.index for k in keys] == list(range(12)) and {k.epoch for k in keys} == {epoch}
        uses.update((k.source, k.item) for k in keys)
    # 42 draws of source 0 over 3 files, 42 of source 1 over 7 files: perfectly even cycles
    assert {uses[(0, i)] for i in range(3)} == {14}
    assert {uses[(1, i)] for i in range(7)} == {6}
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)
    again = MixedSourceSampler([3, 7], [1.0, 1.0], batch_size=4, seed=0)
    assert again.epoch_batches(5) == sampler.epoch_batches(5)


def test_sampler_iteration_resumes_from_its_state():
    sampler = MixedSourceSampler([5, 5], [2.0, 1.0], batch_size=3, seed=4)
    stream = list(itertools.islice(iter(sampler), 11))
    resumed = MixedSourceSampler([5, 5], [2.0, 1.0], batch_size=3, seed=4)
    resumed.load_state_dict({"epoch": 1, "batch": 2})  # 4 batches an epoch: item 6 onwards
    assert list(itertools.islice(iter(resumed), 5)) == stream[6:11]
    assert resumed.state_dict() == {"epoch": 2, "batch": 3}
    assert sampler.advance(0, 3) == (1, 0) and sampler.advance(0, 1) == (0, 2)


def test_fixed_items_sampler_repeats_its_items():
    base = MixedSourceSampler([2], [1.0], batch_size=2, seed=0)
    fixed = FixedItemsSampler(base, count=5, batch_size=2)
    assert len(fixed.keys) == 5 and len(set(fixed.keys)) == 5  # taken from several epochs
    flat = [k for e in range(3) for b in fixed.epoch_batches(e) for k in b]
    assert set(flat) == set(fixed.keys)


def test_duration_buckets():
    rng = np.random.default_rng(0)
    durations = np.concatenate([rng.uniform(0.5, 1.0, 40), rng.uniform(3.0, 8.0, 40)]).tolist()
    cap = 12.0
    sampler = DurationBucketSampler(durations, max_batch_seconds=cap, bucket_seconds=1.0, seed=1)
    epoch0 = sampler.epoch_batches(0)
    seen = sorted(k.index for b in epoch0 for k in b)
    assert seen == list(range(80))  # every item once per epoch
    for batch in epoch0:
        d = [durations[k.index] for k in batch]
        # one bucket per batch: durations within the bucket width
        assert len({int(x) for x in d}) == 1
        # padded size within the cap (a single over-long item may stand alone)
        assert len(d) * max(d) <= cap or len(d) == 1
    sizes = [len(b) for b in epoch0]
    assert max(sizes) >= 10 and min(sizes) <= 3  # short items batch many, long items few
    # batch order shuffled per epoch (not sorted by duration, different each epoch)
    first = [durations[b[0].index] for b in epoch0]
    assert first != sorted(first) and first != sorted(first, reverse=True)
    epoch1 = sampler.epoch_batches(1)
    assert [[k.index for k in b] for b in epoch0] != [[k.index for k in b] for b in epoch1]
    # state restores to the exact next batch
    stream = list(itertools.islice(iter(sampler), len(epoch0) + 3))
    other = DurationBucketSampler(durations, max_batch_seconds=cap, bucket_seconds=1.0, seed=1)
    other.load_state_dict({"epoch": 0, "batch": len(epoch0) - 2})
    assert list(itertools.islice(iter(other), 5)) == stream[-5:]


def test_bucket_sampler_respects_max_batch_size_and_ids():
    sampler = DurationBucketSampler(
        [1.0] * 10, max_batch_seconds=100, max_batch_size=4, ids=[(1, 9 - i) for i in range(10)]
    )
    batches = sampler.epoch_batches(0)
    assert sorted(len(b) for b in batches) == [2, 4, 4]
    assert all(k.source == 1 and k.item == 9 - k.index for b in batches for k in b)
    with pytest.raises(ValueError):
        DurationBucketSampler([], max_batch_seconds=1)
