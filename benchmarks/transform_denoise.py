"""Train `recipes/transform/denoise-tiny.yaml` (GAN and non-GAN) and score it on held-out
noisy speech: voices, sentences and a noise colour not seen in training.

    python benchmarks/transform_denoise.py --out runs/denoise [--modes gan,plain] [--threads 2]

Speech comes from espeak-ng (`benchmarks/speech_data.py`: 8 training voices, 2 held-out
voices with new sentences). Training mixes white, pink or blue noise on the fly; the held-out
pairs mix brown noise at SNRs drawn uniformly in 0-10 dB (fixed seed). Each mode trains
through the real command line (`soundry train`, then `soundry export`) and the export is
scored with `soundry.train.tasks.transform.pair_scores` on every held-out pair: SI-SDR of
the output and of the input (the gain is the headline), mel distance of both, onset pop
and spectral line. Prints one JSON row per mode and a summary row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def held_out_pairs(folder: Path, sample_rate: int, seconds: float, seed: int = 1234
                   ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy [1, T], clean [1, T]) for every file of `folder` spoken by a voice held
    out of training: the first `seconds` (zero-padded), peak-normalised to 0.5, brown noise
    at an SNR drawn in [0, 10] dB."""
    from speech_data import HELD_OUT_VOICES

    from soundry.audio.degrade import Degrader
    from soundry.audio.io import read_audio
    from soundry.config import validate
    from soundry.data.config import DegradeConfig

    deg = Degrader(validate(DegradeConfig, {
        "noise": {"prob": 1.0, "min_snr_db": 0.0, "max_snr_db": 10.0, "colours": ["brown"]},
        "lowpass": {"prob": 0.0}, "clip": {"prob": 0.0}, "gain": {"prob": 0.0}},
        source="benchmark"), sample_rate)
    held = {v[0] for v in HELD_OUT_VOICES}
    voices = dict(line.split("|")[0::3] for line in
                  (folder / "metadata.csv").read_text().splitlines() if line)
    n = int(seconds * sample_rate)
    out = []
    for i, path in enumerate(sorted(folder.glob("*.wav"))):
        if voices.get(path.stem) not in held:
            continue
        audio, _ = read_audio(path, sample_rate=sample_rate, channels=1)
        clean = np.zeros((1, n), np.float32)
        clean[:, : min(n, audio.shape[-1])] = audio[:, :n]
        clean *= 0.5 / max(float(np.abs(clean).max()), 1e-6)
        noisy = deg.apply(clean, deg.draw(np.random.default_rng([seed, i])))
        out.append((path.stem, noisy, clean))
    return out


def score(export: Path, pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    import torch

    import soundry
    from soundry.train.tasks.transform import pair_scores

    model = soundry.load(str(export))
    rows = []
    with torch.no_grad():
        for _, noisy, clean in pairs:
            y = model(torch.from_numpy(noisy)[None])[0]
            rows.append(pair_scores(torch.from_numpy(clean), torch.from_numpy(noisy), y,
                                    model.sample_rate))
    keys = rows[0].keys()
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys} | {
        "si_sdr_gain_min": round(float(min(r["si_sdr_gain"] for r in rows)), 3),
        "pairs": len(rows)}


def one_run(mode: str, args: argparse.Namespace, train: Path, valid: Path,
            pairs: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    run = args.out / f"{mode}-s{args.seed}-t{args.threads}"
    exp = run.with_name(run.name + "-export")
    cmd = [sys.executable, "-m", "soundry", "train", args.recipe, "--data", str(train),
           "--valid", str(valid), "--out", str(run), "--threads", str(args.threads),
           f"seed={args.seed}", f"gan={'true' if mode == 'gan' else 'false'}",
           "train.progress=false", *args.overrides]
    t0 = time.time()
    with open(run.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    train_s = round(time.time() - t0, 1)
    row: dict[str, Any] = {"mode": mode, "seed": args.seed, "threads": args.threads,
                           "train_rc": rc, "train_s": train_s}
    if rc != 0:
        return {**row, "passed": False, "reasons": ["training failed"]}
    subprocess.run([sys.executable, "-m", "soundry", "export", str(run), str(exp)],
                   check=True, capture_output=True)
    scores = score(exp, pairs)
    health = run / "health.jsonl"
    findings = [json.loads(x) for x in health.read_text().splitlines()] if health.is_file() \
        else []
    errors = [f for f in findings if f.get("severity") == "error"]
    reasons = []
    if scores["si_sdr_gain"] < 5.0:
        reasons.append(f"SI-SDR gain {scores['si_sdr_gain']:.2f} dB < 5 dB")
    if train_s > args.max_minutes * 60:
        reasons.append(f"training took {train_s / 60:.1f} min")
    if errors:
        reasons.append(f"{len(errors)} error-level health findings")
    return {**row, "scores": scores, "health_errors": len(errors),
            "passed": not reasons, "reasons": reasons}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/denoise"))
    p.add_argument("--modes", default="gan,plain", help="gan (GAN phases) and/or plain "
                   "(gan=false)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "transform" / "denoise-tiny.yaml"))
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from speech_data import build

    speech = args.out / "speech"
    if not (speech / "valid").is_dir():
        try:
            build(speech, 48, 20, 16000)
        except (SystemExit, FileNotFoundError, RuntimeError) as exc:
            print(json.dumps({"skipped": f"no speech: {exc}"}))
            return 0
    pairs = held_out_pairs(speech / "valid", 16000, 3.0)
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        rows.append(one_run(mode, args, speech / "train", speech / "valid", pairs))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": True, "runs": len(rows),
                      "passed": sum(bool(r["passed"]) for r in rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
