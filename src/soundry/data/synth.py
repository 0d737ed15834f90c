"""Procedural toy datasets (numpy and scipy only): tones, drums, speech-like, music.

`synthesize(out_dir, kind, count, seconds, sample_rate)` writes `count` files plus a
`manifest.jsonl` (path, duration, and per kind: `tags`, `text`, `speaker`). Clip i depends
only on (seed, kind, i), so a larger count extends a dataset without changing its start.

- tones: one to three sine partials with vibrato and an attack/release envelope.
- drums: kick, snare and hi-hat patterns on a 16-step grid; tags carry the tempo.
- speechlike: syllables of a tiny alphabet (plosives p t k, fricatives s f, nasals m n,
  vowels a e i o u) made of glottal pulses with a falling, wobbling pitch contour through
  vowel formant filters; `text` spells the syllables exactly as rendered and `speaker`
  names one of four voices (pitch and vocal-tract length).
- music: chords, arpeggios or melodies of harmonic instruments (piano, organ, pluck, pad)
  in a key and tempo; tags: genre, instrument, tempo, key, mode; `text` is a caption.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from soundry.audio.io import write_audio
from soundry.errors import DataError

KINDS = ("tones", "drums", "speechlike", "music")

Clip = tuple[np.ndarray, dict[str, Any]]  # (audio [T], manifest fields)


def synthesize(
    out_dir: str | Path,
    kind: str,
    count: int,
    seconds: float,
    sample_rate: int,
    seed: int = 0,
    format: str = "wav",
) -> Path:
    """Write `count` clips of `seconds` each and `manifest.jsonl`; returns the manifest path.

    `format`: 'wav' or 'flac' (16-bit PCM either way).
    """
    if kind not in KINDS:
        raise DataError(f"unknown synth kind '{kind}' (valid: {', '.join(KINDS)})")
    if format not in ("wav", "flac"):
        raise DataError(f"unknown format '{format}' (valid: wav, flac)")
    if count < 1 or seconds <= 0 or sample_rate < 4000:
        raise DataError("synth needs count >= 1, seconds > 0 and sample_rate >= 4000")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    make = _MAKERS[kind]
    n = max(1, round(seconds * sample_rate))
    rows = []
    for i in range(count):
        rng = np.random.default_rng([int(seed), KINDS.index(kind), i])
        audio, fields = make(rng, n, sample_rate, int(seed))
        audio = fit(audio, n)
        peak = float(np.max(np.abs(audio)))
        if peak > 0:
            audio = audio * (rng.uniform(0.3, 0.9) / peak)
        name = f"{kind}_{i:05d}.{format}"
        write_audio(out / name, audio[None].astype(np.float32), sample_rate)
        rows.append({"path": name, "duration": round(n / sample_rate, 6), **fields})
    manifest = out / "manifest.jsonl"
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    os.chmod(tmp, 0o644)
    os.replace(tmp, manifest)
    return manifest


def fit(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad a 1-D signal to n samples."""
    if len(audio) >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - len(audio))])


def envelope(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack, flat, linear release over n samples (times in seconds)."""
    env = np.ones(n)
    a = min(n, max(1, int(attack * sr)))
    r = min(n - a, max(1, int(release * sr)))
    env[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r > 0:
        env[n - r :] = np.linspace(1.0, 0.0, r)
    return env


# ----------------------------------------------------------------------------- tones


def _tones(rng: np.random.Generator, n: int, sr: int, seed: int) -> Clip:
    t = np.arange(n) / sr
    out = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        f = math.exp(rng.uniform(math.log(110.0), math.log(min(1760.0, 0.4 * sr))))
        vib = rng.uniform(0.0, 0.01) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        phase = 2 * np.pi * np.cumsum(f * (1.0 + vib)) / sr
        out += rng.uniform(0.3, 1.0) * np.sin(phase + rng.uniform(0, 2 * np.pi))
    return out * envelope(n, sr, rng.uniform(0.005, 0.05), rng.uniform(0.01, 0.1)), {}


# ----------------------------------------------------------------------------- drums


def _decay(n: int, sr: int, seconds: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (seconds * sr))


def _kick(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.35 * sr)
    t = np.arange(n) / sr
    freq = 45.0 + 110.0 * np.exp(-t / 0.04)
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * _decay(n, sr, rng.uniform(0.12, 0.25))


def _snare(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.25 * sr)
    noise = np.diff(rng.standard_normal(n + 1))  # first difference: tilt towards highs
    tone = np.sin(2 * np.pi * 185.0 * np.arange(n) / sr)
    return (0.5 * noise + 0.6 * tone) * _decay(n, sr, rng.uniform(0.05, 0.1))


def _hat(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.08 * sr)
    noise = np.diff(rng.standard_normal(n + 2), n=2)
    return 0.25 * noise * _decay(n, sr, rng.uniform(0.01, 0.03))


def _drums(rng: np.random.Generator, n: int, sr: int, seed: int) -> Clip:
    tempo = int(rng.integers(80, 161))
    step = 60.0 / tempo / 4  # sixteenth notes
    kick_steps = {0, 8} | ({int(rng.choice([6, 10, 14]))} if rng.random() < 0.6 else set())
    snare_steps = {4, 12}
    hat_every = int(rng.choice([2, 4]))
    sounds = {"kick": _kick(rng, sr), "snare": _snare(rng, sr), "hat": _hat(rng, sr)}
    out = np.zeros(n + int(0.4 * sr))
    for s in range(int(n / sr / step) + 1):
        start = int(s * step * sr)
        beat = s % 16
        hits = []
        if beat in kick_steps:
            hits.append("kick")
        if beat in snare_steps:
            hits.append("snare")
        if beat % hat_every == 0:
            hits.append("hat")
        for hit in hits:
            sound = sounds[hit] * rng.uniform(0.7, 1.0)
            out[start : start + len(sound)] += sound
    return out[:n], {"tags": {"tempo": str(tempo)}}


# ----------------------------------------------------------------------------- speechlike

_VOWELS = {  # first three formants (Hz) of an adult male voice
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
_NASALS = {"m": (250, 1000, 2200), "n": (250, 1400, 2500)}
_CONSONANTS = ("p", "t", "k", "s", "f", "m", "n")
_N_SPEAKERS = 4


def _speaker(seed: int, index: int) -> tuple[float, float]:
    """(mean f0 in Hz, formant scale) of a voice; fixed per (seed, speaker)."""
    rng = np.random.default_rng([seed, 99, index])
    female = index % 2 == 1
    f0 = rng.uniform(180, 230) if female else rng.uniform(95, 130)
    scale = rng.uniform(1.12, 1.2) if female else rng.uniform(0.95, 1.03)
    return float(f0), float(scale)


def _glottal(f0: np.ndarray, sr: int) -> np.ndarray:
    """Glottal flow derivative (Rosenberg pulse, differentiated) for a per-sample f0."""
    phase = np.cumsum(f0 / sr) % 1.0
    opening, closing = 0.4, 0.16
    flow = np.where(
        phase < opening,
        0.5 * (1 - np.cos(np.pi * phase / opening)),
        np.where(
            phase < opening + closing,
            np.cos(np.pi * (phase - opening) / (2 * closing)),
            0.0,
        ),
    )
    return np.diff(flow, prepend=0.0) * 10.0


def _formants(source: np.ndarray, formants: tuple[float, ...], scale: float, sr: int) -> np.ndarray:
    out = source
    for k, f in enumerate(formants):
        f = min(f * scale, 0.45 * sr)
        bw = 60.0 + 30.0 * k
        r = math.exp(-math.pi * bw / sr)
        out = signal.lfilter([1 - r], [1.0, -2 * r * math.cos(2 * math.pi * f / sr), r * r], out)
    return out


def _speechlike(rng: np.random.Generator, n: int, sr: int, seed: int) -> Clip:
    speaker = int(rng.integers(_N_SPEAKERS))
    f0_mean, scale = _speaker(seed, speaker)
    t = np.arange(n) / sr
    # pitch: a gentle declination plus slow random wobble (intonation)
    wobble = sum(
        rng.uniform(0.02, 0.06) * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6))
        for _ in range(3)
    )
    f0 = f0_mean * (1.15 - 0.3 * t / max(t[-1], 1e-9) + wobble)
    source = _glottal(f0, sr)
    out = np.zeros(n)
    pos = int(rng.uniform(0.02, 0.1) * sr)
    words: list[str] = []
    word = ""
    while True:
        consonant = str(rng.choice(_CONSONANTS))
        vowel = str(rng.choice(list(_VOWELS)))
        c_len = int((0.07 if consonant in "sfmn" else 0.03) * sr)
        v_len = int(rng.uniform(0.12, 0.22) * sr)
        gap = int(rng.uniform(0.06, 0.12) * sr) if len(word) >= 2 and rng.random() < 0.5 else 0
        if pos + c_len + v_len + gap > n:
            break
        seg = slice(pos, pos + c_len)
        if consonant in "sf":
            noise = np.diff(rng.standard_normal(c_len + 1)) * (0.3 if consonant == "s" else 0.1)
            out[seg] += noise * envelope(c_len, sr, 0.01, 0.01)
        elif consonant in "mn":
            voiced = _formants(source[seg], _NASALS[consonant], scale, sr)
            out[seg] += 0.4 * voiced * envelope(c_len, sr, 0.01, 0.01)
        else:  # plosive: closure, then a short burst
            burst = rng.standard_normal(c_len // 3) * 0.4
            out[pos + c_len - len(burst) : pos + c_len] += burst * _decay(len(burst), sr, 0.005)
        pos += c_len
        seg = slice(pos, pos + v_len)
        voiced = _formants(source[seg], _VOWELS[vowel], scale, sr)
        out[seg] += voiced * envelope(v_len, sr, 0.02, 0.04)
        pos += v_len
        word += consonant + vowel
        if gap:
            words.append(word)
            word = ""
            pos += gap
    if word:
        words.append(word)
    return out, {"text": " ".join(words), "speaker": f"spk{speaker}"}


# ----------------------------------------------------------------------------- music

# relative amplitudes of harmonics 1..8, attack (s), decay time (s; None = sustained), release
_INSTRUMENTS: dict[str, tuple[np.ndarray, float, float | None, float]] = {
    "piano": (1.0 / np.arange(1, 9), 0.004, 0.6, 0.05),
    "organ": (np.array([1.0, 0.6, 0.0, 0.4, 0.0, 0.25, 0.0, 0.15]), 0.02, None, 0.03),
    "pluck": (1.0 / np.arange(1, 9) ** 1.5, 0.002, 0.25, 0.02),
    "pad": (1.0 / np.arange(1, 9) ** 2, 0.25, None, 0.3),
}
_GENRES = {  # tempo range, instruments, texture
    "ambient": ((60, 80), ("pad", "organ"), "chords"),
    "pop": ((100, 128), ("piano", "pluck"), "chords"),
    "minimal": ((110, 132), ("pluck", "piano"), "arpeggio"),
    "chorale": ((66, 90), ("organ",), "chords"),
    "folk": ((84, 112), ("pluck", "piano"), "melody"),
}
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4))


def _note(instrument: str, freq: float, samples: int, sr: int) -> np.ndarray:
    amps, attack, decay, release = _INSTRUMENTS[instrument]
    t = np.arange(samples) / sr
    k = np.arange(1, len(amps) + 1)[:, None]
    keep = (k[:, 0] * freq < 0.45 * sr) & (amps > 0)
    k, a = k[keep], amps[keep][:, None]
    if decay is not None:  # higher partials die away faster
        a = a * np.exp(-t[None] * k / (decay * 2.0))
    tone = (a * np.sin(2 * np.pi * freq * k * t[None])).sum(axis=0)
    if instrument == "pad":  # a slightly detuned second voice for width
        tone = tone + 0.5 * np.sin(2 * np.pi * freq * 1.004 * t)
    return tone * envelope(samples, sr, attack, release)


def _midi_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def _music(rng: np.random.Generator, n: int, sr: int, seed: int) -> Clip:
    genre = str(rng.choice(list(_GENRES)))
    (lo, hi), instruments, texture = _GENRES[genre]
    tempo = int(rng.integers(lo, hi + 1))
    instrument = str(rng.choice(instruments))
    mode = str(rng.choice(list(_SCALES)))
    root = int(rng.integers(48, 60))
    scale = _SCALES[mode]
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    beat = 60.0 / tempo
    out = np.zeros(n + int(8 * beat * sr) + sr)  # room for the last bar to ring out
    bar = 0
    while bar * 4 * beat * sr < n:
        degree = progression[bar % len(progression)]
        chord = [root + scale[(degree + j) % 7] + 12 * ((degree + j) // 7) for j in (0, 2, 4)]
        start = int(bar * 4 * beat * sr)
        if texture == "chords":
            length = int(4 * beat * sr)
            for note in chord:
                out[start : start + length] += _note(instrument, _midi_hz(note), length, sr)
        else:
            per_beat = 2
            length = int(beat / per_beat * sr)
            pattern = (chord + [chord[1]]) if texture == "arpeggio" else None
            for s in range(4 * per_beat):
                if pattern is not None:
                    note = pattern[s % len(pattern)] + 12
                else:
                    note = root + 12 + scale[int(rng.integers(7))]
                at = start + s * length
                sound = _note(instrument, _midi_hz(note), int(length * 1.5), sr)
                out[at : at + len(sound)] += sound * rng.uniform(0.6, 1.0)
            bass = int(4 * beat * sr)
            out[start : start + bass] += 0.5 * _note(instrument, _midi_hz(chord[0] - 12), bass, sr)
        bar += 1
    key = _NOTE_NAMES[root % 12]
    tags = {"genre": genre, "instrument": instrument, "tempo": str(tempo), "key": key, "mode": mode}
    text = f"{genre} {instrument} in {key} {mode} at {tempo} bpm"
    return out[:n], {"tags": tags, "text": text}


_MAKERS: dict[str, Callable[[np.random.Generator, int, int, int], Clip]] = {
    "tones": _tones,
    "drums": _drums,
    "speechlike": _speechlike,
    "music": _music,
}
