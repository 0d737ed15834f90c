"""Fabricated run directories in the layout the training engine writes (for report tests).

RUN/config.yaml, RUN/provenance.json, RUN/metrics.jsonl, RUN/checkpoints/index.json,
RUN/valid/step_XXXXXXXX/<clip>_ref.wav|.png and <clip>_out.wav|.png
"""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

SAMPLE_RATE = 8000

BASE_CONFIG: dict[str, Any] = {
    "task": "codec",
    "seed": 0,
    "model": {
        "encoder": {"channels": 16, "strides": [2, 4, 5]},
        "quantizer": {"type": "rvq", "levels": 4, "codebook_size": 256},
    },
    "optim": {"generator": {"type": "adamw", "lr": 1e-4}, "discriminator": {"lr": 1e-4}},
    "train": {"max_steps": 400, "batch_size": 4, "precision": "fp32"},
}


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 image [H, W, 3] as PNG (zlib only)."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].astype(np.uint8).tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def spectrogram_png(audio: np.ndarray, width: int = 64, height: int = 32) -> bytes:
    """A small false-colour magnitude spectrogram of a mono signal."""
    n_fft = 2 * (height - 1)
    hop = max(1, (len(audio) - n_fft) // (width - 1))
    cols = []
    for i in range(width):
        start = min(i * hop, max(0, len(audio) - n_fft))
        seg = audio[start : start + n_fft]
        seg = np.pad(seg, (0, n_fft - len(seg)))
        cols.append(np.abs(np.fft.rfft(seg * np.hanning(n_fft))))
    mag = 20 * np.log10(np.stack(cols, axis=1) + 1e-6)[::-1]
    norm = np.clip((mag - mag.max() + 60) / 60, 0, 1)
    rgb = np.stack([norm, norm**2, 0.3 + 0.7 * (1 - norm)], axis=-1) * 255
    return png_bytes(rgb.astype(np.uint8))


def make_run(
    path: Path,
    *,
    name: str | None = None,
    config_changes: dict[str, Any] | None = None,
    steps: int = 400,
    train_every: int = 10,
    valid_every: int = 100,
    clips: dict[str, float] | None = None,
    quality: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a run directory at `path` and return it.

    config_changes: dotted key -> value applied to BASE_CONFIG (e.g. {"optim.generator.type":
      "muon"}). clips: clip name -> duration in seconds (default clip00 1.0 s, clip01 0.5 s).
    quality scales how fast losses fall, so two runs have distinguishable curves.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(BASE_CONFIG)
    if name is not None:
        config["name"] = name
    for key, value in (config_changes or {}).items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / "provenance.json").write_text(
        json.dumps(
            {
                "soundry_version": "0.1.0",
                "git_commit": "0123456789abcdef",
                "command": ["soundry", "train", "recipes/codec/tiny.yaml"],
                "packages": {"torch": "2.13.0", "numpy": "2.4.6"},
                "hardware": {"device": "cpu", "cpu_count": 2},
            }
        )
    )
    clips = clips if clips is not None else {"clip00": 1.0, "clip01": 0.5}
    t0 = 1_700_000_000.0
    lines = []
    for step in range(train_every, steps + 1, train_every):
        decay = np.exp(-quality * step / steps)
        lines.append(
            {
                "step": step,
                "kind": "train",
                "time": t0 + step * 0.5,
                "loss/mel": float(2.0 * decay + 0.3 + 0.05 * rng.standard_normal()),
                "loss/adv_g": float(1.0 + 0.1 * rng.standard_normal()),
                "loss/feat": float(3.0 * decay + 0.1),
                "loss/d": float(0.5 + 0.05 * rng.standard_normal()),
                "grad_norm/generator": float(10 ** (1 + rng.standard_normal())),
                "grad_norm/discriminator": float(abs(1 + 0.3 * rng.standard_normal())),
                "lr/generator": 1e-4 * 0.999**step,
                "lr/discriminator": 1e-4,
                "nonfinite_skips": 0,
            }
        )
        if step % valid_every == 0:
            lines.append(
                {
                    "step": step,
                    "kind": "valid",
                    "time": t0 + step * 0.5 + 0.1,
                    "valid/mel_distance": float(1.5 * decay + 0.4),
                    "valid/stft_distance": float(2.5 * decay + 0.9),
                    "valid/si_sdr": float(12 * (1 - decay)),
                }
            )
            _write_valid_step(path / "valid" / f"step_{step:08d}", clips, decay, rng)
    with (path / "metrics.jsonl").open("w") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)
    (path / "checkpoints").mkdir(exist_ok=True)
    last = f"step_{steps - steps % valid_every:08d}"
    (path / "checkpoints" / "index.json").write_text(
        json.dumps(
            {
                "last": last,
                "best": last,
                "best_metric": "valid/mel_distance",
                "best_value": float(1.5 * np.exp(-quality) + 0.4),
            }
        )
    )
    return path


def reference_clip(name: str, seconds: float) -> np.ndarray:
    """The reference audio of a clip: the same at every step and in every run."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0 = 220.0 * (1 + (sum(map(ord, name)) % 5))
    return (0.4 * np.sin(2 * np.pi * f0 * t) * np.hanning(n)).astype(np.float32)


def _write_valid_step(folder: Path, clips: dict[str, float], decay: float, rng: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for clip, seconds in clips.items():
        ref = reference_clip(clip, seconds)
        out = ref + (0.2 * decay * rng.standard_normal(len(ref))).astype(np.float32)
        for suffix, audio in (("ref", ref), ("out", out)):
            sf.write(folder / f"{clip}_{suffix}.wav", audio, SAMPLE_RATE, subtype="FLOAT")
            (folder / f"{clip}_{suffix}.png").write_bytes(spectrogram_png(audio))
