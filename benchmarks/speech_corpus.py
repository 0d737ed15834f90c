"""Build the speech codec's training and evaluation speech: up to an hour, many voices.

    python benchmarks/speech_corpus.py OUT [--train-minutes 40] [--sample-rate 16000]

Writes three folders of mono 16-bit WAVs, each with an LJSpeech-style `metadata.csv`
(`id|text|text|voice`):

- `OUT/train`: sentences from the training grammar spoken by the training voices;
- `OUT/dev`: held-out sentences spoken by the training voices (in-run validation, and the
  exported checkpoint's choice for a recipe with a `best_metric`);
- `OUT/test`: held-out sentences spoken by held-out voices: the evaluation set. Neither its
  voices nor its sentences (nor its content words) ever occur in training.

Voices: espeak-ng (formant synthesis; accents, the built-in voice variants, a few other
languages for phonetic variety) and flite (CMU Arctic unit-selection voices: recorded human
speakers, so real voice quality, breath and jitter). Each utterance gets a random speaking
rate and pitch around its voice's and a random peak level between -12 and -3 dBFS, so
level robustness is part of the test too. Deterministic: the same arguments give the same
files. Needs the `espeak-ng` and `flite` programs (Debian: `apt-get install espeak-ng
flite`).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# (engine, voice, words per minute or duration stretch, pitch); pitch is ignored by flite.
TRAIN_VOICES = [
    ("espeak", "en-us", 165, 45), ("espeak", "en-us+f2", 175, 65), ("espeak", "en-gb+m3", 150, 35),
    ("espeak", "en-gb-scotland+m4", 155, 40), ("espeak", "en-029+m5", 160, 45),
    ("espeak", "en-us-nyc+f3", 180, 60), ("espeak", "en-gb-x-gbclan+m6", 145, 30),
    ("espeak", "en-us+klatt3", 160, 50), ("espeak", "en-us+Andy", 165, 40),
    ("espeak", "en-us+belinda", 170, 70), ("espeak", "en-gb+edward", 150, 35),
    ("espeak", "en-us+f4", 185, 75), ("espeak", "de+m2", 150, 45), ("espeak", "fr+f2", 165, 60),
    ("espeak", "es+m3", 160, 40), ("espeak", "it+f1", 170, 65),
    ("flite", "kal16", 1.0, 0), ("flite", "awb", 1.0, 0), ("flite", "rms", 1.0, 0),
]
# never heard in training: other variants and accents, and a flite speaker of her own
TEST_VOICES = [
    ("espeak", "en-gb-x-rp+f5", 165, 65), ("espeak", "en-us+m7", 145, 30),
    ("espeak", "en-gb-x-gbcwmd+klatt2", 155, 45), ("espeak", "en-us+Annie", 175, 70),
    ("flite", "slt", 1.0, 0),
]

# Two vocabularies: held-out sentences share no content word with training ones (only
# function words such as 'the', 'that', 'after').
TRAIN_WORDS = {
    "subject": ["the old clock", "a quiet river", "my neighbour", "the red train",
                "this small lamp", "our new teacher", "a distant bell", "the paper boat",
                "the young farmer",
                "a hungry fox", "the city council", "my little sister", "the night nurse",
                "an angry driver", "the garden gate", "a famous painter"],
    "verb": ["carried", "followed", "remembered", "painted", "heard", "opened", "measured",
             "watched", "borrowed", "answered", "repaired", "collected", "described", "ignored"],
    "object": ["seven green apples", "the silver key", "a long letter", "the morning news",
               "two wooden chairs", "the broken window", "a bright yellow kite", "the last song",
               "four heavy boxes", "the winding road", "twelve fresh eggs", "a blue umbrella",
               "the secret map", "nine tired horses"],
    "tail": ["before the storm began.", "near the harbour at dawn.", "without saying a word.",
             "while everyone was sleeping.", "during the summer festival.", "after lunch today.",
             "in the middle of the night.", "on a cold and windy day.", "beside the station.",
             "as the lights went out.", "at half past three.", "for almost an hour."],
    "question": ["Is it true that", "Did you know that", "Who told you that"],
}
TEST_WORDS = {
    "subject": ["the nervous musician", "a clever student", "the baker downstairs",
                "my cousin Rachel", "the lighthouse keeper", "a curious child", "the museum guard",
                "our postman"],
    "verb": ["delivered", "discovered", "polished", "translated", "forgot", "weighed",
             "photographed", "sketched"],
    "object": ["a golden trumpet", "thirty purple candles", "the frozen lake", "an ancient coin",
               "the wedding cake", "six muddy boots", "the violin case", "a crooked ladder"],
    "tail": ["yesterday evening.", "under the bridge.", "with great care.", "behind the theatre.",
             "just after midnight.", "across the valley.", "in early spring.", "by accident."],
    "question": ["Are you sure that", "Were you aware that"],
}


def sentences(words: dict[str, list[str]], count: int, seed: int) -> list[str]:
    """`count` distinct statements and questions from a seeded grammar over `words`."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        s, v, o, t = (rng.choice(words[k]) for k in ("subject", "verb", "object", "tail"))
        if rng.random() < 0.2:  # a question: different intonation
            text = f"{rng.choice(words['question'])} {s} {v} {o} {t[:-1]}?"
        elif rng.random() < 0.25:  # two clauses: a longer breath group
            s2, o2 = rng.choice(words["subject"]), rng.choice(words["object"])
            text = f"{s.capitalize()} {v} {o}, and {s2} {rng.choice(words['verb'])} {o2} {t}"
        else:
            text = f"{s.capitalize()} {v} {o} {t}"
        if text not in seen:
            seen.add(text)
            out.append(text[0].upper() + text[1:])
    return out


def speak(text: str, voice: tuple, rng: random.Random, sample_rate: int) -> np.ndarray:
    """float32 [T] speech of `text` in `voice`, rate and pitch jittered by `rng`."""
    engine, name, rate, pitch = voice
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        if engine == "espeak":
            cmd = ["espeak-ng", "-v", name, "-s", str(int(rate * rng.uniform(0.85, 1.15))),
                   "-p", str(int(np.clip(pitch + rng.uniform(-15, 15), 0, 99))), "-w", str(wav),
                   text]
        else:
            cmd = ["flite", "-voice", name, "--setf",
                   f"duration_stretch={rate * rng.uniform(0.85, 1.2):.3f}", "-t", text, "-o",
                   str(wav)]
        subprocess.run(cmd, check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    peak = float(np.abs(audio).max()) or 1.0
    return audio * (10 ** (rng.uniform(-12.0, -3.0) / 20) / peak)


def write_split(folder: Path, texts: list[str], voices: list[tuple], sample_rate: int,
                seed: int, minutes: float | None = None) -> float:
    """Speak `texts` round-robin over `voices` into `folder` (stopping once `minutes` of
    audio are written, when given); returns the minutes written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows, seconds = [], 0.0
    for i, text in enumerate(texts):
        voice = voices[i % len(voices)]
        audio = speak(text, voice, rng, sample_rate)
        name = f"{folder.name}_{i:04d}"
        sf.write(folder / f"{name}.wav", audio, sample_rate, subtype="PCM_16")
        rows.append(f"{name}|{text}|{text}|{voice[0]}:{voice[1]}")
        seconds += len(audio) / sample_rate
        if minutes is not None and seconds >= 60 * minutes:
            break
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    print(f"{folder.name}: {len(rows)} files, {seconds / 60:.1f} min, {len(voices)} voices")
    return seconds / 60


def build(out: Path, train_minutes: float, n_dev: int, n_test: int, sample_rate: int) -> None:
    missing = [p for p in ("espeak-ng", "flite") if shutil.which(p) is None]
    if missing:
        sys.exit(f"{' and '.join(missing)} not found: install (Debian: apt-get install "
                 f"espeak-ng flite)")
    if train_minutes > 60:
        sys.exit("--train-minutes: at most 60 (the speech codec recipe's data budget)")
    # ~4.6 s a sentence; draw at least one per 2 s asked, so the minutes are always reached
    train_texts = sentences(TRAIN_WORDS, int(train_minutes * 60 / 2.0) + 50, seed=0)
    held_texts = sentences(TEST_WORDS, n_dev + n_test, seed=1)
    write_split(out / "train", train_texts, TRAIN_VOICES, sample_rate, seed=10,
                minutes=train_minutes)
    write_split(out / "dev", held_texts[:n_dev], TRAIN_VOICES, sample_rate, seed=11)
    write_split(out / "test", held_texts[n_dev:], TEST_VOICES, sample_rate, seed=12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train-minutes", type=float, default=40.0)
    p.add_argument("--dev", type=int, default=19, help="dev files (one per training voice)")
    p.add_argument("--test", type=int, default=25, help="test files (held-out voices)")
    p.add_argument("--sample-rate", type=int, default=16000)
    a = p.parse_args()
    build(a.out, a.train_minutes, a.dev, a.test, a.sample_rate)


if __name__ == "__main__":
    main()
