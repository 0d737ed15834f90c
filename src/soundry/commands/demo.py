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
    from rich.markup import escape

    from soundry.errors import SoundryError, TrainingStopped
    from soundry.train.recipes import load_recipe

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
    run_dir = out / "run"
    if (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists():
        raise SoundryError(
            f"{out} already holds a demo run ({run_dir}); give another --out or remove it"
        )

    console.rule("[bold]1/5 toy data")
    _make_toy_data(train_dir, valid_dir, args.clips, args.seconds, sr, console)

    console.rule("[bold]2/5 training")
    from soundry.train.engine import run_training

    diverged = None
    try:
        run_training(recipe, run_dir, command=["soundry", "demo", *args.overrides])
    except TrainingStopped as exc:  # e.g. non-finite losses: judge what was saved
        diverged = str(exc)
        console.print(f"[bold red]training stopped:[/] {escape(diverged)}")

    console.rule("[bold]3/5 export and reconstruction")
    from soundry.models.codec_io import load_codec, reconstruct_file
    from soundry.train.export import export_run

    export_dir = out / "model"
    try:
        exported = export_run(run_dir, export_dir, checkpoint="auto")
    except SoundryError as exc:
        console.print(
            f"[bold red]verdict: the model is BROKEN:[/] nothing to export ({escape(str(exc))})"
        )
        return 2
    console.print(f"exported the {exported['chosen']} checkpoint")
    codec = load_codec(export_dir)
    recon_dir = out / "reconstructions"
    examples = sorted(valid_dir.glob("*.wav"))[:4]
    for src in examples:
        reconstruct_file(codec, src, recon_dir / src.name)

    console.rule("[bold]4/5 verdict")
    verdict = _verdict(recipe, codec, run_dir, out, diverged, console)

    console.rule("[bold]5/5 report")
    from soundry.eval.report import build_report

    report = build_report([run_dir], out / "report.html")

    console.print(f"\n[bold]demo finished[/] in {time.time() - t0:.0f} s")
    console.print(f"training run     {run_dir}  (metrics.jsonl, tb/, valid/, checkpoints/)")
    console.print(f"exported codec   {export_dir}  ({exported['chosen']})")
    console.print(f"reconstructions  {recon_dir}  (originals in {valid_dir})")
    console.print(f"verdict          {out / 'verdict.json'}")
    console.print(f"report           {report}")
    from soundry.health import read_findings

    health = read_findings(run_dir)
    errors = sum(f.severity == "error" for f in health)
    console.print(f"training health  {errors} error(s), {len(health) - errors} warning(s)"
                  + (f"  (soundry doctor {run_dir})" if health else ""))
    style = "bold green" if verdict.learned else "bold red"
    console.print(f"[{style}]{escape(verdict.line())}[/]")
    if verdict.learned:
        return 0
    return 2 if verdict.broken else 3


def _verdict(
    recipe: Any, codec: Any, run_dir: Path, out: Path, diverged: str | None, console: Any
) -> Any:
    """Score the export, the untrained model and Opus on the validation clips; judge."""
    import json

    import torch

    from soundry.data.loader import build_valid_items
    from soundry.eval.fmt import clean_json, fmt_metric
    from soundry.eval.verdict import codec_verdict, score_codec
    from soundry.models.codec import build_codec

    clips = build_valid_items(recipe.data, hop=codec.hop_length)
    trained = score_codec(codec, clips)
    with torch.random.fork_rng(devices=[]):  # the task's initial weights: same seed
        torch.manual_seed(recipe.seed)
        untrained_model = build_codec(recipe.model)
    untrained = score_codec(untrained_model, clips)
    rows = {"trained": trained.row(), "untrained": untrained.row()}
    notes: list[str] = [f"{name}: {note}" for name, card in
                        (("trained", trained), ("untrained", untrained)) for note in card.notes]
    opus = _opus_row(clips, recipe.data.sample_rate, codec.bitrate_kbps(), notes)
    if opus is not None:
        name, card = opus
        rows[name] = card.row()
    verdict = codec_verdict(
        trained.mel_distance, untrained.mel_distance, trained.usage, trained.clip_problems,
        diverged,
    )
    console.print(
        f"{len(clips)} validation clips ({recipe.data.valid_seconds:g} s crops, loudness-"
        f"normalised as in training); codec at {codec.bitrate_kbps():.2f} kbps"
    )
    console.print(f"{'system':<14}{'mel distance':>14}{'SI-SDR dB':>12}{'code usage':>12}")
    for name, row in rows.items():
        usage = fmt_metric(row["usage_mean"] * 100 if row["usage_mean"] is not None else None,
                           ".0f")
        console.print(
            f"{name:<14}{fmt_metric(row['mel_distance'], '.3f'):>14}"
            f"{fmt_metric(row['si_sdr'], '.1f'):>12}{usage + ('%' if usage != 'n/a' else ''):>12}"
        )
    from rich.markup import escape

    for note in notes:
        console.print(f"note: {escape(note)}")
    record = {
        **verdict.to_dict(),
        "systems": rows,
        "clips": {name: {**trained.clip_stats[name], "problems": trained.clip_problems[name]}
                  for name in trained.clip_stats},
        "bitrate_kbps": codec.bitrate_kbps(),
        "run_dir": str(run_dir),
        "notes": notes,
    }
    (out / "verdict.json").write_text(json.dumps(clean_json(record), indent=1) + "\n")
    return verdict


def _opus_row(
    clips: list[Any], sample_rate: int, kbps: float, notes: list[str]
) -> tuple[str, Any] | None:
    """Opus at the bitrate nearest the codec's (6 kbps at the least) on the same clips."""
    from soundry.audio.codecs import BaselineSpec, FFmpegMissingError, roundtrip
    from soundry.eval.verdict import score_outputs

    spec = BaselineSpec("opus", max(6000, int(round(kbps)) * 1000))
    try:
        outputs = [roundtrip(clip, sample_rate, spec) for _, clip in clips]
    except FFmpegMissingError as exc:
        notes.append(f"no Opus baseline: {exc}")
        return None
    except Exception as exc:  # an ffmpeg without libopus, a failed encode: say so, go on
        notes.append(f"no Opus baseline: {exc}")
        return None
    return spec.name, score_outputs(clips, outputs, sample_rate)


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
