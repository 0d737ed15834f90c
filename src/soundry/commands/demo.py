"""`soundry demo`: toy data -> tiny codec trained (warm-up, then GAN) -> export -> report.

The whole path a user takes with their own data, on built-in defaults, in a few CPU
minutes. `--max-steps` gives a quick mode for tests.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from soundry.paths import find_recipe

DEFAULT_RECIPE = "codec/tiny.yaml"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="toy data, tiny codec, training, export and report in a few CPU minutes",
        description="Synthesise a toy dataset, train the tiny codec on it (reconstruction "
        "warm-up, then GAN), validate, export, reconstruct a few clips and write an HTML "
        "report. Prints where everything is.",
    )
    p.add_argument("--out", type=Path, default=Path("soundry-demo"), help="output folder")
    p.add_argument("--max-steps", type=int, default=None, help="training steps (quick mode)")
    p.add_argument("--clips", type=int, default=24, help="toy training clips per kind")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each toy clip")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="codec recipe to train")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from soundry.config import load_recipe

    console = Console()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # Validate the recipe (with the demo's data and any overrides) before making anything.
    train_dir, valid_dir = out / "data" / "train", out / "data" / "valid"
    overrides = [
        f"data.sources=[{{path: '{train_dir}'}}]",
        f"data.valid='{valid_dir}'",
        *([f"train.max_steps={args.max_steps}"] if args.max_steps else []),
        *args.overrides,
    ]
    recipe_path = find_recipe(args.recipe)
    recipe = load_recipe(recipe_path, overrides)
    sr = recipe.data.sample_rate

    console.rule("[bold]1/4 toy data")
    _make_toy_data(train_dir, valid_dir, args.clips, args.seconds, sr, console)

    console.rule("[bold]2/4 training")
    from soundry.train.engine import run_training

    run_dir = out / "run"
    summary = run_training(recipe, run_dir, command=["soundry", "demo", *args.overrides])

    console.rule("[bold]3/4 export and reconstruction")
    from soundry.models.codec_io import load_codec, reconstruct_file
    from soundry.train.export import export_run

    which = "best" if summary.get("best") else "last"
    export_dir = out / "model"
    export_run(run_dir, export_dir, checkpoint=which)
    codec = load_codec(export_dir)
    recon_dir = out / "reconstructions"
    examples = sorted(valid_dir.glob("*.wav"))[:4]
    for src in examples:
        reconstruct_file(codec, src, recon_dir / src.name)

    console.rule("[bold]4/4 report")
    from soundry.eval.report import build_report

    report = build_report([run_dir], out / "report.html")

    metrics = _last_valid_metrics(run_dir)
    console.print(f"\n[bold green]demo finished[/] in {time.time() - t0:.0f} s")
    if metrics:
        shown = ", ".join(
            f"{k.removeprefix('valid/')} {v:.3f}"
            for k, v in metrics.items()
            if k in ("valid/mel_distance", "valid/si_sdr", "valid/stft_distance")
        )
        console.print(f"validation ({which}): {shown}")
    console.print(f"training run     {run_dir}  (metrics.jsonl, tb/, valid/, checkpoints/)")
    console.print(f"exported codec   {export_dir}")
    console.print(f"reconstructions  {recon_dir}  (originals in {valid_dir})")
    console.print(f"report           {report}")
    return 0


def _make_toy_data(
    train_dir: Path, valid_dir: Path, clips: int, seconds: float, sr: int, console: Any
) -> None:
    from soundry.data.synth import synthesize

    kinds = ["tones", "drums", "speechlike", "music"]
    for i, kind in enumerate(kinds):
        synthesize(train_dir / kind, kind, clips, seconds, sr, seed=i)
        synthesize(valid_dir / kind, kind, 2, seconds, sr, seed=100 + i)
    # Flatten the validation examples so reconstructions have simple names.
    for f in sorted(valid_dir.glob("*/*.wav")):
        f.rename(valid_dir / f"{f.parent.name}_{f.name}")
    console.print(f"{len(kinds) * clips} training and {len(kinds) * 2} validation clips")


def _last_valid_metrics(run_dir: Path) -> dict[str, float]:
    import json

    last: dict[str, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("kind") == "valid":
                last = row
    return last
