"""Procedural toy datasets and `soundry data synth`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from soundry.cli import main
from soundry.data.scan import scan
from soundry.data.synth import KINDS, synthesize
from soundry.errors import DataError


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_writes_clips_and_a_manifest(tmp_path, kind):
    manifest = synthesize(tmp_path / kind, kind, count=3, seconds=1.5, sample_rate=16000)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 3
    index = scan(tmp_path / kind)
    assert index.usable == 3 and not index.skipped
    for row, item in zip(rows, index.items, strict=True):
        assert item.frames == 24000 and item.sample_rate == 16000
        audio, _ = sf.read(item.path, dtype="float32")
        peak = np.abs(audio).max()
        assert 0.25 < peak <= 0.91 and np.isfinite(audio).all()
        assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
        assert row["duration"] == pytest.approx(1.5)
    clips = [sf.read(i.path)[0] for i in index.items]
    assert not np.allclose(clips[0], clips[1])  # clips differ


def test_music_tags_and_speech_text(tmp_path):
    synthesize(tmp_path / "m", "music", count=6, seconds=2.0, sample_rate=16000)
    items = scan(tmp_path / "m").items
    for item in items:
        assert set(item.tags) == {"genre", "instrument", "tempo", "key", "mode"}
        assert item.tags["genre"] in item.text and item.tags["tempo"] in item.text
    assert len({i.tags["genre"] for i in items}) > 1

    synthesize(tmp_path / "s", "speechlike", count=4, seconds=2.0, sample_rate=16000)
    speech = scan(tmp_path / "s").items
    for item in speech:
        assert item.speaker.startswith("spk") and item.text
        assert set(item.text.replace(" ", "")) <= set("ptksfmnaeiou")
    # a longer clip spells more syllables
    synthesize(tmp_path / "long", "speechlike", count=1, seconds=4.0, sample_rate=16000)
    long_text = scan(tmp_path / "long").items[0].text
    assert len(long_text.replace(" ", "")) > len(speech[0].text.replace(" ", ""))

    synthesize(tmp_path / "d", "drums", count=2, seconds=1.0, sample_rate=16000)
    assert all(int(i.tags["tempo"]) >= 80 for i in scan(tmp_path / "d").items)


def test_synth_is_deterministic_and_prefix_stable(tmp_path):
    synthesize(tmp_path / "a", "tones", count=2, seconds=0.5, sample_rate=8000, seed=1)
    synthesize(tmp_path / "b", "tones", count=4, seconds=0.5, sample_rate=8000, seed=1)
    synthesize(tmp_path / "c", "tones", count=2, seconds=0.5, sample_rate=8000, seed=2)
    for name in ("tones_00000.wav", "tones_00001.wav"):
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes()
        assert a != (tmp_path / "c" / name).read_bytes()


def _f0(x: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch (60-400 Hz) over loud, clearly periodic 40 ms frames."""
    n = int(0.04 * sr)
    frames = [x[i : i + n] - x[i : i + n].mean() for i in range(0, len(x) - n, n)]
    threshold = np.median([np.sum(f**2) for f in frames])
    lo, hi = sr // 400, sr // 60
    pitches = []
    for frame in frames:
        if np.sum(frame**2) < threshold:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            pitches.append(sr / lag)
    return float(np.median(pitches))


def test_voices_differ_in_pitch(tmp_path):
    synthesize(tmp_path / "s", "speechlike", count=16, seconds=1.0, sample_rate=16000)
    by_speaker: dict[str, list[float]] = {}
    for item in scan(tmp_path / "s").items:
        by_speaker.setdefault(item.speaker, []).append(_f0(sf.read(item.path)[0], 16000))
    # even-numbered voices are low (95-130 Hz mean), odd ones high (180-230 Hz)
    low = [f for spk, fs in by_speaker.items() if int(spk[3:]) % 2 == 0 for f in fs]
    high = [f for spk, fs in by_speaker.items() if int(spk[3:]) % 2 == 1 for f in fs]
    assert low and high
    assert np.median(high) > 1.4 * np.median(low)
    assert 70 < np.median(low) < 170


def test_synth_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "synth", str(out), "--kind", "drums", "--count", "2", "--seconds", "0.5",
            "--sample-rate", "22050", "--format", "flac"]
    assert main(args) == 0
    assert "wrote 2 drums clips" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "drums_00000.flac", "drums_00001.flac", "manifest.jsonl"
    ]
    assert sf.info(str(out / "drums_00000.flac")).samplerate == 22050
    with pytest.raises(DataError, match="unknown synth kind"):
        synthesize(tmp_path / "x", "noise", 1, 1.0, 16000)
    assert main(["data", "synth", str(tmp_path / "y"), "--count", "0"]) == 2
