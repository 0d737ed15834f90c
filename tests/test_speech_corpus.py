"""The speech codec's data (`benchmarks/speech_corpus.py`): its evaluation split must really
be held out (no training voice, no training sentence, no training content word), and the
set must rebuild byte for byte. Needs espeak-ng and flite (`.ci/run` installs them)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng and flite are not installed (apt-get install espeak-ng flite)")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speech_corpus.py"


def _corpus():
    spec = importlib.util.spec_from_file_location("speech_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["speech_corpus"] = module
    spec.loader.exec_module(module)
    return module


def _rows(folder: Path) -> list[list[str]]:
    return [line.split("|") for line in (folder / "metadata.csv").read_text().splitlines()]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_test_split_is_held_out_and_the_set_rebuilds_identically(tmp_path: Path) -> None:
    corpus = _corpus()
    corpus.build(tmp_path / "a", 0.3, 3, 5, 16000)
    train, dev, test = (_rows(tmp_path / "a" / s) for s in ("train", "dev", "test"))
    assert len(dev) == 3 and len(test) == 5 and len(train) >= 4
    train_minutes = sum(sf.info(tmp_path / "a" / "train" / f"{r[0]}.wav").duration
                        for r in train) / 60
    assert 0.3 <= train_minutes < 0.5  # stops once the minutes asked for are written
    # every test voice is one training never used; dev uses training voices
    train_voices = {r[3] for r in train}
    assert not {r[3] for r in test} & train_voices
    assert {r[3] for r in dev} <= {f"{v[0]}:{v[1]}" for v in corpus.TRAIN_VOICES}
    # held-out sentences: none spoken in training, and no content word of theirs either
    train_texts = {r[1] for r in train}
    assert not ({r[1] for r in dev} | {r[1] for r in test}) & train_texts
    train_words = {w for t in train_texts for w in t.lower().strip(".?").replace(",", "").split()}
    held = {w for k, phrases in corpus.TEST_WORDS.items() for phrase in phrases
            for w in phrase.lower().strip(".?").split()}
    function_words = {"the", "a", "an", "my", "our", "this", "that", "you", "in", "after",
                      "and"}
    vocabulary = {w for phrases in corpus.TRAIN_WORDS.values() for phrase in phrases
                  for w in phrase.lower().strip(".?").split()}
    assert train_words - {"and"} <= vocabulary
    assert not (held - function_words) & vocabulary
    for row in test:
        audio, sr = sf.read(tmp_path / "a" / "test" / f"{row[0]}.wav")
        assert sr == 16000 and audio.ndim == 1 and 10 ** (-12.5 / 20) < abs(audio).max() < 0.72
    corpus.build(tmp_path / "b", 0.3, 3, 5, 16000)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
