"""TTS metrics (soundry.eval.tts_metrics) and the espeak-ng TTS corpus builder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from soundry.eval.tts_metrics import (
    dtw_mcd,
    dtw_path,
    duration_error,
    mean_cepstrum,
    mel_cepstrum,
    nearest_voice,
    speech_frames,
)

SR = 16000
ROOT = Path(__file__).resolve().parents[1]


def vowel(seconds: float, f0: float, formants: list[tuple[float, float]], glide: float = 0.3,
          seed: int = 0) -> np.ndarray:
    """A harmonic 'vowel' [T]: harmonics of f0 (with a slight vibrato) shaped by resonances
    (centre Hz, bandwidth Hz) whose centres glide by `glide` of themselves over the clip,
    with an attack/decay envelope. Stretching `seconds` stretches it in time only."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    u = t / seconds  # 0..1 over the clip: the trajectory is in relative time
    f0_t = f0 * (1 + 0.03 * np.sin(2 * np.pi * 1.5 * u))
    phase0 = 2 * np.pi * np.cumsum(f0_t) / SR
    out = np.zeros_like(t)
    for h in range(1, int(SR / 2 / (f0 * 1.1))):
        freq = h * f0_t
        gain = np.zeros_like(t)
        for centre, bw in formants:
            c = centre * (1 + glide * np.sin(np.pi * u))
            gain += 1.0 / (1.0 + ((freq - c) / bw) ** 2)
        out += gain * np.sin(h * phase0 + rng.uniform(0, 2 * np.pi)) / h**0.5
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    return (0.5 * out * env / np.abs(out).max()).astype(np.float32)


VOICE_A = dict(f0=110.0, formants=[(500, 90), (1500, 120), (2500, 160)])
VOICE_B = dict(f0=230.0, formants=[(850, 90), (1150, 120), (3000, 160)])


def test_dtw_path_known_small_matrix() -> None:
    cost = np.array([
        [0, 5, 5, 5],
        [5, 0, 0, 5],
        [5, 5, 5, 0],
    ], dtype=float)
    assert dtw_path(cost) == [(0, 0), (1, 1), (1, 2), (2, 3)]
    # a single row / column is a straight line
    assert dtw_path(np.ones((1, 3))) == [(0, 0), (0, 1), (0, 2)]
    assert dtw_path(np.ones((3, 1))) == [(0, 0), (1, 0), (2, 0)]
    # the identity alignment for a zero diagonal
    c = np.ones((5, 5)) - np.eye(5)
    assert dtw_path(c) == [(i, i) for i in range(5)]


def test_dtw_path_matches_brute_force_recurrence_and_is_fast() -> None:
    rng = np.random.default_rng(1)
    cost = rng.random((7, 9))
    acc = np.full((8, 10), np.inf)
    acc[0, 0] = 0
    for i in range(1, 8):
        for j in range(1, 10):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j], acc[i, j - 1], acc[i - 1, j - 1])
    path = dtw_path(cost)
    assert path[0] == (0, 0) and path[-1] == (6, 8)
    for (i0, j0), (i1, j1) in zip(path, path[1:], strict=False):
        assert (i1 - i0, j1 - j0) in {(1, 0), (0, 1), (1, 1)}
    assert sum(cost[i, j] for i, j in path) == pytest.approx(acc[7, 9])

    big = rng.random((500, 500))
    start = time.perf_counter()
    dtw_path(big)
    assert time.perf_counter() - start < 0.5


def test_mel_cepstrum_shape_and_energy_coefficient() -> None:
    audio = vowel(1.0, **VOICE_A)
    ceps = mel_cepstrum(audio, SR)
    assert ceps.shape == (1 + (SR - 400) // 160, 13)
    quieter = mel_cepstrum(audio * 0.1, SR)
    # a 20 dB quieter copy: only c0 moves (by sqrt(40) * ln(0.1)), the shape does not
    np.testing.assert_allclose(quieter[:, 0] - ceps[:, 0], np.sqrt(40) * np.log(0.1),
                               atol=1e-4)
    np.testing.assert_allclose(quieter[:, 1:], ceps[:, 1:], atol=1e-4)  # float32 input


def test_speech_frames_drops_silence() -> None:
    audio = np.concatenate([np.zeros(SR // 2, np.float32), vowel(1.0, **VOICE_A),
                            np.zeros(SR // 2, np.float32)])
    ceps = mel_cepstrum(audio, SR)
    kept = speech_frames(ceps)
    assert 80 <= len(kept) <= 105 < len(ceps)


def test_dtw_mcd_self_stretch_and_other() -> None:
    a = vowel(1.0, **VOICE_A)
    stretched = vowel(1.2, **VOICE_A)  # the same trajectory, 1.2x slower
    other = vowel(1.0, **VOICE_B)
    assert dtw_mcd(a, a, SR) == 0.0
    near, far = dtw_mcd(a, stretched, SR), dtw_mcd(a, other, SR)
    assert near < 0.3 * far, (near, far)
    # symmetric up to DTW tie-breaking
    assert dtw_mcd(stretched, a, SR) == pytest.approx(near, rel=0.15)
    assert dtw_mcd(other, a, SR) == pytest.approx(far, rel=0.15)


def test_mean_cepstrum_separates_voices() -> None:
    refs = {
        "a": np.mean([mean_cepstrum(vowel(0.8, **VOICE_A, glide=g, seed=s), SR)
                      for s, g in [(0, 0.2), (1, 0.3)]], axis=0),
        "b": np.mean([mean_cepstrum(vowel(0.8, **VOICE_B, glide=g, seed=s), SR)
                      for s, g in [(0, 0.2), (1, 0.3)]], axis=0),
    }
    assert refs["a"].shape == (12,)
    # new utterances: other length, glide, phases and a little f0 shift
    new_a = vowel(1.3, f0=118.0, formants=VOICE_A["formants"], glide=0.1, seed=7)
    new_b = vowel(0.6, f0=215.0, formants=VOICE_B["formants"], glide=0.35, seed=8)
    assert nearest_voice(mean_cepstrum(new_a, SR), refs) == "a"
    assert nearest_voice(mean_cepstrum(new_b, SR), refs) == "b"


def test_nearest_voice_and_duration_error() -> None:
    voices = {"x": np.zeros(3), "y": np.ones(3)}
    assert nearest_voice(np.full(3, 0.4), voices) == "x"
    assert nearest_voice(np.full(3, 0.6), voices) == "y"
    with pytest.raises(ValueError):
        nearest_voice(np.zeros(3), {})
    with pytest.raises(ValueError):
        nearest_voice(np.zeros(2), voices)
    assert duration_error(120, 100) == pytest.approx(0.2)
    assert duration_error(80, 100) == pytest.approx(0.2)
    assert duration_error(100, 100) == 0.0
    assert duration_error(0, 50) == 1.0
    with pytest.raises(ValueError):
        duration_error(10, 0)


def test_silent_or_empty_input_raises() -> None:
    a = vowel(0.5, **VOICE_A)
    with pytest.raises(ValueError, match="silent"):
        dtw_mcd(a, np.zeros(SR, np.float32), SR)
    with pytest.raises(ValueError, match="silent"):
        mean_cepstrum(np.zeros(SR, np.float32), SR)
    with pytest.raises(ValueError, match="empty"):
        mel_cepstrum(np.zeros(0, np.float32), SR)
    with pytest.raises(ValueError):
        dtw_path(np.zeros((0, 3)))


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="the TTS corpus builder needs the espeak-ng program")
def test_tts_corpus_small_deterministic(tmp_path: Path) -> None:
    def build(out: Path) -> None:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tts_corpus.py"), str(out),
                        "--sentences", "6", "--test-sentences", "2", "--voices", "2"],
                       check=True, capture_output=True)

    build(tmp_path / "a")
    build(tmp_path / "b")
    train = [r.split("|") for r in (tmp_path / "a/train/metadata.csv").read_text().splitlines()]
    test = [r.split("|") for r in (tmp_path / "a/test/metadata.csv").read_text().splitlines()]
    assert len(train) == 6 and len(test) == 4
    assert all(len(r) == 4 and r[1] == r[2] for r in train + test)
    assert [r[3] for r in train] == ["en-us", "en-us+f2"] * 3
    assert [r[0] for r in test] == ["test_0000_v0", "test_0000_v1", "test_0001_v0",
                                    "test_0001_v1"]
    assert [r[3] for r in test] == ["en-us", "en-us+f2"] * 2
    assert not {r[1] for r in test} & {r[1] for r in train}
    assert all(3 <= len(r[1].split()) <= 9 for r in train + test)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")
                   if p.is_file())
    assert len(files) == 1 + 2 + 6 + 4  # corpus.json, two metadata files, the WAVs
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    import soundfile as sf

    info = sf.info(tmp_path / "a/train/train_0000.wav")
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    audio, _ = sf.read(tmp_path / "a/train/train_0000.wav")
    assert np.abs(audio).max() == pytest.approx(10 ** (-3 / 20), abs=1e-3)
