"""Token shards: writer/index round trip, random windows, bucketed resumable loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundry.data.samplers import ItemKey
from soundry.data.tokens import (
    TokenDataConfig,
    TokenDataset,
    TokenIndex,
    TokenShardWriter,
    build_token_loader,
    tag_list,
)
from soundry.errors import DataError

META = {"codec": {"type": "soundry", "path": "/nowhere"}, "levels": 3, "codebook_size": 50,
        "frame_rate": 10.0, "sample_rate": 8000, "channels": 1}


def write_tokens(root, lengths, shard_frames=1 << 20, seed=0):
    rng = np.random.default_rng(seed)
    writer = TokenShardWriter(root, META, shard_frames=shard_frames)
    arrays = []
    for i, n in enumerate(lengths):
        codes = rng.integers(0, 50, size=(3, n))
        arrays.append(codes)
        writer.add(f"src{i}.wav", [codes], [f"item{i}"], text=f"text {i}", tags=[f"tag{i}"],
                   speaker="s1")
    writer.flush()
    return arrays


def test_index_round_trip(tmp_path):
    arrays = write_tokens(tmp_path, [5, 17, 3, 40], shard_frames=20)
    index = TokenIndex.load(tmp_path)
    assert len(index.items) == 4 and len(index.shards) >= 2
    assert index.levels == 3 and index.codebook_size == 50 and index.frame_rate == 10.0
    for i, codes in enumerate(arrays):
        np.testing.assert_array_equal(index.codes(i), codes)
        np.testing.assert_array_equal(index.codes(i, 2, 3), codes[:, 2:5])
    assert index.items[1].tags == ["tag1"] and index.items[1].text == "text 1"
    assert isinstance(index.shard(0), np.memmap)
    assert index.sources_done == [f"src{i}.wav" for i in range(4)]


def test_writer_refuses_other_codec(tmp_path):
    write_tokens(tmp_path, [4])
    with pytest.raises(DataError, match="codebook_size"):
        TokenShardWriter(tmp_path, {**META, "codebook_size": 1024})


def test_missing_index_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="soundry tokenize"):
        TokenIndex.load(tmp_path)


def test_random_windows_start_at_many_offsets(tmp_path):
    arrays = write_tokens(tmp_path, [200])
    index = TokenIndex.load(tmp_path)
    ds = TokenDataset(index, [0], window_frames=20, seed=3)
    offsets, ends = [], []
    for epoch in range(300):
        item = ds[ItemKey(epoch, 0, 0, 0)]
        offsets.append(item["offset"])
        ends.append(item["end"])
        np.testing.assert_array_equal(item["codes"], arrays[0][:, item["offset"]:][:, :20])
    assert len(set(offsets)) > 100, "windows must start at many different frames"
    assert min(offsets) < 10 and max(offsets) > 170, "windows must cover the whole item"
    assert all(e == (o == 180) for o, e in zip(offsets, ends, strict=True))
    # The same (seed, epoch, index) gives the same window; another seed another one.
    assert ds[ItemKey(7, 0, 0, 0)]["offset"] == ds[ItemKey(7, 0, 0, 0)]["offset"]
    other = TokenDataset(index, [0], window_frames=20, seed=4)
    assert [other[ItemKey(e, 0, 0, 0)]["offset"] for e in range(20)] != offsets[:20]


def test_short_items_are_whole_and_end(tmp_path):
    write_tokens(tmp_path, [6])
    ds = TokenDataset(TokenIndex.load(tmp_path), [0], window_frames=20, seed=0, levels=2)
    item = ds[ItemKey(0, 0, 0, 0)]
    assert item["codes"].shape == (2, 6) and item["end"] and item["offset"] == 0


def test_loader_batches_resume_exactly(tmp_path):
    write_tokens(tmp_path, [8, 30, 12, 50, 9, 25, 60, 14, 33, 41])
    cfg = TokenDataConfig(path=str(tmp_path), window_seconds=2.0, bucket_seconds=1.0,
                          max_batch_seconds=6.0, max_batch_size=3, valid_count=2)
    loader = build_token_loader(cfg, seed=1)
    batches = [next(loader) for _ in range(12)]
    for batch in batches:
        b, levels, t = batch["codes"].shape
        assert levels == 3 and b <= 3 and t <= 20
        assert b * batch["lengths"].max().item() / 10.0 <= 6.0 or b == 1
        for i in range(b):
            assert (batch["codes"][i, :, batch["lengths"][i]:] == 0).all()
    ids = {i for batch in batches for i in batch["id"]}
    assert len(ids) == 8, "two items are held out for validation"
    state = batches and loader.state_dict()
    later = [next(loader) for _ in range(3)]
    resumed = build_token_loader(cfg, seed=1)
    resumed.load_state_dict(state)
    for a, b in zip(later, [next(resumed) for _ in range(3)], strict=True):
        assert torch.equal(a["codes"], b["codes"]) and a["id"] == b["id"]
        assert a["seed"] == b["seed"]


def test_overfit_loader_repeats_the_same_windows(tmp_path):
    write_tokens(tmp_path, [30, 40, 50, 60, 70])
    cfg = TokenDataConfig(path=str(tmp_path), window_seconds=2.0, max_batch_size=8)
    loader = build_token_loader(cfg, seed=0, overfit=3)
    first = next(loader)
    assert len(first["id"]) == 3
    for _ in range(3):
        again = next(loader)
        assert sorted(again["id"]) == sorted(first["id"])
        order = [again["id"].index(i) for i in first["id"]]
        assert torch.equal(again["codes"][order], first["codes"])


def test_tag_list():
    assert tag_list({"keywords": "rock, loud", "genre": "metal"}) == ["rock", "loud", "metal"]
    assert tag_list(["a", " b "]) == ["a", "b"] and tag_list(None) == []


def test_data_parallel_ranks_split_each_batch(tmp_path):
    write_tokens(tmp_path, [8, 30, 12, 50, 9, 25, 60, 14, 33, 41])
    cfg = TokenDataConfig(path=str(tmp_path), window_seconds=2.0, max_batch_size=4,
                          valid_count=0)
    whole = build_token_loader(cfg, seed=2)
    parts = [build_token_loader(cfg, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        batch = next(whole)
        shares = [next(p) for p in parts]
        assert sorted(shares[0]["id"] + shares[1]["id"]) == sorted(batch["id"]) or \
            len(batch["id"]) == 1
        assert not set(shares[0]["id"]) & set(shares[1]["id"]) or len(batch["id"]) == 1


def test_worker_processes_give_the_same_batches(tmp_path):
    write_tokens(tmp_path, [30, 40, 50, 60, 70, 20])
    cfg = TokenDataConfig(path=str(tmp_path), window_seconds=2.0, max_batch_size=2,
                          valid_count=0)
    inline = build_token_loader(cfg, seed=5)
    workers = build_token_loader(cfg.model_copy(update={"num_workers": 2}), seed=5)
    for _ in range(4):
        a, b = next(inline), next(workers)
        assert torch.equal(a["codes"], b["codes"]) and a["id"] == b["id"]
    workers.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_leaves_the_global_generator_alone(tmp_path, workers):
    write_tokens(tmp_path, [30, 40, 50, 60, 70, 20, 35, 45])
    cfg = TokenDataConfig(path=str(tmp_path), window_seconds=2.0, max_batch_size=2,
                          valid_count=0, num_workers=workers)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = build_token_loader(cfg, seed=7)
    a = [next(first) for _ in range(5)]
    first.close()
    assert torch.equal(torch.get_rng_state(), before), "the loader drew from torch's generator"
    torch.manual_seed(999)  # another global state must not change the batches
    second = build_token_loader(cfg, seed=7)
    b = [next(second) for _ in range(5)]
    second.close()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["codes"], y["codes"]) and x["id"] == y["id"]
        assert x["seed"] == y["seed"]
    assert first.seed == second.seed == 7
