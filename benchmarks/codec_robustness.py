"""Does the default codec recipe learn, on every seed and thread count? One JSON line a run.

    python benchmarks/codec_robustness.py [--out DIR] [--datasets toy,speech]
        [--seeds1 0,1,2,3,4] [--seeds2 0,1] [--recipe codec/tiny.yaml] [--jobs 1] [k=v ...]

Every run goes through the real command line: `soundry train RECIPE --data --valid --threads`,
`soundry export` (the default checkpoint choice), then `soundry eval` of that export on the
validation files (whole files at their own level), beside the same architecture untrained
(same seed). Datasets: `toy` is the demo's synthetic data (`soundry data synth`); `speech` is
espeak-ng speech from `benchmarks/speech_data.py` (several voices, held-out sentences and two
held-out voices for validation; skipped with a reason when espeak-ng is missing).

Acceptance per run (soundry.eval.verdict): training completed; on every validation clip
the output peak < 0.99, RMS > 1e-3 and first-difference std > 1e-4; codebook usage >= 25%
averaged over levels and >= 10% on every level; toy: mel distance <= 0.5 x untrained;
speech: mel distance <= 0.7 x untrained and ViSQOL above the untrained model's (when
`visqol-python` is installed); the in-run validation mel distance at the end of the run
no worse than at the end of the reconstruction-only warm-up (2% tolerance for validation
noise). The last line is a summary with the pass count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOUNDRY = [sys.executable, "-m", "soundry"]


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def make_toy(out: Path) -> tuple[Path, Path]:
    """The demo's toy data: 24 clips of each kind for training, 2 of each for validation."""
    train, valid = out / "train", out / "valid"
    if not valid.is_dir():
        from soundry.data.synth import synthesize

        for i, kind in enumerate(["tones", "drums", "speechlike", "music"]):
            synthesize(train / kind, kind, 24, 2.0, 16000, seed=i)
            synthesize(valid / kind, kind, 2, 2.0, 16000, seed=100 + i)
    return train, valid


def make_speech(out: Path) -> tuple[Path, Path] | str:
    if shutil.which("espeak-ng") is None:
        return "espeak-ng is not installed (Debian: apt-get install espeak-ng)"
    if not (out / "valid").is_dir():
        made = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "speech_data.py"), str(out)],
            capture_output=True, text=True)
        if made.returncode != 0:
            return f"speech_data.py failed: {made.stderr.strip()[-300:]}"
    return out / "train", out / "valid"


def untrained_export(recipe_path: str, overrides: list[str], seed: int, out: Path) -> Path:
    """The recipe's codec with its initial weights (the task's seed), exported."""
    import torch

    from soundry.models.codec import build_codec
    from soundry.models.export import codec_export_config, save_export
    from soundry.train.recipes import load_recipe

    recipe = load_recipe(recipe_path, [*overrides, f"seed={seed}"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        codec = build_codec(recipe.model)
    codec.remove_weight_norm()
    save_export(out, "codec", codec_export_config(codec, folded=True), codec.state_dict())
    return out


def eval_summary(model: Path, valid: Path, out: Path, log: Path,
                 baseline: str | None = None) -> dict[str, Any]:
    """Mean metrics of `soundry eval MODEL VALID` (None where not measurable); with a
    baseline (and ffmpeg), its figures under "baseline"."""
    cmd = [*SOUNDRY, "eval", str(model), str(valid), "--out", str(out), "--bootstrap", "200"]
    if baseline and shutil.which("ffmpeg"):
        cmd += ["--baseline", baseline]
    path = out / "summary.json"
    if sh(cmd, log) != 0 or not path.is_file():
        return {}
    systems = json.loads(path.read_text()).get("systems") or {}
    rows = [_means(v) for v in systems.values()] if isinstance(systems, dict) else []
    if not rows:
        return {}
    return {**rows[0], **({"baseline": rows[1]} if len(rows) > 1 else {})}


def _means(system: Any) -> dict[str, Any]:
    metrics = system.get("metrics", system) if isinstance(system, dict) else {}
    row: dict[str, Any] = {}
    for key in ("mel_distance", "si_sdr", "visqol", "stft_distance"):
        value = metrics.get(key)
        row[key] = value.get("mean") if isinstance(value, dict) else value
    return row


def one_run(job: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from soundry.data.loader import build_valid_items
    from soundry.eval.verdict import Criteria, codec_verdict, score_codec
    from soundry.models.codec_io import load_codec
    from soundry.train.recipes import load_recipe

    name = f"{job['dataset']}-s{job['seed']}-t{job['threads']}"
    work = args.out / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    recipe = str(ROOT / "recipes" / args.recipe)
    overrides = [f"seed={job['seed']}", *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    t0 = time.perf_counter()
    rc = sh([*SOUNDRY, "train", recipe, "--data", str(job["train"]), "--valid", str(job["valid"]),
             "--out", str(work / "run"), "--threads", str(job["threads"]), *overrides], log, env)
    wall = time.perf_counter() - t0
    run_summary_path = work / "run" / "summary.json"
    run_summary = json.loads(run_summary_path.read_text()) if run_summary_path.is_file() else {}
    row: dict[str, Any] = {"run": name, "dataset": job["dataset"], "seed": job["seed"],
                           "threads": job["threads"], "train_rc": rc,
                           "status": run_summary.get("status"), "wall_s": round(wall, 1),
                           "train_s": run_summary.get("train_seconds")}
    export = work / "model"
    if sh([*SOUNDRY, "export", str(work / "run"), str(export)], log) != 0:
        row.update(passed=False, reasons=["export failed"])
        return row
    index = json.loads((work / "run" / "checkpoints" / "index.json").read_text())
    row["exported"] = index.get("best") or index.get("last")
    trained = eval_summary(export, job["valid"], work / "eval", log, baseline="opus:6k")
    untrained_dir = untrained_export(recipe, args.overrides, job["seed"], work / "untrained")
    untrained = eval_summary(untrained_dir, job["valid"], work / "eval-untrained", log)
    row["eval"] = {"trained": trained, "untrained": untrained}

    # Output checks and codebook usage on the in-run validation clips.
    rec = load_recipe(work / "run" / "config.yaml")
    codec = load_codec(export)
    clips = build_valid_items(rec.data, hop=codec.hop_length)
    card = score_codec(codec, clips)
    ratio = 0.5 if job["dataset"] == "toy" else 0.7
    verdict = codec_verdict(trained.get("mel_distance"), untrained.get("mel_distance"),
                            card.usage, card.clip_problems,
                            None if row["status"] == "completed" else str(row["status"]),
                            Criteria(max_mel_ratio=ratio))
    reasons = list(verdict.reasons)
    vq_t, vq_u = trained.get("visqol"), untrained.get("visqol")
    if job["dataset"] == "speech" and _num(vq_t) and _num(vq_u) and not vq_t > vq_u:
        reasons.append(f"ViSQOL {vq_t:.2f} not above untrained {vq_u:.2f}")
    warm, end = warmup_and_end(work / "run", rec)
    row.update(valid_mel_warmup_end=warm, valid_mel_end=end)
    if not _num(end):
        reasons.append("in-run validation mel distance at the end of the run is not finite")
    elif _num(warm) and end > warm * 1.02:
        reasons.append(f"GAN phase undid the warm-up: in-run mel {end:.3f} at the end vs "
                       f"{warm:.3f} at the end of the warm-up")
    row.update(
        usage=[round(u, 3) for u in card.usage],
        peak_max=max((s["peak"] for s in card.clip_stats.values()), default=None),
        rms_min=min((s["rms"] for s in card.clip_stats.values()), default=None),
        passed=not reasons,
        reasons=reasons,
    )
    return row


def warmup_and_end(run_dir: Path, recipe: Any) -> tuple[float | None, float | None]:
    """In-run validation mel distance at the last validation of the reconstruction-only
    warm-up (first phase without adversarial loss) and at the last validation of the run."""
    first = recipe.schedule.phases[0]
    warm_end = first.steps if not first.adversarial and first.steps else None
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    valid = [(r["step"], r.get("valid/mel_distance")) for r in rows if r.get("kind") == "valid"]
    if not valid:
        return None, None
    warm = [v for s, v in valid if warm_end is not None and s <= warm_end]
    return (warm[-1] if warm else None), valid[-1][1]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("robustness"))
    p.add_argument("--datasets", default="toy,speech")
    p.add_argument("--seeds1", default="0,1,2,3,4", help="seeds run with 1 thread")
    p.add_argument("--seeds2", default="0,1", help="seeds run with 2 threads")
    p.add_argument("--recipe", default="codec/tiny.yaml")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (1-thread runs only)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    for ds in args.datasets.split(","):
        made = make_toy(args.out / "data-toy") if ds == "toy" else make_speech(
            args.out / "data-speech")
        if isinstance(made, str):
            print(json.dumps({"dataset": ds, "skipped": made}), flush=True)
            continue
        data[ds] = made
    jobs1, jobs2 = [], []
    for ds, (train, valid) in data.items():
        for s in [int(v) for v in args.seeds1.split(",") if v]:
            jobs1.append({"dataset": ds, "seed": s, "threads": 1, "train": train, "valid": valid})
        for s in [int(v) for v in args.seeds2.split(",") if v]:
            jobs2.append({"dataset": ds, "seed": s, "threads": 2, "train": train, "valid": valid})
    from soundry.eval.fmt import dumps_json

    def safe_run(job: dict[str, Any]) -> dict[str, Any]:
        try:
            return one_run(job, args)
        except Exception as exc:  # one broken run is a failed row, not a lost benchmark
            return {"run": f"{job['dataset']}-s{job['seed']}-t{job['threads']}",
                    "passed": False, "reasons": [f"{type(exc).__name__}: {exc}"]}

    rows = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(safe_run, jobs1):
            print(dumps_json(row), flush=True)
            rows.append(row)
    for job in jobs2:  # 2-thread runs one at a time: they use both cores
        row = safe_run(job)
        print(dumps_json(row), flush=True)
        rows.append(row)
    passed = sum(bool(r.get("passed")) for r in rows)
    print(json.dumps({"summary": True, "runs": len(rows), "passed": passed,
                      "failed": [r["run"] for r in rows if not r.get("passed")]}), flush=True)
    sys.exit(0 if rows and passed == len(rows) else 1)


if __name__ == "__main__":
    main()
