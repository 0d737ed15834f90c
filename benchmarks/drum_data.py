"""Render General MIDI drum one-shots with fluidsynth: train and held-out folders.

    python benchmarks/drum_data.py OUT [--count 320] [--seconds 1.2] [--holdout 0.1]

Writes OUT/train/*.wav and OUT/heldout/*.wav: mono 16-bit WAVs at 44.1 kHz, one drum hit
each, starting at sample 0 and `seconds` long (the tail is the hit's own decay, padded with
silence or cut with a 10 ms fade), named like `kit-standard_note-38_vel-100.wav`. The hits
are GM percussion notes 35..81 at velocities 60/100/127 on the drum kits (bank 128) that the
soundfont holds, taken in an order that spreads them evenly over kits, notes and velocities.
Notes a kit leaves silent are skipped, and so are notes where a kit only reuses an earlier
kit's sample (in FluidR3_GM most kits replace just a few drums: of 376 kit-notes about 120
are sounds of their own). So is a kit-note that sounds like one already kept, of any kit or
note: within `SAME_MEL` in mel distance at full velocity, peak-normalised (kits share
samples panned, filtered or pitched a little: such twins sat 0.01-0.7 apart, distinct drums
1.2 and more). Without that, held-out hits had twins in training, and "unseen" meant
nothing. Levels are the soundfont's
own: nothing is normalised, a file is only scaled down if it would clip. About `holdout` of
the hits go to heldout, whole sounds at a time (a kit's note at all its velocities), picked
by a hash of the name, so no held-out sound is heard in training at another velocity.

One fluidsynth call per kit renders a MIDI file written here (a program change for the kit,
then one note every couple of seconds) dry, without reverb or chorus; the rendering is cut
into one file per hit. Deterministic: the same arguments give the same files, and a finished
OUT is reused (OUT/drums.json records what was made). Needs the `fluidsynth` program and a
GM soundfont (Debian: `apt-get install fluidsynth fluid-soundfont-gm`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
              Path("/usr/share/sounds/sf2/default-GM.sf2"))
# The GS drum-kit slots: Standard, Room, Power, Electronic, TR-808, Jazz, Brush, Orchestra,
# SFX. Soundfonts also carry variants ("Standard 1".."7") that mostly repeat these samples.
KIT_PROGRAMS = (0, 8, 16, 24, 25, 32, 40, 48, 56)
NOTES = tuple(range(35, 82))  # GM percussion map: Acoustic Bass Drum .. Open Triangle
VELOCITIES = (60, 100, 127)

GAIN = 0.8  # fluidsynth master gain; the loudest GM hits stay below full scale after mixdown
HOLD_S = 0.3  # note-off after this, as a sequencer would play a hit; the release rings on
SLACK_S = 0.3  # rendered beyond each file: room for a late onset, then silence
BLOCK = 64  # fluidsynth's block: events take effect at block starts, timed in whole ms
SILENT = 1e-3  # a hit whose peak stays below this is a note the kit does not map
ONSET = 1e-4  # the first sample above this (about 3 LSB at 16 bit) is the onset
PRE = 4  # samples kept before the onset, so the attack is not cut
NEAR = 0.999  # correlation above which two renderings count as the same sample
# mel distance (soundry.eval.set_metrics, peak-normalised) below which two kit-notes count as
# one sound: velocity layers of a sound lie 0.05-0.25 apart, shared samples up to ~0.7
SAME_MEL = 1.0
CEILING = 0.99
FADE_S = 0.01
OUR_WAV = re.compile(r"kit-[a-z0-9-]+_note-\d+_vel-\d+\.wav")

Hit = tuple[int, int, int]  # (kit program, note, velocity)


def find_tools() -> tuple[str, Path] | str:
    """(fluidsynth program, soundfont), or the reason they are not there."""
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth is None:
        return "fluidsynth not found: install it (Debian: apt-get install fluidsynth)"
    for sf2 in SOUNDFONTS:
        if sf2.is_file():
            return fluidsynth, sf2
    return (f"no GM soundfont at {', '.join(map(str, SOUNDFONTS))}: install one "
            "(Debian: apt-get install fluid-soundfont-gm)")


def presets(sf2: Path) -> list[tuple[int, int, str]]:
    """(bank, program, name) of every preset, read from the sf2's `phdr` chunk.

    A SoundFont is a RIFF file; the preset headers sit in LIST/pdta after the sample data,
    so the (large) chunks before it are skipped rather than read.
    """
    with sf2.open("rb") as f:
        riff, size, form = struct.unpack("<4sI4s", f.read(12))
        if riff != b"RIFF" or form != b"sfbk":
            raise ValueError(f"{sf2} is not a SoundFont 2 file")
        end, stop = 8 + size, 8 + size
        while f.tell() + 8 <= min(end, stop):
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"LIST":
                if f.read(4) == b"pdta":
                    stop = f.tell() + length - 4  # walk into this list's sub-chunks
                else:
                    f.seek(length - 4 + (length & 1), 1)
            elif chunk == b"phdr":
                data = f.read(length)
                # 38-byte records: name[20], program, bank, ...; the last one is "EOP"
                out = []
                for i in range(0, len(data) - 38, 38):
                    name, program, bank = struct.unpack_from("<20sHH", data, i)
                    out.append((bank, program, name.split(b"\0")[0].decode("latin-1")))
                return out
            else:
                f.seek(length + (length & 1), 1)
    raise ValueError(f"{sf2} has no preset headers")


def drum_kits(sf2: Path) -> dict[int, str]:
    """{program: name} of the GS kit slots the soundfont fills in the drum bank (128)."""
    found = {program: name.strip() for bank, program, name in presets(sf2) if bank == 128}
    return {program: found[program] for program in KIT_PROGRAMS if program in found}


def slug(name: str) -> str:
    """'TR-808' -> 'tr-808', 'Orchestra Kit' -> 'orchestra'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-").removesuffix("-kit")


def wav_name(kit: str, note: int, velocity: int) -> str:
    return f"kit-{slug(kit)}_note-{note}_vel-{velocity}.wav"


def hit_order(sounds: dict[int, list[int]]) -> list[Hit]:
    """Every hit of the kits' own sounds ({program: notes}) once, in the order they are taken.

    Each kit's notes are scrambled by a hash (so a partial pass is not all kicks), then the
    kits take turns, one note each; pass r plays note j at velocity j + r (mod 3), so three
    passes give every sound all three velocities and a count that stops early still has a
    mix of kits, notes and velocities.
    """
    notes = {p: sorted(ns, key=lambda n, p=p: hashlib.sha1(f"{p}:{n}".encode()).digest())
             for p, ns in sounds.items()}
    longest = max(map(len, notes.values()), default=0)
    return [(p, ns[j], VELOCITIES[(j + r) % len(VELOCITIES)])
            for r in range(len(VELOCITIES)) for j in range(longest)
            for p, ns in notes.items() if j < len(ns)]


def same_sound(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two hits are one sample: kits reuse the Standard kit's samples, sometimes
    panned or attenuated differently, which leaves the waveform's shape unchanged."""
    norm = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return norm > 0 and float(np.dot(a, b)) / norm > NEAR


def spacing_ms(seconds: float, sample_rate: int) -> int:
    """Time between hits: enough for a file plus slack, and a whole number of periods of
    the ms-versus-block grid, so every hit starts and releases at the same point of a block
    and renders the same samples wherever it falls in the MIDI file."""
    period = BLOCK * 1000 // math.gcd(BLOCK * 1000, sample_rate)  # 640 ms at 44.1 kHz
    return math.ceil((seconds + SLACK_S) * 1000 / period) * period


def varlen(n: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, high bit set on all but the last."""
    out = [n & 0x7F]
    while n := n >> 7:
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def midi_file(program: int, notes: list[tuple[int, int]], spacing: int, hold: int) -> bytes:
    """A one-track Standard MIDI File: kit `program` on channel 10, then each (note,
    velocity) every `spacing` ms, the first one `spacing` in (the first block of a
    rendering differs from the rest), released after `hold` ms, silenced before the next."""
    events = [(0, b"\xff\x51\x03" + (1_000_000).to_bytes(3, "big")),  # 1 tick = 1 ms
              (0, bytes([0xC9, program]))]  # program change on channel 10 (index 9)
    for i, (note, velocity) in enumerate(notes, start=1):
        t = i * spacing
        events += [(t, bytes([0x99, note, velocity])), (t + hold, bytes([0x89, note, 0])),
                   (t + spacing - 50, bytes([0xB9, 120, 0]))]  # all sound off
    events.append(((len(notes) + 1) * spacing, b"\xff\x2f\x00"))  # end of track
    events.sort(key=lambda e: e[0])  # stable: same-time events keep their order
    track, last = b"", 0
    for t, event in events:
        track += varlen(t - last) + event
        last = t
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000)  # format 0, 1 track, 1000 tpq
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def one_shot(region: np.ndarray, length: int, sample_rate: int) -> np.ndarray:
    """float32 [length]: `region` from just before its onset, padded or cut, faded out at
    the cut so a ringing cymbal does not end in a click, scaled down only if it would clip."""
    loud = np.flatnonzero(np.abs(region) > ONSET)
    if len(loud) == 0:
        return np.zeros(length, np.float32)
    audio = region[max(int(loud[0]) - PRE, 0):][:length]
    audio = np.pad(audio, (0, length - len(audio)))
    fade = min(int(FADE_S * sample_rate), length)
    audio[length - fade:] *= 0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    peak = float(np.abs(audio).max())
    if peak > CEILING:
        audio *= CEILING / peak
    return audio.astype(np.float32)


def render_kit(fluidsynth: str, sf2: Path, program: int, notes: list[tuple[int, int]],
               seconds: float, sample_rate: int) -> list[np.ndarray]:
    """float32 [seconds * sample_rate] one-shots of kit `program`, one per (note, velocity),
    all from one fluidsynth run (far faster than a process per hit)."""
    spacing = spacing_ms(seconds, sample_rate)
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "hits.mid", Path(tmp) / "hits.wav"
        mid.write_bytes(midi_file(program, notes, spacing, round(min(HOLD_S, seconds) * 1000)))
        # float output: no dither, and peaks above 1 survive to be scaled rather than clipped
        subprocess.run([fluidsynth, "-n", "-i", "-R", "0", "-C", "0", "-g", str(GAIN),
                        "-r", str(sample_rate), "-T", "wav", "-O", "float", "-F", str(wav),
                        str(sf2), str(mid)], check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise RuntimeError(f"fluidsynth rendered at {sr} Hz, not {sample_rate}")
    mono = audio.mean(axis=1)  # the kits pan their drums; the mix keeps every hit whole
    length, step = round(seconds * sample_rate), spacing * sample_rate // 1000
    # the hit starts within a block of its note-on; a region ends before the all-sound-off
    return [one_shot(mono[i * step:(i + 1) * step - sample_rate // 20], length, sample_rate)
            for i in range(1, len(notes) + 1)]


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    return np.round(audio * 32767).astype(np.int16)


def render_sounds(fluidsynth: str, sf2: Path, kits: list[int], seconds: float,
                  sample_rate: int) -> tuple[dict[int, list[int]], dict[Hit, np.ndarray]]:
    """({program: notes that are the kit's own sound}, {hit: int16 one-shot}) for every
    velocity of those notes: two fluidsynth runs per kit.

    Every note is probed at full velocity first: a note the kit leaves silent is unmapped,
    one that sounds like an earlier kit's same note is that kit's sample again (most GM kits
    only replace the kicks, snares, toms or cymbals). The other velocities of what is left
    are rendered next, so everything a count might take is at hand.
    """
    own: dict[tuple[int, int], np.ndarray] = {}  # (program, note) -> full-velocity render
    sounds: dict[int, list[int]] = {}
    pcm: dict[Hit, np.ndarray] = {}
    for program in kits:
        probe = [(note, VELOCITIES[-1]) for note in NOTES]
        audio = render_kit(fluidsynth, sf2, program, probe, seconds, sample_rate)
        sounds[program] = []
        for note, a in zip(NOTES, audio, strict=True):
            if float(np.abs(a).max()) < SILENT or any(
                    same_sound(a, b) for (_, n), b in own.items() if n == note):
                continue
            own[program, note] = a
            sounds[program].append(note)
            pcm[program, note, VELOCITIES[-1]] = to_pcm16(a)
        rest = [(note, v) for note in sounds[program] for v in VELOCITIES[:-1]]
        audio = render_kit(fluidsynth, sf2, program, rest, seconds, sample_rate)
        pcm.update({(program, n, v): to_pcm16(a) for (n, v), a in zip(rest, audio, strict=True)})
    return sounds, pcm


def distinct_sounds(sounds: dict[int, list[int]], pcm: dict[Hit, np.ndarray],
                    sample_rate: int, threshold: float = SAME_MEL) -> dict[int, list[int]]:
    """{program: notes} keeping a kit-note only if its full-velocity hit, peak-normalised,
    lies at least `threshold` (mel distance) from every kit-note kept before it (kits in
    order, then notes)."""
    import torch

    from soundry.eval.set_metrics import MelFeatures, pairwise_mel_distance

    order = [(p, n) for p, ns in sounds.items() for n in ns]
    if not order:
        return {p: [] for p in sounds}
    hits = np.stack([pcm[p, n, VELOCITIES[-1]].astype(np.float32) for p, n in order])
    hits /= np.maximum(np.abs(hits).max(axis=1, keepdims=True), 1.0)
    feats = MelFeatures(sample_rate)(torch.from_numpy(hits)[:, None])
    dist = pairwise_mel_distance(feats, feats)
    kept: list[int] = []
    for i in range(len(order)):
        if all(dist[i, j] >= threshold for j in kept):
            kept.append(i)
    out: dict[int, list[int]] = {p: [] for p in sounds}
    for i in kept:
        out[order[i][0]].append(order[i][1])
    return out


def heldout_names(names: list[str], holdout: float) -> set[str]:
    """The names for heldout: whole sounds (one kit's note, at each velocity it has), taken in
    the order of a hash of the sound until they make about `holdout` of all. Splitting by
    sound rather than by file keeps a held-out hit from being heard in training at another
    velocity, and the choice depends on the names alone."""
    sounds: dict[str, list[str]] = {}
    for name in names:
        sounds.setdefault(name.rsplit("_vel-", 1)[0], []).append(name)
    target = min(max(holdout, 0.0), 1.0) * len(names)
    held: list[str] = []
    for sound in sorted(sounds, key=lambda s: hashlib.sha1(s.encode()).digest()):
        if len(held) + len(sounds[sound]) / 2 > target:  # stop where the next overshoots
            break
        held += sounds[sound]
    return set(held)


def reusable(out: Path, params: dict) -> bool:
    """Whether OUT holds a finished set made with the same arguments."""
    try:
        made = json.loads((out / "drums.json").read_text())
    except (OSError, ValueError):
        return False
    return made.get("params") == params and all(
        (out / split / name).is_file() for split in ("train", "heldout") for name in made[split])


def make_drums(out: Path, count: int = 320, seconds: float = 1.2, sample_rate: int = 44100,
               holdout: float = 0.1) -> tuple[Path, Path] | str:
    """(train_dir, heldout_dir) of about `count` drum one-shots under `out`, or the reason
    they could not be made."""
    out = Path(out)
    train_dir, heldout_dir = out / "train", out / "heldout"
    params = {"count": count, "seconds": seconds, "sample_rate": sample_rate,
              "holdout": holdout, "same_mel": SAME_MEL}
    if reusable(out, params):
        return train_dir, heldout_dir
    tools = find_tools()
    if isinstance(tools, str):
        return tools
    fluidsynth, sf2 = tools
    try:
        kits = drum_kits(sf2)
    except (OSError, ValueError, struct.error) as e:
        return f"cannot read the presets of {sf2}: {e}"
    if not kits:
        return f"{sf2} has no drum kits (bank 128)"

    try:
        sounds, pcm = render_sounds(fluidsynth, sf2, list(kits), seconds, sample_rate)
    except subprocess.CalledProcessError as e:
        return f"fluidsynth failed: {e.stderr.decode(errors='replace').strip()[-500:]}"
    sounds = distinct_sounds(sounds, pcm, sample_rate)

    chosen: dict[str, np.ndarray] = {}
    seen: set[bytes] = set()
    for hit in hit_order(sounds):
        if len(chosen) >= count:
            break
        digest = hashlib.sha1(pcm[hit].tobytes()).digest()
        if float(np.abs(pcm[hit]).max()) < SILENT * 32767 or digest in seen:
            continue  # a soft velocity gone silent, or a kit that ignores velocity
        seen.add(digest)
        chosen[wav_name(kits[hit[0]], hit[1], hit[2])] = pcm[hit]

    held = heldout_names(list(chosen), holdout)
    (out / "drums.json").unlink(missing_ok=True)  # from here on OUT is not a finished set
    for folder in (train_dir, heldout_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.wav"):
            if OUR_WAV.fullmatch(old.name):  # a set made with other arguments
                old.unlink()
    for name, samples in chosen.items():
        sf.write((heldout_dir if name in held else train_dir) / name, samples, sample_rate,
                 subtype="PCM_16")
    # written last: a run that stops part-way leaves nothing that looks finished
    (out / "drums.json").write_text(json.dumps({
        "params": params, "soundfont": str(sf2), "kits": {slug(n): p for p, n in kits.items()},
        "train": sorted(set(chosen) - held), "heldout": sorted(held)}, indent=1) + "\n")
    return train_dir, heldout_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=320)
    p.add_argument("--seconds", type=float, default=1.2)
    p.add_argument("--holdout", type=float, default=0.1)
    a = p.parse_args()
    start = time.perf_counter()
    made = make_drums(a.out, a.count, a.seconds, holdout=a.holdout)
    if isinstance(made, str):
        sys.exit(made)
    train, heldout = made
    print(json.dumps({"train": len(list(train.glob("*.wav"))),
                      "heldout": len(list(heldout.glob("*.wav"))),
                      "train_dir": str(train), "heldout_dir": str(heldout),
                      "elapsed_s": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
