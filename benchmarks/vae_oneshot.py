"""Does the one-shot VAE recipe make new, plausible, varied drum hits? One JSON line a run.

    python benchmarks/vae_oneshot.py [--out DIR] [--seeds 0] [--threads 2]
        [--recipe recipes/vae/oneshot-tiny.yaml] [--count 320] [k=v ...]

Data: General MIDI drum one-shots rendered with fluidsynth (`benchmarks/drum_data.py`,
44.1 kHz, several kits, notes and velocities; a tenth held out). Every run goes through the
real command line: `soundry train RECIPE --data TRAIN --valid HELDOUT --threads N`, then
`soundry export`, then `soundry.eval.generation.score_vae` of the export against the
training and held-out sounds (32 prior samples), with `vae_verdict`'s acceptance; the
training wall time must stay within `--max-minutes` (15). The last line is a summary.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def sounds(folder: Path, sample_rate: int, n_samples: int, peak: float | None) -> Any:
    """Every file's start [N, 1, n_samples], peak-normalised as the recipe's data is."""
    import numpy as np
    import torch

    from soundry.audio.io import read_audio

    out = []
    for path in sorted(folder.glob("*.wav")):
        audio, _ = read_audio(path, 0, -1, sample_rate=sample_rate, channels=1)
        clip = np.zeros((1, n_samples), dtype=np.float32)
        clip[:, : min(n_samples, audio.shape[-1])] = audio[:, :n_samples]
        if peak is not None and np.abs(clip).max() > 1e-6:
            clip *= peak / np.abs(clip).max()
        out.append(torch.from_numpy(clip))
    return torch.stack(out)


def one_run(seed: int, args: argparse.Namespace, train: Path, heldout: Path) -> dict[str, Any]:
    import soundry
    from soundry.eval.generation import score_vae, vae_verdict
    from soundry.train.recipes import load_recipe

    run, exp = args.out / f"s{seed}-t{args.threads}", args.out / f"s{seed}-t{args.threads}-export"
    log = args.out / f"s{seed}-t{args.threads}.log"
    cmd = [sys.executable, "-m", "soundry", "train", args.recipe, "--data", str(train),
           "--valid", str(heldout), "--out", str(run), "--threads", str(args.threads),
           f"seed={seed}", "train.progress=false", *args.overrides]
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    train_s = time.time() - t0
    row: dict[str, Any] = {"run": run.name, "seed": seed, "threads": args.threads,
                           "train_rc": rc, "train_s": round(train_s, 1)}
    if rc != 0:
        return {**row, "passed": False, "reasons": [f"training failed (see {log})"]}
    subprocess.run([sys.executable, "-m", "soundry", "export", str(run), str(exp)],
                   check=True, capture_output=True)
    recipe = load_recipe(args.recipe, [f"seed={seed}", *args.overrides])
    vae = soundry.load(str(exp))
    peak = recipe.data.loudness.peak
    train_x = sounds(train, vae.sample_rate, vae.n_samples, peak)
    held_x = sounds(heldout, vae.sample_rate, vae.n_samples, peak)
    scores = score_vae(vae, train_x, held_x, n_samples=32, seed=seed)
    passed, reasons, criteria = vae_verdict(scores)
    if train_s > args.max_minutes * 60:
        passed, reasons = False, [*reasons, f"training took {train_s / 60:.1f} min"]
    health = run / "health.jsonl"
    errors = [json.loads(x) for x in health.read_text().splitlines()] if health.is_file() else []
    errors = [f for f in errors if f.get("severity") == "error"]
    if errors:
        passed, reasons = False, [*reasons, f"{len(errors)} error-level health findings"]
    summary = json.loads((run / "summary.json").read_text())
    return {**row, "scores": scores, "criteria": criteria, "health_errors": len(errors),
            "steps": summary.get("steps"), "steps_per_second": summary.get("steps_per_second"),
            "valid": summary.get("valid"),
            "passed": passed, "reasons": reasons}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/vae-oneshot"))
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "vae" / "oneshot-tiny.yaml"))
    p.add_argument("--count", type=int, default=320, help="drum hits to render")
    p.add_argument("--max-minutes", type=float, default=15.0)
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from drum_data import make_drums

    made = make_drums(args.out / "drums", count=args.count)
    if isinstance(made, str):
        print(json.dumps({"skipped": made}))
        return 0
    train, heldout = made
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        row = one_run(seed, args, train, heldout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"summary": True, "runs": len(rows),
                      "passed": sum(bool(r["passed"]) for r in rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
