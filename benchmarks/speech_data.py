"""Build a small multi-voice speech set with espeak-ng: train and held-out folders.

    python benchmarks/speech_data.py OUT [--train 48] [--valid 12] [--sample-rate 16000]

Writes OUT/train/*.wav and OUT/valid/*.wav (mono, 16 kHz by default) plus a
`metadata.csv` (LJSpeech-style `id|text|text|voice`) in each. Validation sentences are
never spoken in training, and two of the voices are held out of training entirely, so
the set measures generalisation to new text and new speakers. Deterministic: the same
arguments give the same files. Needs the `espeak-ng` program (Debian: `apt-get install
espeak-ng`).
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

TRAIN_VOICES = [
    ("en-us", 160, 45), ("en-us+f3", 175, 60), ("en-gb", 150, 40), ("en-gb+m3", 140, 35),
    ("en-us+f5", 185, 70), ("en-us+m7", 155, 30), ("de", 150, 45), ("fr", 160, 55),
]
HELD_OUT_VOICES = [("en-gb-x-rp+f2", 165, 65), ("en-us+m2", 145, 38)]

SUBJECTS = ["the old clock", "a quiet river", "my neighbour", "the red train", "this small lamp",
            "every winter", "the tall tree", "our new teacher", "a distant bell", "the paper boat"]
VERBS = ["carried", "followed", "remembered", "painted", "heard", "opened", "measured",
         "watched", "borrowed", "answered"]
OBJECTS = ["seven green apples", "the silver key", "a long letter", "the morning news",
           "two wooden chairs", "the broken window", "a bright yellow kite", "the last song",
           "four heavy boxes", "the winding road"]
TAILS = ["before the storm began.", "near the harbour at dawn.", "without saying a word.",
         "while everyone was sleeping.", "during the summer festival.", "after lunch today.",
         "in the middle of the night.", "on a cold and windy day.", "beside the station.",
         "as the lights went out."]


def sentences(count: int, seed: int) -> list[str]:
    """`count` distinct sentences from a seeded grammar."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        s = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} " \
            f"{rng.choice(TAILS)}"
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def speak(text: str, voice: tuple[str, int, int], sample_rate: int, espeak: str) -> np.ndarray:
    """float32 [T] speech of `text` with espeak-ng (voice, words per minute, pitch)."""
    name, speed, pitch = voice
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([espeak, "-v", name, "-s", str(speed), "-p", str(pitch), "-w", str(wav),
                        text], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    return audio


def build(out: Path, n_train: int, n_valid: int, sample_rate: int) -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng not found: install it (Debian: apt-get install espeak-ng)")
    texts = sentences(n_train + n_valid, seed=0)
    splits = {"train": (texts[:n_train], TRAIN_VOICES),
              "valid": (texts[n_train:], TRAIN_VOICES[:3] + HELD_OUT_VOICES)}
    for split, (lines, voices) in splits.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, text in enumerate(lines):
            voice = voices[i % len(voices)]
            audio = speak(text, voice, sample_rate, espeak)
            peak = float(np.abs(audio).max()) or 1.0
            audio = audio * (0.5 / peak)  # same headroom for every voice
            name = f"{split}_{i:03d}"
            sf.write(folder / f"{name}.wav", audio, sample_rate, subtype="PCM_16")
            rows.append(f"{name}|{text}|{text}|{voice[0]}")
        (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
        print(f"{split}: {len(lines)} files in {folder}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=48)
    p.add_argument("--valid", type=int, default=12)
    p.add_argument("--sample-rate", type=int, default=16000)
    a = p.parse_args()
    build(a.out, a.train, a.valid, a.sample_rate)


if __name__ == "__main__":
    main()
