"""Packed datasets (`soundry data pack`): WebDataset shards with an index, read by random
access wherever a folder is accepted, by path or fsspec URL."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.audio.io import read_audio
from soundry.config import validate
from soundry.data.config import DataConfig
from soundry.data.loader import build_train_loader, load_sources
from soundry.data.pack import pack
from soundry.data.scan import scan
from soundry.errors import DataError

SR = 16000


def _folder(root: Path, n: int = 14, bad: bool = True) -> Path:
    """n float WAVs of different lengths with a metadata-free layout, plus broken files."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(n):
        seconds = 0.6 + 0.1 * (i % 5)
        x = np.clip(0.3 * rng.standard_normal(int(seconds * SR)), -0.95, 0.95).astype(np.float32)
        where = root / "sub" if i % 3 == 0 else root
        sf.write(where / f"clip{i:02d}.wav", x, SR, subtype="FLOAT")
    if bad:
        (root / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
        nan = np.zeros(SR, np.float32)
        nan[100] = np.nan
        sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    return root


def _cfg(path: str, **extra) -> DataConfig:
    raw = {"sources": [{"path": path}], "sample_rate": SR, "segment_seconds": 0.25,
           "batch_size": 4, "num_workers": 0, "valid_count": 2,
           "augment": {"gain": {"prob": 0.5}, "polarity": {"prob": 0.5}}, **extra}
    return validate(DataConfig, raw, source="test")


def test_pack_writes_webdataset_shards_an_index_and_lists_bad_files(tmp_path: Path) -> None:
    import webdataset as wds

    src = _folder(tmp_path / "src")
    result = pack(src, tmp_path / "packed", shard_bytes=60_000, fmt="wav")
    assert result.items == 14 and len(result.shards) >= 3
    reasons = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert set(reasons) == {"corrupt.wav", "nan.wav"} and "non-finite" in reasons["nan.wav"]
    head = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert head["items"] == 14 and sum(s["items"] for s in head["shards"]) == 14
    assert head["hours"] == pytest.approx(sum(0.6 + 0.1 * (i % 5) for i in range(14)) / 3600)
    # plain WebDataset shards: every item is an audio member and a JSON member
    urls = [str(tmp_path / "packed" / s["name"]) for s in head["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        audio, sr = sf.read(io.BytesIO(sample["wav"]), dtype="float32")
        seen[meta["source"]] = (audio, sr, meta)
    assert len(seen) == 14 and "sub/clip00.wav" in seen
    audio, sr, meta = seen["sub/clip00.wav"]
    original, _ = sf.read(src / "sub" / "clip00.wav", dtype="float32")
    assert sr == SR and meta["duration"] == pytest.approx(0.6) and np.array_equal(audio, original)


def test_packed_items_read_like_the_files(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", bad=False)
    pack(src, tmp_path / "wav", shard_bytes=80_000, fmt="wav")
    pack(src, tmp_path / "flac", shard_bytes=80_000, fmt="flac")
    for kind, tol in (("wav", 0.0), ("flac", 2.0**-22)):
        index = scan(tmp_path / kind)
        assert len(index.items) == 14
        for item in index.items:
            original, _ = read_audio(src / item.label)
            # a crop from the middle: seeks inside the member
            crop, _ = read_audio(item.path, offset=1234, frames=2000)
            assert crop.shape == (1, 2000)
            assert np.max(np.abs(crop - original[:, 1234:3234])) <= tol, (kind, item.label)
            assert item.name == Path(item.label).stem


def test_packing_resamples_and_refuses_to_overwrite(tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", n=3, bad=False)
    result = pack(src, tmp_path / "p", sample_rate=8000)
    assert result.items == 3
    index = scan(tmp_path / "p")
    assert {it.sample_rate for it in index.items} == {8000}
    with pytest.raises(DataError, match="already holds"):
        pack(src, tmp_path / "p")
    with pytest.raises(DataError, match="format"):
        pack(src, tmp_path / "q", fmt="mp3")


def test_a_killed_pack_leaves_no_index(tmp_path: Path, monkeypatch) -> None:
    import soundry.data.pack as pack_mod

    src = _folder(tmp_path / "src", n=4, bad=False)
    calls = {"n": 0}
    real = pack_mod._encode

    def dies(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pack_mod, "_encode", dies)
    with pytest.raises(KeyboardInterrupt):
        pack(src, tmp_path / "p")
    assert not (tmp_path / "p" / "index.json").exists()
    # not mistaken for a packed set: scanned as a folder, and it has no audio files
    with pytest.raises(DataError):
        scan(tmp_path / "p").require_usable()


def test_training_batches_from_a_packed_set_equal_the_folders(tmp_path: Path) -> None:
    """Same hold-out, same items, crops and augmentations, batch for batch; and a loader
    restored mid-epoch continues exactly."""
    src = _folder(tmp_path / "src")
    pack(src, tmp_path / "p", shard_bytes=50_000, fmt="wav")
    folder_cfg, packed_cfg = _cfg(str(src)), _cfg(str(tmp_path / "p"))
    held = [sorted(it.name for it in load_sources(c).held_out) for c in (folder_cfg, packed_cfg)]
    assert held[0] == held[1] and len(held[0]) == 1
    a = build_train_loader(folder_cfg, seed=3)
    b = build_train_loader(packed_cfg, seed=3)
    batches = []
    for _ in range(7):  # 3 batches an epoch: crosses two epoch boundaries
        x, y = next(a), next(b)
        assert torch.equal(x["audio"], y["audio"]) and torch.equal(x["index"], y["index"])
        batches.append(y)
    state = b.state_dict()
    expected = next(b)
    c = build_train_loader(packed_cfg, seed=3)
    c.load_state_dict(state)
    assert torch.equal(next(c)["audio"], expected["audio"])
    for loader in (a, b, c):
        loader.close()


def test_packed_set_by_fsspec_url_with_workers(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    src = _folder(tmp_path / "src", bad=False)
    pack(src, tmp_path / "p", shard_bytes=50_000, fmt="flac")
    mem = fsspec.filesystem("memory")
    for f in (tmp_path / "p").iterdir():
        mem.pipe(f"/packs/set1/{f.name}", f.read_bytes())
    index = scan("memory://packs/set1")
    assert len(index.items) == 14 and index.items[0].path.startswith("tar+memory://")
    # file:// works as a local path does
    assert len(scan(f"file://{tmp_path / 'p'}").items) == 14
    local = build_train_loader(_cfg(str(tmp_path / "p")), seed=1)
    remote = build_train_loader(_cfg("memory://packs/set1"), seed=1)
    for _ in range(3):
        assert torch.equal(next(local)["audio"], next(remote)["audio"])
    local.close()
    remote.close()
    # forked workers open their own handles (memory:// is per process after a fork)
    shutil.rmtree(tmp_path / "src")
    workers = build_train_loader(_cfg(str(tmp_path / "p"), num_workers=2), seed=1)
    again = build_train_loader(_cfg(str(tmp_path / "p")), seed=1)
    for _ in range(4):
        assert torch.equal(next(workers)["audio"], next(again)["audio"])
    workers.close()
    again.close()


def test_parse_shard_size() -> None:
    from soundry.commands.data import parse_size
    from soundry.errors import SoundryError

    assert parse_size("512MB") == 512 * 2**20 and parse_size("2GB") == 2 * 2**30
    assert parse_size("100k") == 102400 and parse_size("4096") == 4096
    with pytest.raises(SoundryError, match="512MB"):
        parse_size("lots")


def test_sources_mix_by_weight_across_shard_sets_and_a_folder(tmp_path: Path) -> None:
    """Two packed sets and a folder as three weighted sources: batches draw from them in
    the weights' proportions, and every training item of each set is used."""
    sets = []
    for i, n in enumerate((4, 6)):
        src = _folder(tmp_path / f"src{i}", n=n, bad=False)
        pack(src, tmp_path / f"p{i}", shard_bytes=30_000, fmt="flac")
        sets.append(str(tmp_path / f"p{i}"))
    folder = str(_folder(tmp_path / "plain", n=3, bad=False))
    weights = [0.5, 0.3, 0.2]
    raw = {"sources": [{"path": p, "weight": w} for p, w in zip([*sets, folder], weights,
                                                                 strict=True)],
           "sample_rate": SR, "segment_seconds": 0.1, "batch_size": 10, "num_workers": 0,
           "valid_count": 1}
    cfg = validate(DataConfig, raw, source="test")
    loader = build_train_loader(cfg, seed=1, augment=False, with_meta=True)
    counts = np.zeros(3)
    used: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for _ in range(20):
        batch = next(loader)
        for s, meta in zip(batch["source"].tolist(), batch["meta"], strict=True):
            counts[s] += 1
            used[s].add(meta["path"])
    loader.close()
    np.testing.assert_allclose(counts / counts.sum(), weights, atol=0.02)
    assert [len(used[s]) for s in range(3)] == [len(t) for t in load_sources(cfg).train]
