"""Train a tiny transform recipe (GAN and non-GAN) and score it on held-out speech.

    python benchmarks/transform_tiny.py --task denoise --out runs/denoise [--modes gan,plain]
    python benchmarks/transform_tiny.py --task bwe --out runs/bwe

Speech comes from espeak-ng (`benchmarks/speech_data.py`: 8 training voices, 2 held-out
voices with new sentences); the held-out pairs use only the held-out voices.

- `denoise` (`recipes/transform/denoise-tiny.yaml`): training mixes white, pink or blue
  noise on the fly; the held-out pairs mix brown noise (a colour never trained on) at SNRs
  drawn uniformly in 0-10 dB. Passes at an SI-SDR gain of 5 dB or more.
- `bwe` (`recipes/transform/bwe-tiny.yaml`): 16 kHz speech band-limited to 4 kHz in, full
  band out. Passes when the output's mel distance is at least 20% below the input's.

Each mode trains through the real command line (`soundry train`, then `soundry export`)
and the export is scored with `soundry.train.tasks.transform.pair_scores` on every held-out
pair: SI-SDR and mel distance of the output and of the input, onset pop and spectral line,
and PESQ / STOI of output and input when `pesq` / `pystoi` are installed.
Prints one JSON row per mode and a summary row.
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


#: the held-out degradation of each task (a `data.degrade` section)
HELD_OUT = {
    "denoise": {"noise": {"prob": 1.0, "min_snr_db": 0.0, "max_snr_db": 10.0,
                          "colours": ["brown"]},
                "lowpass": {"prob": 0.0}, "clip": {"prob": 0.0}, "gain": {"prob": 0.0}},
    "bwe": {"noise": {"prob": 0.0}, "clip": {"prob": 0.0}, "gain": {"prob": 0.0},
            "lowpass": {"prob": 1.0, "min_hz": 4000.0, "max_hz": 4000.0, "method": "resample"}},
}


def held_out_pairs(folder: Path, task: str, sample_rate: int, seconds: float,
                   seed: int = 1234) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, degraded [1, T], clean [1, T]) for every file of `folder` spoken by a voice
    held out of training: the first `seconds` (zero-padded), peak-normalised to 0.5, with
    the task's held-out degradation (`HELD_OUT`)."""
    from speech_data import HELD_OUT_VOICES

    from soundry.audio.degrade import Degrader
    from soundry.audio.io import read_audio
    from soundry.config import validate
    from soundry.data.config import DegradeConfig

    deg = Degrader(validate(DegradeConfig, HELD_OUT[task], source="benchmark"), sample_rate)
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
    from soundry.eval.extra_metrics import availability
    from soundry.train.tasks.transform import pair_scores, speech_scores

    model = soundry.load(str(export))
    speech = [m for m, why in availability().items() if m in ("pesq", "stoi") and why is None]
    rows = []
    with torch.no_grad():
        for _, noisy, clean in pairs:
            y = model(torch.from_numpy(noisy)[None])[0]
            row = pair_scores(torch.from_numpy(clean), torch.from_numpy(noisy), y,
                              model.sample_rate)
            row.update(speech_scores(speech, clean, noisy, y.numpy(), model.sample_rate))
            rows.append(row)
    keys = rows[0].keys()
    return {k: round(float(np.nanmean([r[k] for r in rows])), 3) for k in keys} | {
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
    row: dict[str, Any] = {"task": args.task, "mode": mode, "seed": args.seed,
                           "threads": args.threads, "train_rc": rc, "train_s": train_s}
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
    if args.task == "denoise" and scores["si_sdr_gain"] < 5.0:
        reasons.append(f"SI-SDR gain {scores['si_sdr_gain']:.2f} dB < 5 dB")
    mel_drop = 1.0 - scores["mel_distance"] / scores["input_mel_distance"]
    scores["mel_reduction"] = round(mel_drop, 4)
    if args.task == "bwe" and mel_drop < 0.2:
        reasons.append(f"mel distance {100 * mel_drop:.1f}% below the input's (< 20%)")
    if train_s > args.max_minutes * 60:
        reasons.append(f"training took {train_s / 60:.1f} min")
    if errors:
        reasons.append(f"{len(errors)} error-level health findings")
    return {**row, "scores": scores, "health_errors": len(errors),
            "passed": not reasons, "reasons": reasons}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(HELD_OUT), default="denoise")
    p.add_argument("--out", type=Path, default=None, help="default: runs/<task>")
    p.add_argument("--modes", default="gan,plain", help="gan (GAN phases) and/or plain "
                   "(gan=false)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipe", default=None, help="default: recipes/transform/<task>-tiny.yaml")
    p.add_argument("--max-minutes", type=float, default=20.0)
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args()
    args.out = args.out or Path("runs") / args.task
    args.recipe = args.recipe or str(ROOT / "recipes" / "transform" / f"{args.task}-tiny.yaml")
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
    pairs = held_out_pairs(speech / "valid", args.task, 16000, 3.0)
    rows = []
    for mode in [m for m in args.modes.split(",") if m]:
        rows.append(one_run(mode, args, speech / "train", speech / "valid", pairs))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"summary": True, "runs": len(rows),
                      "passed": sum(bool(r["passed"]) for r in rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
