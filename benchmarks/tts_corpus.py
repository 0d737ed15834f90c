"""Build a small deterministic multi-speaker text-to-speech corpus with espeak-ng.

    python benchmarks/tts_corpus.py OUT [--sentences 960] [--test-sentences 20] [--voices 6]
                                        [--sample-rate 16000] [--seed 0]

Writes mono 16-bit WAVs, each folder with an LJSpeech-style `metadata.csv` (no header,
`id|text|text|speaker`, the WAVs beside it as `<id>.wav`):

- `OUT/train/`: `--sentences` utterances `train_NNNN`; sentence i is spoken by voice
  i % voices, so every voice has sentences / voices clips;
- `OUT/test/`: `--test-sentences` sentences that never occur in training, each spoken by
  EVERY voice (`test_NNNN_vK` is test sentence NNNN by voice K): the reference for a
  generated utterance of the same text and speaker;
- `OUT/corpus.json`: the voices (espeak-ng name, words per minute, pitch), counts, seed
  and sample rate.

Unlike `speech_corpus.py`, every voice speaks at a FIXED rate and pitch, so the same
sentence by the same voice always renders identically. Sentences come from a small seeded
grammar of short English statements and questions (3-9 words, about 1-3 s of speech);
test sentences share the vocabulary but are distinct sentences. espeak-ng's 22050 Hz
output is resampled with soxr, leading and trailing silence is trimmed to 50 ms (frames
40 dB below the loudest one count as silence) and each clip is peak-normalised to
-3 dBFS. The same arguments give byte-identical files. Needs the `espeak-ng` program
(Debian: `apt-get install espeak-ng`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# (espeak-ng voice, words per minute, pitch 0-99): accents and variants with clearly
# different timbres (chosen so that a mean mel cepstrum tells them apart; en-gb+m3 and
# en-us+m2, for one, are too close to en-us), each at a fixed rate and pitch.
VOICES: list[tuple[str, int, int]] = [
    ("en-us", 165, 45),
    ("en-us+f2", 175, 65),
    ("en-us+m7", 145, 30),
    ("en-gb-x-rp+f5", 170, 70),
    ("en-us+klatt3", 160, 50),
    ("en-us+Andy", 165, 40),
    ("en-gb-scotland+m4", 155, 40),
    ("en-us+f1", 180, 60),
]

WORDS = {
    "det": ["the", "a", "my", "our", "this", "that", "every", "one"],
    "adj": ["old", "red", "quiet", "little", "happy", "tired", "clever", "small", "brave",
            "green", "noisy", "gentle", "young", "tall", "lazy", "bright"],
    "noun": ["dog", "clock", "river", "teacher", "farmer", "train", "sister", "painter",
             "bird", "window", "driver", "garden", "baker", "kitten", "sailor", "doctor"],
    "verb": ["found", "opened", "painted", "carried", "watched", "followed", "cleaned",
             "borrowed", "dropped", "needed", "fixed", "sold"],
    "verb_base": ["find", "open", "paint", "carry", "watch", "follow", "clean", "borrow",
                  "drop", "need", "fix", "sell"],
    "intrans": ["slept", "waited", "laughed", "stopped", "smiled", "listened", "arrived",
                "returned"],
    "obj_adj": ["red", "old", "small", "green", "heavy", "broken", "new", "yellow"],
    "obj": ["key", "letter", "box", "chair", "kite", "map", "coat", "lamp", "basket",
            "ticket", "book", "song"],
    "tail": ["today", "at noon", "near the gate", "before dinner", "in the rain",
             "after school", "by the sea", "last night", "on Monday", "again"],
}

TRIM_DB = 40.0  # frames this far below the loudest one are silence
PAD_S = 0.05  # silence kept before the first and after the last loud frame
PEAK_DBFS = -3.0


def _noun_phrase(rng: random.Random, article: bool = True) -> str:
    det = rng.choice(WORDS["det"]) if article else "the"
    if rng.random() < 0.6:
        return f"{det} {rng.choice(WORDS['adj'])} {rng.choice(WORDS['noun'])}"
    return f"{det} {rng.choice(WORDS['noun'])}"


def _object_phrase(rng: random.Random) -> str:
    det = rng.choice(["the", "a", "my", "her", "his", "our"])
    if rng.random() < 0.5:
        return f"{det} {rng.choice(WORDS['obj_adj'])} {rng.choice(WORDS['obj'])}"
    return f"{det} {rng.choice(WORDS['obj'])}"


def _sentence(rng: random.Random) -> str:
    kind = rng.random()
    tail = f" {rng.choice(WORDS['tail'])}" if rng.random() < 0.5 else ""
    if kind < 0.25:  # intransitive: "The tired dog slept at noon."
        text = f"{_noun_phrase(rng)} {rng.choice(WORDS['intrans'])}{tail}."
    elif kind < 0.8:  # transitive: "My sister found the red key."
        text = f"{_noun_phrase(rng)} {rng.choice(WORDS['verb'])} {_object_phrase(rng)}{tail}."
    else:  # question: "Did the baker sell a map?"
        text = (f"did {_noun_phrase(rng, article=False)} {rng.choice(WORDS['verb_base'])} "
                f"{_object_phrase(rng)}{tail}?")
    return text[0].upper() + text[1:]


def sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences of 3-9 words from the seeded grammar."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 100 * count + 1000:
            sys.exit(f"the grammar cannot make {count} distinct sentences")
        text = _sentence(rng)
        if 3 <= len(text.split()) <= 9 and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def trim_and_normalise(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Trim leading/trailing silence to `PAD_S` and peak-normalise to `PEAK_DBFS`."""
    hop = max(1, sample_rate // 100)  # 10 ms frames
    n = len(audio) // hop
    if n == 0 or not np.any(audio):
        raise RuntimeError("espeak-ng produced no audio")
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 10 ** (-TRIM_DB / 20))
    pad = int(PAD_S * sample_rate)
    start = max(0, loud[0] * hop - pad)
    end = min(len(audio), (loud[-1] + 1) * hop + pad)
    audio = audio[start:end].astype(np.float64)
    return (audio * (10 ** (PEAK_DBFS / 20) / np.abs(audio).max())).astype(np.float32)


def speak(text: str, voice: tuple[str, int, int], sample_rate: int) -> np.ndarray:
    """float32 [T] speech of `text` by `voice` at its fixed rate and pitch."""
    name, wpm, pitch = voice
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", name, "-s", str(wpm), "-p", str(pitch), "-w",
                        str(wav), text], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    return trim_and_normalise(audio, sample_rate)


def write_split(folder: Path, items: list[tuple[str, str, tuple[str, int, int]]],
                sample_rate: int, pool: ThreadPoolExecutor) -> float:
    """Render (id, text, voice) items into `folder` with its metadata; returns seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    audios = pool.map(lambda item: speak(item[1], item[2], sample_rate), items)
    rows, seconds = [], 0.0
    for (name, text, voice), audio in zip(items, audios, strict=True):
        sf.write(folder / f"{name}.wav", audio, sample_rate, subtype="PCM_16")
        rows.append(f"{name}|{text}|{text}|{voice[0]}")
        seconds += len(audio) / sample_rate
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return seconds


def build(out: Path, n_train: int, n_test: int, n_voices: int, sample_rate: int,
          seed: int) -> dict:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: install it (Debian: apt-get install espeak-ng)")
    if not 1 <= n_voices <= len(VOICES):
        sys.exit(f"--voices: between 1 and {len(VOICES)}")
    if n_train < 1 or n_test < 0:
        sys.exit("--sentences must be positive and --test-sentences non-negative")
    voices = VOICES[:n_voices]
    texts = sentences(n_train + n_test, seed)  # all distinct: test never occurs in train
    train_texts, test_texts = texts[:n_train], texts[n_train:]
    train = [(f"train_{i:04d}", t, voices[i % n_voices]) for i, t in enumerate(train_texts)]
    test = [(f"test_{i:04d}_v{k}", t, v) for i, t in enumerate(test_texts)
            for k, v in enumerate(voices)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        train_s = write_split(out / "train", train, sample_rate, pool)
        test_s = write_split(out / "test", test, sample_rate, pool)
    info = {
        "voices": [{"name": n, "wpm": w, "pitch": p} for n, w, p in voices],
        "train_sentences": n_train,
        "test_sentences": n_test,
        "train_files": len(train),
        "test_files": len(test),
        "train_seconds": round(train_s, 3),
        "test_seconds": round(test_s, 3),
        "seed": seed,
        "sample_rate": sample_rate,
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"train: {len(train)} files, {train_s / 60:.1f} min; test: {len(test)} files, "
          f"{test_s / 60:.1f} min; {n_voices} voices")
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    # 960: the size the tiny TTS recipes were measured on (about 34 minutes of speech); at
    # 360 the models learned the voices but hardly which words were said
    p.add_argument("--sentences", type=int, default=960, help="training utterances")
    p.add_argument("--test-sentences", type=int, default=20,
                   help="held-out sentences, each spoken by every voice")
    p.add_argument("--voices", type=int, default=6, help=f"voices (at most {len(VOICES)})")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    build(a.out, a.sentences, a.test_sentences, a.voices, a.sample_rate, a.seed)


if __name__ == "__main__":
    main()
