"""Quality per CPU-minute of the 16 kHz speech codec recipe: train on a time budget, export,
evaluate on held-out voices and sentences beside Opus. One JSON line a run.

    python benchmarks/speech_codec.py [--out DIR] [--data DIR] [--minutes 60] [--threads 2]
        [--jobs 1] [--seeds 0] [--variant NAME='k=v k=v' ...] [--recipe codec/speech16k-6k.yaml]

Data: `benchmarks/speech_corpus.py` (built into DATA when missing: ~40 minutes of espeak-ng
and flite speech; `dev/` for in-run validation and the exported checkpoint's choice, `test/`
held-out voices and sentences for the evaluation). Each run goes through the command line:
`soundry train RECIPE --data DATA/train --valid DATA/dev train.budget_minutes=M`,
`soundry export` (its default checkpoint: for this recipe the last one), then `soundry eval`
of the export on DATA/test,
whole files at their own level, with `--baseline opus:6k,opus:12k` once (the baselines do
not depend on the run). `--variant` names a set of recipe overrides (ablations); without
one, the recipe as it is. Printed per run: training steps and seconds, CPU seconds, the
bitrate, and the evaluation's means (mel and STFT distance, SI-SDR, PESQ, STOI, ViSQOL in
speech mode) with Opus's beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOUNDRY = [sys.executable, "-m", "soundry"]
METRICS = ("mel_distance", "stft_distance", "si_sdr", "pesq", "stoi", "visqol_speech",
           "visqol", "loudness_diff_lufs")


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def make_data(data: Path) -> None:
    if not (data / "test" / "metadata.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speech_corpus.py"),
                        str(data)], check=True)


def means(summary_path: Path) -> dict[str, dict[str, float | None]]:
    """{system name: {metric: mean}} of a `soundry eval` summary.json."""
    if not summary_path.is_file():
        return {}
    systems = json.loads(summary_path.read_text()).get("systems") or {}
    out: dict[str, dict[str, float | None]] = {}
    for name, system in systems.items():
        metrics = system.get("metrics", system) if isinstance(system, dict) else {}
        row = {}
        for key in METRICS:
            value = metrics.get(key)
            row[key] = value.get("mean") if isinstance(value, dict) else value
        out[name] = row
    return out


def one_run(name: str, overrides: list[str], seed: int, args: argparse.Namespace,
            baselines: bool) -> dict[str, Any]:
    work = args.out / f"{name}-s{seed}-t{args.threads}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = sh([*SOUNDRY, "train", str(ROOT / "recipes" / args.recipe),
             "--data", str(args.data / "train"), "--valid", str(args.data / "dev"),
             "--out", str(work / "run"), "--threads", str(args.threads), f"seed={seed}",
             f"train.budget_minutes={args.minutes}",
             f"train.valid_at_minutes={[m for m in args.points if m <= args.minutes]}",
             *overrides], log, env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary_path = work / "run" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    row: dict[str, Any] = {
        "run": work.name, "variant": name, "overrides": overrides, "seed": seed,
        "threads": args.threads, "train_rc": rc, "status": summary.get("status"),
        "steps": summary.get("steps"), "train_s": summary.get("train_seconds"),
        "train_cpu_s": summary.get("train_cpu_seconds"),
        "wall_s": round(time.perf_counter() - t0, 1),
        # CPU time of the whole command (validations and data workers included)
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
        "bitrate_kbps": (summary.get("valid") or {}).get("valid/bitrate_kbps"),
    }
    if rc != 0:
        return {**row, "error": log.read_text()[-600:]}
    if sh([*SOUNDRY, "export", str(work / "run"), str(work / "model")], log) != 0:
        return {**row, "error": "export failed"}
    row["exported"] = json.loads((work / "run" / "checkpoints" / "index.json").read_text())
    cmd = [*SOUNDRY, "eval", str(work / "model"), str(args.data / "test"), "--out",
           str(work / "eval"), "--bootstrap", "200"]
    if baselines and shutil.which("ffmpeg"):
        cmd += ["--baseline", "opus:6k,opus:12k"]
    if sh(cmd, log) != 0:
        return {**row, "error": "eval failed: " + log.read_text()[-600:]}
    systems = means(work / "eval" / "summary.json")
    row["eval"] = systems
    valid = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()
             if '"valid"' in x]
    row["curve"] = [(v.get("valid/train_minutes"), v.get("step"), v.get("valid/mel_distance"))
                    for v in valid if v.get("kind") == "valid"]
    if args.every_checkpoint:  # the test-set figures at each kept checkpoint (time points)
        minutes = {step: m for m, step, _ in row["curve"]}
        row["points"] = []
        for ckpt in sorted((work / "run" / "checkpoints").glob("step_*")):
            step = int(ckpt.name.split("_")[1])
            out = work / "points" / ckpt.name
            if sh([*SOUNDRY, "export", str(work / "run"), str(out / "model"), "--checkpoint",
                   str(step)], log) != 0:
                continue
            if sh([*SOUNDRY, "eval", str(out / "model"), str(args.data / "test"), "--out",
                   str(out / "eval"), "--bootstrap", "200"], log) != 0:
                row.setdefault("errors", []).append(f"eval of {ckpt.name} failed")
                continue
            model = means(out / "eval" / "summary.json").get("model", {})
            row["points"].append({"step": step, "train_minutes": minutes.get(step), **model})
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/speech-codec"))
    p.add_argument("--data", type=Path, default=Path("runs/speech-corpus"))
    p.add_argument("--recipe", default="codec/speech16k-6k.yaml")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--points", type=lambda s: [float(x) for x in s.split(",")],
                   default=[5.0, 15.0, 30.0, 60.0], help="validation points, minutes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--seeds", default="0")
    p.add_argument("--every-checkpoint", action="store_true",
                   help="also export and evaluate every kept checkpoint (the time points)")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME='k=v k=v': recipe overrides of one ablation, split like a shell line "
                        "(quote a value with spaces); repeatable")
    args = p.parse_args()
    make_data(args.data)
    variants = [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant] \
        or [("recipe", [])]
    jobs = [(n, o, int(s)) for n, o in variants for s in args.seeds.split(",")]
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_run, n, o, s, args, i == 0) for i, (n, o, s) in
                   enumerate(jobs)]
        for f in futures:
            row = f.result()
            failed += bool(row.get("error") or row.get("errors"))
            print(json.dumps(row), flush=True)
    if failed:
        sys.exit(f"{failed} of {len(jobs)} runs failed (see their log.txt)")


if __name__ == "__main__":
    main()
