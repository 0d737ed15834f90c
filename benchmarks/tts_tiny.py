"""Train the tiny TTS recipes on multi-speaker espeak-ng speech and score what they say.

    python benchmarks/tts_tiny.py --codec CODEC_EXPORT --out runs/tts-check \
        [--modes nar ar] [--seeds 0] [--minutes 27] [--threads 2] [--levels 4] [--parallel]
    python benchmarks/tts_tiny.py --codec CODEC_EXPORT --out runs/tts-check \
        --evaluate runs/tts-check/nar-s0-export ...     # score existing exports only

Steps: build the corpus (`benchmarks/tts_corpus.py`: fixed-rate voices, held-out sentences
rendered by every training voice), tokenize its training half with the codec (`--levels`
levels), train `recipes/tts/tiny-<mode>.yaml` for `--minutes` of training per run
(`train.budget_minutes`: validations excluded, so 27 keeps a run under 30 of wall clock), export,
then speak every held-out sentence in every training voice, each voice prompted by one of
its training clips (the first 3 s of its first clip), at the recipe's sampling settings and
greedy (temperature 0).

Scores (`soundry.eval.tts_eval`): median duration error; content (DTW-MCD to the reference
rendering of the right sentence below that to a wrong sentence in the same voice); voice
(output's mean cepstrum nearest the prompted voice's among the training voices; voices'
signatures are taken from the codec's resynthesis of their training clips, the domain the
outputs live in). The codec floor is the same scoring of the codec's own resynthesis of
each reference. The scoring is `soundry.eval.tts_run` (also `soundry eval TTS_EXPORT`).
Prints one JSON line per run, and writes OUT/summary.json and sample WAVs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOUNDRY = [sys.executable, "-m", "soundry"]


def sh(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        sys.exit(f"command failed ({code}), see {log}: {' '.join(cmd)}")


def health_errors(run: Path) -> list[str]:
    path = run / "health.jsonl"
    if not path.is_file():
        return []
    found = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [f"{f.get('monitor')}: {f.get('message')}" for f in found
            if f.get("severity") == "error"]


def evaluate(export: Path, corpus: Path, out: Path, settings: dict[str, dict[str, Any]],
             seed: int = 0) -> dict[str, Any]:
    """Score an export on every (held-out sentence, training voice) pair."""
    from soundry.eval.tts_run import evaluate_tts
    from soundry.generate.tokenize import open_recorded_codec
    from soundry.models.export import load_export

    model = load_export(export)
    codec = open_recorded_codec(model.codec_record, base=export)
    result = evaluate_tts(model, codec, corpus / "test", corpus / "train", settings,
                          out_dir=out, seed=seed)
    return {"export": str(export), **result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", type=Path, default=None,
                   help="codec export that tokenizes the speech (needed to train)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--corpus", type=Path, default=None, help="default OUT/corpus")
    p.add_argument("--modes", nargs="+", default=["nar", "ar"], choices=["nar", "ar"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--minutes", type=float, default=27.0,
                   help="training minutes per run (train.budget_minutes; validations excluded)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--parallel", action="store_true",
                   help="train all runs at once, splitting --threads between them")
    p.add_argument("--evaluate", nargs="*", type=Path, default=None,
                   help="only score these exports")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides passed to every training run "
                        "(e.g. model.ar_input_mask_span=4)")
    args = p.parse_args()

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    corpus = args.corpus or out / "corpus"
    if not (corpus / "train" / "metadata.csv").is_file():
        sh([sys.executable, str(ROOT / "benchmarks" / "tts_corpus.py"), str(corpus)], log)
    settings = {"sampled": {}, "greedy": {"temperature": 0.0}}
    summary: dict[str, Any] = {}

    exports = list(args.evaluate or [])
    if args.evaluate is None:
        if args.codec is None:
            p.error("--codec is needed to train (or give --evaluate EXPORT ...)")
        tokens = out / f"tokens-{args.levels}"
        if not (tokens / "index.json").is_file():
            sh(SOUNDRY + ["tokenize", str(args.codec), str(corpus / "train"), str(tokens),
                          "--levels", str(args.levels)], log)
        jobs = [(mode, seed) for mode in args.modes for seed in args.seeds]
        # --parallel: every run at once, the threads split between them (each still gets
        # --minutes of training, on a share of the machine)
        threads = max(1, args.threads // len(jobs)) if args.parallel else args.threads
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        running = []
        for mode, seed in jobs:
            run = out / f"{mode}-s{seed}"
            recipe = ROOT / "recipes" / "tts" / f"tiny-{mode}.yaml"
            cmd = SOUNDRY + ["train", str(recipe), "--data", str(tokens), "--out", str(run),
                             "--threads", str(threads), f"seed={seed}",
                             f"train.budget_minutes={args.minutes}",
                             f"model.levels={args.levels}", *args.set]
            if args.parallel:
                handle = open(out / f"{mode}-s{seed}.log", "w")  # noqa: SIM115
                running.append((mode, seed, subprocess.Popen(
                    cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)))
            else:
                sh(cmd, log, env)
                running.append((mode, seed, None))
        for mode, seed, proc in running:
            if proc is not None and proc.wait():
                sys.exit(f"training {mode}-s{seed} failed, see {out}/{mode}-s{seed}.log")
            run = out / f"{mode}-s{seed}"
            export = out / f"{mode}-s{seed}-export"
            sh(SOUNDRY + ["export", str(run), str(export)], log)
            summary[f"{mode}-s{seed}"] = {"threads": threads, "parallel": args.parallel,
                                          "health_errors": health_errors(run)}
            exports.append(export)
    for export in exports:
        name = export.name.removesuffix("-export")
        scores = evaluate(export, corpus, out / f"{name}-samples", settings)
        summary.setdefault(name, {}).update(scores)
        print(json.dumps({name: summary[name]}), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
