"""Training loader: crop statistics, reproducibility, resume, mixing, bad files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.data.config import DataConfig
from soundry.data.loader import build_train_loader
from soundry.errors import DataError

SR = 8000
LENGTHS = [8000, 12000, 16000, 20000]  # 1 to 2.5 s
SEGMENT = 800  # 0.1 s


def _cfg(sources: list, **extra) -> DataConfig:
    raw = {
        "sources": sources,
        "valid": "unused",  # no files held out of training
        "sample_rate": SR,
        "segment_seconds": SEGMENT / SR,
        "batch_size": 8,
        "num_workers": 2,
        "snap_to_hop": False,
        "loudness": {"target_lufs": None, "min_lufs": None},
        **extra,
    }
    return DataConfig.model_validate(raw)


def _take(loader, n: int) -> list[dict]:
    return list(itertools.islice(loader, n))


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["audio"], y["audio"]) and torch.equal(x["index"], y["index"])
        for x, y in zip(a, b, strict=True)
    )


def test_crops_cover_files_are_reproducible_and_come_from_claimed_offsets(
    data_encoded_dir, data_decode
):
    folder = data_encoded_dir(LENGTHS, SR)
    cfg = _cfg([{"path": str(folder)}])
    loader = build_train_loader(cfg, seed=7, augment=False, with_meta=True)
    assert loader.num_workers == 2
    batches = _take(loader, 50)  # 50 epochs: 8 positions each, every file twice
    file_of = {str(Path(folder / f"enc_{i:02d}.wav").resolve()): i for i in range(4)}

    covered = {i: set() for i in range(4)}
    by_epoch: dict[int, list[int]] = {}
    for batch in batches:
        assert batch["audio"].shape == (8, 1, SEGMENT) and batch["audio"].dtype == torch.float32
        for b, meta in enumerate(batch["meta"]):
            f = file_of[meta["path"]]
            offset = int(batch["offset"][b])
            assert offset == meta["offset"]
            files, positions = data_decode(batch["audio"][b, 0].numpy())
            # every sample is from the claimed file, at the claimed offset
            assert (files == f).all()
            np.testing.assert_array_equal(positions, offset + np.arange(SEGMENT))
            assert 0 <= offset <= LENGTHS[f] - SEGMENT
            covered[f].update((positions * 10 // LENGTHS[f]).tolist())
            by_epoch.setdefault(int(batch["epoch"][b]), []).append(offset)
    # every decile of every file was seen
    assert all(covered[f] == set(range(10)) for f in covered), covered
    # crops are random: the epochs differ, and offsets are not all at the start
    assert by_epoch[0] != by_epoch[1]
    all_offsets = [o for offsets in by_epoch.values() for o in offsets]
    assert np.mean(np.array(all_offsets) == 0) < 0.05

    # a second run (new loader, new workers) gives identical batches; so does no worker
    again = build_train_loader(cfg, seed=7, augment=False)
    assert _same(batches[:6], _take(again, 6))
    serial = build_train_loader(cfg, seed=7, augment=False, num_workers=0)
    assert _same(batches[:6], _take(serial, 6))
    # another seed gives other crops
    other = build_train_loader(cfg, seed=8, augment=False, num_workers=0)
    assert not _same(batches[:6], _take(other, 6))


def test_resume_mid_epoch_gives_identical_following_batches(data_encoded_dir):
    folder = data_encoded_dir(LENGTHS * 3, SR)  # 12 files: 2 batches of 8 per epoch
    cfg = _cfg(
        [{"path": str(folder)}],
        batch_size=5,
        augment={"gain": {"prob": 0.5}, "phase": {"prob": 0.5}, "dequantize": {"prob": 1}},
    )
    loader = build_train_loader(cfg, seed=3)
    first = _take(loader, 3)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 0  # 15 positions: 3 batches an epoch
    first += _take(loader, 1)
    state = loader.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 1)
    rest = _take(loader, 4)  # workers have prefetched beyond this point

    resumed = build_train_loader(cfg, seed=3)
    resumed.load_state_dict(state)
    assert _same(rest, _take(resumed, 4))
    # restoring the same loader object drops its prefetched batches
    loader.load_state_dict({"epoch": 0, "batch": 2})
    assert _same(first[2:4], _take(loader, 2))


def test_sources_are_mixed_by_weight(data_tone_dir):
    a = data_tone_dir(3, seconds=0.2, name="a")
    b = data_tone_dir(5, seconds=0.2, name="b")
    c = data_tone_dir(2, seconds=0.2, name="c")
    weights = [0.5, 0.3, 0.2]
    cfg = _cfg(
        [{"path": str(p), "weight": w} for p, w in zip((a, b, c), weights, strict=True)],
        batch_size=10,
        num_workers=0,
    )
    loader = build_train_loader(cfg, seed=1, augment=False, with_meta=True)
    counts = np.zeros(3)
    files: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for batch in _take(loader, 20):
        for s, meta in zip(batch["source"].tolist(), batch["meta"], strict=True):
            counts[s] += 1
            files[s].add(meta["path"])
    np.testing.assert_allclose(counts / counts.sum(), weights, atol=0.02)
    assert [len(files[s]) for s in range(3)] == [3, 5, 2]  # every file of a source is used


def test_nan_files_are_replaced_deterministically_and_counted(data_tone_dir, caplog):
    folder = data_tone_dir(4, seconds=1.0)
    x = sf.read(folder / "tone_01.wav", dtype="float32")[0]
    x[4000:4010] = np.nan  # in the middle, where the scan does not look
    sf.write(folder / "tone_01.wav", x, SR, "FLOAT")
    cfg = _cfg([{"path": str(folder)}], batch_size=4, num_workers=2)
    loader = build_train_loader(cfg, seed=0, augment=False, with_meta=True)
    assert loader.dataset.sources[0][1].path.endswith("tone_01.wav")  # the scan kept it
    with caplog.at_level("WARNING", logger="soundry.data"):
        batches = _take(loader, 6)
    assert all(torch.isfinite(b["audio"]).all() for b in batches)
    replaced = sum(int((b["replaced"] > 0).sum()) for b in batches)
    assert replaced > 0 and loader.replaced == replaced
    assert any("tone_01.wav" in r.getMessage() for r in caplog.records)
    assert any(str(folder / "tone_01.wav") in p for p in loader.bad_files)
    for batch in batches:
        for b, meta in enumerate(batch["meta"]):
            if meta["path"].endswith("tone_01.wav"):  # crops that miss the NaNs are fine
                assert meta["offset"] + SEGMENT <= 4000 or meta["offset"] >= 4010
            if batch["replaced"][b]:
                assert meta["failed"][0]["reason"].startswith("non-finite")
    assert loader.state_dict()["replaced"] == replaced
    assert loader.summary()["replaced_items"] == replaced
    again = build_train_loader(cfg, seed=0, augment=False, num_workers=0)
    assert _same(batches, _take(again, 6))


def test_files_that_break_after_the_scan_are_replaced(data_tone_dir):
    folder = data_tone_dir(3, seconds=0.5)
    cfg = _cfg([{"path": str(folder)}], batch_size=3, num_workers=0)
    loader = build_train_loader(cfg, seed=0, augment=False)
    (folder / "tone_02.wav").write_text("overwritten with text")
    batches = _take(loader, 4)
    assert loader.replaced >= 1 and all(torch.isfinite(b["audio"]).all() for b in batches)


def test_a_dataset_of_only_broken_files_raises_data_error(data_tone_dir):
    folder = data_tone_dir(2, seconds=1.0)
    for f in folder.glob("*.wav"):
        x = sf.read(f, dtype="float32")[0]
        x[3000:5000] = np.inf  # the scan only checks the ends; every crop hits this
        sf.write(f, x, SR, "FLOAT")
    cfg = _cfg([{"path": str(folder)}], batch_size=2, num_workers=0, segment_seconds=0.9)
    with pytest.raises(DataError, match="NaN/Inf"):
        _take(build_train_loader(cfg, seed=0, augment=False), 1)


def test_snapping_padding_and_silence_retries(tmp_path, data_encoded_dir, data_decode):
    folder = data_encoded_dir([300, 5000], SR)  # 300 samples: shorter than the crop
    cfg = _cfg([{"path": str(folder)}], snap_to_hop=True, num_workers=0, batch_size=4)
    loader = build_train_loader(cfg, seed=2, hop=160, augment=False, with_meta=True)
    for batch in _take(loader, 5):
        assert batch["audio"].shape[-1] == 800  # a multiple of the hop
        assert (batch["offset"] % 160 == 0).all()
        for b, meta in enumerate(batch["meta"]):
            if meta["path"].endswith("enc_00.wav"):
                assert int(batch["offset"][b]) == 0 and int(batch["lengths"][b]) == 300
                assert (batch["audio"][b, 0, 300:] == 0).all()
                _, pos = data_decode(batch["audio"][b, 0, :300].numpy())
                np.testing.assert_array_equal(pos, np.arange(300))
            else:
                assert int(batch["lengths"][b]) == 800

    # the first 40 % of this file is silent: with retries, crops avoid it
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    x = np.zeros(20000, dtype=np.float32)
    x[8000:] = 0.3 * np.sin(np.arange(12000) * 0.3)
    sf.write(quiet / "q.wav", x, SR, "FLOAT")
    retry = _cfg([{"path": str(quiet)}], num_workers=0,
                 loudness={"target_lufs": None, "min_lufs": -40, "retries": 8})
    offsets = torch.cat([b["offset"] for b in _take(build_train_loader(retry, seed=0), 6)])
    assert (offsets >= 8000 - SEGMENT).all()
    no_retry = _cfg([{"path": str(quiet)}], num_workers=0,
                    loudness={"target_lufs": None, "min_lufs": -40, "retries": 0})
    offsets = torch.cat([b["offset"] for b in _take(build_train_loader(no_retry, seed=0), 6)])
    assert (offsets < 8000 - SEGMENT).any()


def test_loudness_normalisation_and_augmentations_in_batches(data_tone_dir):
    folder = data_tone_dir(4, seconds=1.0)
    cfg = _cfg(
        [{"path": str(folder)}],
        num_workers=0,
        batch_size=4,
        segment_seconds=0.5,
        loudness={"target_lufs": -23.0, "min_lufs": None},
    )
    from soundry.audio.loudness import measure_loudness

    batch = next(build_train_loader(cfg, seed=0, augment=False))
    for x in batch["audio"].numpy():
        assert measure_loudness(x, SR) == pytest.approx(-23.0, abs=0.5)
    aug_cfg = cfg.model_copy(
        update={"augment": cfg.augment.model_validate({"polarity": {"prob": 1.0}})}
    )
    flipped = next(build_train_loader(aug_cfg, seed=0, with_meta=True))
    assert torch.allclose(flipped["audio"], -batch["audio"])
    assert all(m["augment"] == {"polarity": -1} for m in flipped["meta"])
    assert "meta" not in batch  # only on request


def test_overfit_repeats_the_same_items(data_tone_dir):
    folder = data_tone_dir(6, seconds=1.0)
    cfg = _cfg([{"path": str(folder)}], num_workers=0, batch_size=2)
    batches = _take(build_train_loader(cfg, seed=0, overfit=2), 3)
    assert all(torch.equal(b["audio"], batches[0]["audio"]) for b in batches)
    assert batches[0]["index"].tolist() == [0, 1]


def test_resampling_and_stereo_in_the_loader(tmp_path):
    folder = tmp_path / "hi"
    folder.mkdir()
    t = np.arange(32000) / 16000
    sf.write(folder / "a.wav", 0.5 * np.sin(2 * np.pi * 500 * t), 16000, "FLOAT")
    cfg = _cfg([{"path": str(folder)}], num_workers=0, batch_size=2, channels=2)
    batch = next(build_train_loader(cfg, seed=0, augment=False))
    audio = batch["audio"].numpy()
    assert audio.shape == (2, 2, SEGMENT)
    assert np.array_equal(audio[:, 0], audio[:, 1])
    spec = np.abs(np.fft.rfft(audio[0, 0] * np.hanning(SEGMENT)))
    assert abs(np.fft.rfftfreq(SEGMENT, 1 / SR)[np.argmax(spec)] - 500) <= 10


def test_data_parallel_ranks_split_the_global_batches(data_tone_dir):
    folder = data_tone_dir(6, seconds=0.5)
    cfg = _cfg([{"path": str(folder)}], num_workers=0, batch_size=2)
    ranks = [
        _take(build_train_loader(cfg, seed=0, augment=False, rank=r, world_size=2), 4)
        for r in (0, 1)
    ]
    whole = _take(
        build_train_loader(cfg.model_copy(update={"batch_size": 4}), seed=0, augment=False), 4
    )
    for b in range(4):
        assert ranks[0][b]["audio"].shape[0] == 2
        # rank r holds items r, r + 2, ... of the global batch
        joined = torch.stack([ranks[0][b]["audio"], ranks[1][b]["audio"]], 1).flatten(0, 1)
        assert torch.equal(joined, whole[b]["audio"])  # same items, whatever the process count
    utter = cfg.model_copy(update={"mode": "utterances"})
    first = [next(build_train_loader(utter, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(first[0]["index"].tolist()) & set(first[1]["index"].tolist())
