"""Item kinds (one-shot, utterances, pairs, degradations) and validation crops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.data.config import DataConfig
from soundry.data.loader import build_train_loader, build_valid_items, build_valid_pairs
from soundry.errors import DataError

SR = 8000


def _cfg(**raw) -> DataConfig:
    base = {
        "sample_rate": SR,
        "num_workers": 0,
        "snap_to_hop": False,
        "loudness": {"target_lufs": None, "min_lufs": None},
    }
    return DataConfig.model_validate({**base, **raw})


def test_oneshot_items_start_at_the_file_start(data_encoded_dir, data_decode):
    folder = data_encoded_dir([400, 3000, 5000], SR)
    cfg = _cfg(sources=[{"path": str(folder)}], valid="x", mode="oneshot",
               segment_seconds=0.25, batch_size=3)
    batch = next(build_train_loader(cfg, seed=0, augment=False))
    assert batch["audio"].shape == (3, 1, 2000)
    assert (batch["offset"] == 0).all()
    for b in range(3):
        n = int(batch["lengths"][b])
        files, pos = data_decode(batch["audio"][b, 0, :n].numpy())
        np.testing.assert_array_equal(pos, np.arange(n))
        assert (batch["audio"][b, 0, n:] == 0).all()
    assert sorted(batch["lengths"].tolist()) == [400, 2000, 2000]


def test_utterances_are_bucketed_and_padded(data_encoded_dir):
    lengths = [800, 900, 850, 4000, 4100, 3900, 20000, 800]
    folder = data_encoded_dir(lengths, SR)
    cfg = _cfg(sources=[{"path": str(folder)}], valid="x", mode="utterances",
               segment_seconds=1.0, bucket={"bucket_seconds": 0.25, "max_batch_seconds": 2.0})
    loader = build_train_loader(cfg, seed=0, augment=False)
    batches = list(itertools.islice(loader, 6))
    for batch in batches:
        n = batch["lengths"]
        assert batch["audio"].shape[-1] == int(n.max())
        assert batch["audio"].shape[0] * batch["audio"].shape[-1] <= 2.0 * SR or len(n) == 1
        assert int(n.max()) - int(n.min()) < 0.25 * SR  # one bucket
        for b in range(len(n)):
            assert (batch["audio"][b, :, int(n[b]):] == 0).all()
    assert max(int(b["lengths"].max()) for b in batches) == SR  # the long file is cut to 1 s


def test_paired_sources_keep_input_and_target_aligned(tmp_path):
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    clean.mkdir(), noisy.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        x = (0.3 * rng.standard_normal(6000)).astype(np.float32)
        sf.write(clean / f"c{i}.wav", x, SR, "FLOAT")
        sf.write(noisy / f"c{i}.flac", x * 0.5, SR, "PCM_24")  # same name, other format
    cfg = _cfg(sources=[{"path": str(noisy), "target": str(clean)}], valid="x",
               segment_seconds=0.1, batch_size=3,
               augment={"gain": {"prob": 1.0, "min_db": -3, "max_db": 0},
                        "polarity": {"prob": 0.5}})
    batch = next(build_train_loader(cfg, seed=0, with_meta=True))
    assert batch["input"].shape == batch["audio"].shape == (3, 1, 800)
    assert batch["target"] is batch["audio"]
    # same crop, same augmentation on both sides: the input stays half the target
    torch.testing.assert_close(batch["input"], 0.5 * batch["audio"], atol=1e-5, rtol=0)
    assert all(m["target"].endswith(".wav") and m["path"].endswith(".flac") for m in batch["meta"])


def test_degradation_source_makes_pairs_on_the_fly(data_tone_dir):
    folder = data_tone_dir(4, seconds=1.0)
    cfg = _cfg(sources=[{"path": str(folder)}], valid="x", segment_seconds=0.25, batch_size=4,
               degrade={"noise": {"prob": 1.0, "min_snr_db": 10, "max_snr_db": 10},
                        "lowpass": {"prob": 0.0}, "clip": {"prob": 0.0}, "gain": {"prob": 0.0}})
    clean_only = next(build_train_loader(cfg.model_copy(update={"degrade": None}), seed=3))
    batch = next(build_train_loader(cfg, seed=3, with_meta=True))
    # the target is the clean crop itself (same crop as without degradation)
    assert torch.equal(batch["audio"], clean_only["audio"])
    noise = (batch["input"] - batch["audio"]).numpy()
    snr = 10 * np.log10((batch["audio"].numpy() ** 2).mean(-1) / (noise**2).mean(-1))
    np.testing.assert_allclose(snr, 10.0, atol=0.7)
    assert all(set(m["degrade"]) == {"noise"} and m["degrade"]["noise"]["snr_db"] == 10.0
               for m in batch["meta"])
    again = next(build_train_loader(cfg, seed=3))
    assert torch.equal(again["input"], batch["input"])  # seeded like everything else


def test_pitch_augmentation_keeps_the_item_length(data_tone_dir):
    folder = data_tone_dir(2, seconds=1.0)
    cfg = _cfg(sources=[{"path": str(folder)}], valid="x", segment_seconds=0.2, batch_size=4,
               snap_to_hop=True,
               augment={"pitch": {"prob": 1.0, "min_ratio": 0.7, "max_ratio": 1.3}})
    batch = next(build_train_loader(cfg, seed=0, hop=64, with_meta=True))
    assert batch["audio"].shape == (4, 1, 1600 // 64 * 64)
    ratios = [m["augment"]["pitch_ratio"] for m in batch["meta"]]
    assert all(0.7 <= r <= 1.3 for r in ratios) and len(set(ratios)) == 4
    assert torch.isfinite(batch["audio"]).all() and (batch["audio"].abs().amax(-1) > 0.05).all()


def test_valid_items_from_a_valid_folder_are_fixed_crops(data_encoded_dir, data_decode):
    valid = data_encoded_dir([8000, 2000, 400], SR, name="valid")
    train = data_encoded_dir([8000], SR, name="train")
    cfg = _cfg(sources=[{"path": str(train)}], valid=str(valid), valid_count=5,
               valid_seconds=0.25, snap_to_hop=True)
    items = build_valid_items(cfg, hop=100)
    assert len(items) == 5
    names = [n for n, _ in items]
    assert len(set(names)) == 5 and names[0].startswith("00_enc_00")
    for name, audio in items:
        assert audio.shape == (1, 2000)
        files, pos = data_decode(audio[0])
        if name.endswith("enc_02"):  # 400 samples: padded
            np.testing.assert_array_equal(pos[:400], np.arange(400))
            assert (audio[0, 400:] == 0).all()
        else:
            assert pos[0] % 100 == 0 and (np.diff(pos) == 1).all()
    # round robin over files first: the first three items come from three different files
    first = [int(data_decode(a[0])[0][0]) for _, a in items[:3]]
    assert sorted(first) == [0, 1, 2]
    again = build_valid_items(cfg, hop=100)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(items, again, strict=True))


def test_valid_items_are_held_out_of_training_when_valid_is_none(data_tone_dir):
    folder = data_tone_dir(20, seconds=0.5)
    cfg = _cfg(sources=[{"path": str(folder)}], valid=None, valid_count=4, valid_seconds=0.25,
               segment_seconds=0.25, batch_size=6)
    items = build_valid_items(cfg)
    held = {name.split("_", 1)[1] for name, _ in items}
    assert len(held) == 2  # a tenth of 20 files, two crops each
    loader = build_train_loader(cfg, seed=0, augment=False, with_meta=True)
    trained = {m["path"].rsplit("/", 1)[1][:-4] for b in itertools.islice(loader, 8)
               for m in b["meta"]}
    assert len(trained) == 18 and not (held & trained)

    small = _cfg(sources=[{"path": str(data_tone_dir(3, name="few"))}], valid=None)
    assert len(build_valid_items(small)) == 3  # nothing to hold out: training files are used
    with pytest.raises(DataError, match="paired"):
        build_valid_pairs(small)


def test_valid_pairs_with_degradation_are_deterministic(data_tone_dir):
    folder = data_tone_dir(3, seconds=0.5)
    cfg = _cfg(sources=[{"path": str(folder)}], valid=str(folder), valid_count=3,
               valid_seconds=0.25, degrade={})
    pairs = build_valid_pairs(cfg)
    assert len(pairs) == 3
    for (_, noisy, clean), (_, noisy2, clean2) in zip(pairs, build_valid_pairs(cfg), strict=True):
        assert np.array_equal(noisy, noisy2) and np.array_equal(clean, clean2)
        assert noisy.shape == clean.shape == (1, 2000) and not np.allclose(noisy, clean)


def test_paired_sources_hold_out_validation_pairs(tmp_path):
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    clean.mkdir(), noisy.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        x = (0.2 * rng.standard_normal(4000)).astype(np.float32)
        sf.write(clean / f"p{i}.wav", x, SR, "FLOAT")
        sf.write(noisy / f"p{i}.wav", -x, SR, "FLOAT")
    cfg = _cfg(sources=[{"path": str(noisy), "target": str(clean)}], valid_seconds=0.25)
    pairs = build_valid_pairs(cfg)  # a tenth of 10 files: one pair, two 0.25 s crops
    assert len(pairs) == 2 and pairs[0][0][3:] == pairs[1][0][3:]
    for _, inp, target in pairs:
        np.testing.assert_array_equal(inp, -target)
    with pytest.raises(DataError, match="has no target"):
        build_valid_pairs(cfg.model_copy(update={"valid": str(clean)}))
