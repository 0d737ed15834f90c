"""Dataset index: bad files, manifests, cache, `soundry data scan`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundry.cli import main
from soundry.data import scan as scan_module
from soundry.data.config import DataConfig
from soundry.data.loader import build_train_loader
from soundry.data.scan import CACHE_NAME, scan, scan_pairs
from soundry.errors import DataError


def test_every_bad_file_kind_is_skipped_with_a_reason(data_bad_dir):
    folder, expected = data_bad_dir
    index = scan(folder, min_seconds=0.05)
    assert sorted(Path(i.path).name for i in index.items) == ["good_a.wav", "good_b.flac"]
    reasons = {Path(s["path"]).name: s["reason"] for s in index.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert index.total_seconds == pytest.approx(2.0)
    good = index.items[0]
    assert (good.sample_rate, good.channels, good.frames) == (8000, 1, 8000)


def test_cache_skips_unchanged_files_and_reprobes_changed_ones(data_bad_dir, monkeypatch):
    folder, expected = data_bad_dir
    first = scan(folder, min_seconds=0.05)
    assert (folder / CACHE_NAME).is_file()
    calls: list[str] = []
    real_probe = scan_module.probe
    monkeypatch.setattr(scan_module, "probe", lambda p: calls.append(Path(p).name) or real_probe(p))
    second = scan(folder, min_seconds=0.05)
    assert calls == []
    assert second.summary() == first.summary()
    # min_seconds is applied after the cache: a different threshold needs no probing
    assert "short.wav" in {Path(i.path).name for i in scan(folder, min_seconds=0.0).items}
    assert calls == []
    # a changed file is probed again
    x = np.zeros(4000, dtype=np.float32)
    sf.write(folder / "good_a.wav", x + 0.1, 8000, "PCM_16")
    os.utime(folder / "good_a.wav", ns=(1, 1))
    third = scan(folder, min_seconds=0.05)
    assert calls == ["good_a.wav"]
    assert next(i for i in third.items if i.path.endswith("good_a.wav")).frames == 4000
    assert scan(folder, cache=False).usable == 3  # no min_seconds: short.wav counts


def test_jsonl_manifest_with_text_tags_speaker_and_missing_file(tmp_path, data_tone_dir):
    folder = data_tone_dir(3)
    rows = [
        {"path": "tone_00.wav", "text": "hello", "speaker": "s1", "tags": {"genre": "x"}},
        {"path": str(folder / "tone_01.wav"), "tags": ["a", "b"], "mood": "calm"},
        {"path": "gone.wav"},
    ]
    manifest = folder / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    index = scan(manifest)
    assert [Path(i.path).name for i in index.items] == ["tone_00.wav", "tone_01.wav"]
    first, second = index.items
    assert (first.text, first.speaker, first.tags) == ("hello", "s1", {"genre": "x"})
    assert second.tags == {"keywords": "a, b", "mood": "calm"} and second.text is None
    assert [Path(s["path"]).name for s in index.skipped] == ["gone.wav"]
    assert "missing" in index.skipped[0]["reason"]


def test_folder_with_manifest_uses_it(data_tone_dir):
    folder = data_tone_dir(3)
    (folder / "manifest.jsonl").write_text(json.dumps({"path": "tone_02.wav", "text": "t"}))
    index = scan(folder)
    assert [(Path(i.path).name, i.text) for i in index.items] == [("tone_02.wav", "t")]


def test_csv_manifest_and_errors(data_tone_dir):
    folder = data_tone_dir(2)
    (folder / "m.csv").write_text("path,text,speaker,lang\ntone_00.wav,hi there,s2,en\n")
    index = scan(folder / "m.csv")
    item = index.items[0]
    assert (item.text, item.speaker, item.tags) == ("hi there", "s2", {"lang": "en"})
    (folder / "nopath.csv").write_text("file,text\ntone_00.wav,x\n")
    with pytest.raises(DataError, match="'path' column"):
        scan(folder / "nopath.csv")
    (folder / "broken.jsonl").write_text('{"path": "tone_00.wav"}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        scan(folder / "broken.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        scan(folder / "nothing_here")


def test_ljspeech_metadata(tmp_path):
    root = tmp_path / "LJSpeech"
    (root / "wavs").mkdir(parents=True)
    for name in ("LJ001-0001", "LJ001-0002"):
        sf.write(root / "wavs" / f"{name}.wav", np.zeros(800, dtype=np.float32) + 0.1, 8000)
    (root / "metadata.csv").write_text(
        "LJ001-0001|Printing, in 1 sense|Printing, in one sense\n"
        "LJ001-0002|in being comparatively modern.|\n"
        "LJ001-0003|missing file|missing file\n"
    )
    for source in (root, root / "metadata.csv"):
        index = scan(source)
        texts = [(Path(i.path).name, i.text) for i in index.items]
        assert texts == [
            ("LJ001-0001.wav", "Printing, in one sense"),
            ("LJ001-0002.wav", "in being comparatively modern."),
        ]
        assert len(index.skipped) == 1 and "LJ001-0003" in index.skipped[0]["path"]


def test_ljspeech_metadata_beside_the_wavs(tmp_path):
    """metadata.csv next to its WAVs (no wavs/ folder) is read too, transcripts included;
    a folder of WAVs with an unrelated metadata.csv is scanned as a plain folder."""
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("u0", "u1"):
        sf.write(root / f"{name}.wav", np.zeros(800, dtype=np.float32) + 0.1, 8000)
    (root / "metadata.csv").write_text("u0|first words|\nu1|second words|\n")
    assert [(Path(i.path).name, i.text) for i in scan(root).items] == [
        ("u0.wav", "first words"), ("u1.wav", "second words")]
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "a.wav", np.zeros(800, dtype=np.float32) + 0.1, 8000)
    (other / "metadata.csv").write_text("title|artist\nsong|someone\n")
    assert [(Path(i.path).name, i.text) for i in scan(other).items] == [("a.wav", None)]


def test_pairs_are_matched_by_name(tmp_path, data_tone_dir):
    clean = data_tone_dir(3, name="clean")
    noisy = data_tone_dir(2, name="noisy")
    (noisy / "tone_01.wav").rename(noisy / "tone_07.wav")
    index = scan_pairs(noisy, clean)
    assert [(Path(i.path).name, Path(i.target).name) for i in index.items] == [
        ("tone_00.wav", "tone_00.wav")
    ]
    assert "no matching target" in index.skipped[0]["reason"]


def test_scan_cli_json_and_table(data_bad_dir, capsys):
    folder, expected = data_bad_dir
    assert main(["data", "scan", str(folder), "--json", "--min-seconds", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["usable"] == 2 and out["total_seconds"] == pytest.approx(2.0)
    assert {Path(s["path"]).name for s in out["skipped"]} == set(expected)
    assert all(s["reason"] for s in out["skipped"])
    assert main(["data", "scan", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "usable files" in table and "truncated" in table


def test_no_usable_file_is_a_clear_error(tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.wav").write_text("not audio")
    (folder / "b.wav").write_bytes(b"")
    assert main(["data", "scan", str(folder), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["usable"] == 0
    cfg = DataConfig(sources=[{"path": str(folder)}])
    with pytest.raises(DataError, match="no usable audio.*all 2 files were skipped"):
        build_train_loader(cfg, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no audio files found"):
        build_train_loader(DataConfig(sources=[{"path": str(empty)}]), seed=0)
    with pytest.raises(DataError, match="data.sources is empty"):
        build_train_loader(DataConfig(), seed=0)
