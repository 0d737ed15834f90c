"""Does distillation put the teacher's content into level 0? A short CPU run of
`recipes/codec/semantic-tiny.yaml` with a tiny random teacher, scored on held-out voices.
One JSON line a run, then a summary line.

    python benchmarks/semantic_codec.py [--out DIR] [--data DIR] [--seeds 0 1] [--threads 2]
        [--steps 1500] [--plain] [--variant NAME='k=v ...']

Data: `benchmarks/speech_corpus.py` (built into DATA when missing). The teacher is
`soundry tiny-teacher w2v-bert` (random weights; see `soundry.models.tiny_teachers` for why
this one and not a random WavLM). Its features over DATA/train and DATA/test are stored
once with `soundry teacher-features` (timed). Each run trains on DATA/train and validates on
DATA/test (unseen voices and sentences) from step 0 (`train.valid_at_start`), so the
distillation cosine's start, the best constant predictor's score on the same clips
(`cosine_const`) and the reconstruction at every validation are in metrics.jsonl.

Printed per run: the in-run validation curve (distillation cosine against on-line or stored
teacher features of 1 s clips), the constant predictor's, and `held_out_start/end`: the
cosine of the untrained and the final networks on the whole held-out files against their
stored features (what training aimed at), beside the best constant's; also the mel distance (all
levels and level 0 alone) at each validation, and the number of error-level health
findings. With `--plain`, a plain codec (`recipes/codec/tiny.yaml`, same steps) is trained
too and `soundry probe` compares the linear character probe on both codecs' level 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOUNDRY = [sys.executable, "-m", "soundry"]


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode


def valid_rows(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "valid"]


def health_errors(run: Path) -> list[str]:
    path = run / "health.jsonl"
    if not path.is_file():
        return []
    found = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [f"{f.get('monitor')}: {f.get('message')}" for f in found
            if f.get("severity") == "error"]


def held_out_scores(run: Path, features: Path, test: Path, step: int | None = None
                    ) -> dict[str, float]:
    """Distillation cosine of a run's checkpoint (or of its untrained networks, `step=0`) on
    the whole held-out files, against their stored teacher features (the kind of target
    training aimed at), beside the best constant predictor's score on the same frames."""
    import torch
    from safetensors.torch import load_file

    from soundry.audio.io import read_audio
    from soundry.data.scan import scan
    from soundry.losses.distill import best_constant_cosine, frame_cosine
    from soundry.train.recipes import load_recipe
    from soundry.train.task import TaskContext
    from soundry.train.tasks.semantic_codec import SemanticCodecTask

    recipe = load_recipe(run / "config.yaml", [f"teacher_features={features}"])
    task = SemanticCodecTask(recipe, TaskContext())
    if step != 0:
        ckpts = sorted((run / "checkpoints").glob("step_*"))
        ckpt = ckpts[-1] if step is None else run / "checkpoints" / f"step_{step:08d}"
        for net in ("generator", "heads"):
            getattr(task, net).load_state_dict(load_file(str(ckpt / f"{net}.safetensors")))
    task.generator.eval()
    store = task._stores["ssl"]
    cos, targets = [], []
    with torch.no_grad():
        for item in scan(test).items:
            audio, _ = read_audio(item.path, sample_rate=recipe.data.sample_rate, channels=1)
            out = task.generator(torch.from_numpy(audio)[None])
            target = store.full(item.path)[None]
            pred = task.predictions(out.info.level_outputs)["ssl"][..., : target.shape[-1]]
            cos.append(frame_cosine(pred, target)[0])
            targets.append(target)
    return {"cosine": float(torch.cat(cos).mean()),
            "cosine_const": float(best_constant_cosine(torch.cat(targets, dim=-1)))}


def one_run(name: str, overrides: list[str], seed: int, args: argparse.Namespace,
            features: Path, teacher: Path) -> dict[str, Any]:
    work = args.out / f"{name}-s{seed}-t{args.threads}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    rc = sh([*SOUNDRY, "train", str(ROOT / "recipes/codec/semantic-tiny.yaml"),
             "--data", str(args.data / "train"), "--valid", str(args.data / "test"),
             "--out", str(work / "run"), "--threads", str(args.threads), f"seed={seed}",
             f"teachers.ssl.path={teacher}", f"teacher_features={features}",
             f"train.max_steps={args.steps}", "train.valid_at_start=true",
             *overrides], log, env)
    row: dict[str, Any] = {"run": work.name, "variant": name, "seed": seed,
                           "threads": args.threads, "train_rc": rc,
                           "wall_s": round(time.perf_counter() - t0, 1)}
    if rc != 0:
        return {**row, "error": log.read_text()[-600:]}
    valid = valid_rows(work / "run")
    key = "valid/distill/ssl/cosine"
    row["curve"] = [{"step": v["step"], "cosine": round(v[key], 4),
                     "mel": round(v["valid/mel_distance"], 3),
                     "mel_level0": round(v["valid/mel_distance@1"], 3)} for v in valid]
    row["cosine_start"] = valid[0][key]
    row["cosine_end"] = valid[-1][key]
    row["cosine_const"] = valid[-1]["valid/distill/ssl/cosine_const"]
    row["margin_over_const"] = row["cosine_end"] - row["cosine_const"]
    row["mel_start"], row["mel_end"] = valid[0]["valid/mel_distance"], valid[-1][
        "valid/mel_distance"]
    row["health_errors"] = health_errors(work / "run")
    row["held_out_start"] = held_out_scores(work / "run", features, args.data / "test", 0)
    row["held_out_end"] = held_out_scores(work / "run", features, args.data / "test")
    if sh([*SOUNDRY, "export", str(work / "run"), str(work / "model")], log) == 0:
        row["model"] = str(work / "model")
    return row


def plain_run(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.out / f"plain-s{seed}-t{args.threads}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = work / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rc = sh([*SOUNDRY, "train", str(ROOT / "recipes/codec/tiny.yaml"),
             "--data", str(args.data / "train"), "--valid", str(args.data / "test"),
             "--out", str(work / "run"), "--threads", str(args.threads), f"seed={seed}",
             f"train.max_steps={args.steps}", "train.best_metric=null"], log, env)
    if rc != 0 or sh([*SOUNDRY, "export", str(work / "run"), str(work / "model")], log):
        return {"run": work.name, "error": log.read_text()[-600:]}
    return {"run": work.name, "model": str(work / "model"),
            "mel_end": valid_rows(work / "run")[-1]["valid/mel_distance"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/semantic-codec"))
    p.add_argument("--data", type=Path, default=Path("runs/speech-corpus"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--plain", action="store_true", help="also train a plain codec and probe")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME='key=value key=value' recipe overrides (repeatable)")
    p.add_argument("--rescore", type=Path, nargs="+", default=None,
                   help="only score these finished run directories on DATA/test (features "
                   "from OUT/features)")
    args = p.parse_args()
    if args.rescore:
        for run in args.rescore:
            print(json.dumps({"run": str(run), "start": held_out_scores(
                run, args.out / "features", args.data / "test", 0), "end": held_out_scores(
                run, args.out / "features", args.data / "test")}), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.data / "test" / "metadata.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speech_corpus.py"),
                        str(args.data)], check=True)
    log = args.out / "setup.txt"
    teacher = args.out / "teachers" / "w2v-bert-tiny"
    if not (teacher / "config.json").is_file():
        sh([*SOUNDRY, "tiny-teacher", "w2v-bert", str(teacher)], log)
    features = args.out / "features"
    t0 = time.perf_counter()
    rc = sh([*SOUNDRY, "teacher-features", str(ROOT / "recipes/codec/semantic-tiny.yaml"),
             str(args.data / "train"), str(args.data / "test"), str(features),
             f"teachers.ssl.path={teacher}"], log)
    if rc != 0:
        sys.exit(f"teacher-features failed: see {log}")
    print(json.dumps({"teacher_features_s": round(time.perf_counter() - t0, 1)}), flush=True)
    variants = [("recipe", [])] + [
        (v.split("=", 1)[0], v.split("=", 1)[1].split()) for v in args.variant]
    rows = []
    for name, overrides in variants:
        for seed in args.seeds:
            row = one_run(name, overrides, seed, args, features, teacher)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.plain:
        for seed in args.seeds:
            plain = plain_run(seed, args)
            print(json.dumps(plain), flush=True)
            sem = next((r for r in rows if r["seed"] == seed and r.get("model")), None)
            if sem is None or "model" not in plain:
                continue
            out = args.out / f"probe-s{seed}.json"
            if sh([*SOUNDRY, "probe", sem["model"], str(args.data / "test"), "--against",
                   plain["model"], "--fit", str(args.data / "train"), "--out", str(out)],
                  log) == 0:
                print(json.dumps({"probe": json.loads(out.read_text()), "seed": seed}),
                      flush=True)
    ok = [r for r in rows if "cosine_end" in r]
    print(json.dumps({"summary": {
        "runs": len(rows), "ok": len(ok),
        "margin_over_const": [round(r["margin_over_const"], 4) for r in ok],
        "rise_over_start": [round(r["cosine_end"] - r["cosine_start"], 4) for r in ok],
        "mel_improved": [r["mel_end"] < r["mel_start"] for r in ok],
        "health_errors": sum(len(r["health_errors"]) for r in ok)}}), flush=True)


if __name__ == "__main__":
    main()
