"""`soundry eval` (score a codec and classical baselines) and `soundry report` (HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="score a codec (and ffmpeg baselines) or a transform model on audio",
        description="Reconstruct every file (or a centred crop of it) through the codec and "
        "any classical baselines, score each against the original, and write per_file.csv "
        "and summary.json (mean, median and bootstrap 95% CI of the mean per metric) to "
        "--out. A transform model (denoiser, ...) runs over DATA (degraded inputs) and is "
        "scored against --target (clean files, matched by relative path), beside the "
        "unprocessed input. Core metrics: mel_distance, stft_distance, si_sdr, l1; with the "
        "[eval] extra also loudness_diff_lufs, pesq (wide-band), stoi, visqol (audio mode, "
        "48 kHz) and visqol_speech (speech mode, 16 kHz).",
    )
    p.add_argument(
        "model", type=Path, help="exported codec or transform folder (config.json + "
        "model.safetensors)"
    )
    p.add_argument("data", type=Path, help="audio folder, manifest, or a single audio file")
    p.add_argument("--target", type=Path, default=None,
                   help="transform models: the folder of clean targets of DATA")
    p.add_argument("--prompts", type=Path, default=None,
                   help="TTS models: an LJSpeech folder of the training voices' clips "
                        "(voice prompts and signatures); DATA holds the held-out sentences "
                        "rendered by those voices (id|text|text|speaker)")
    p.add_argument("--asr", type=Path, default=None,
                   help="TTS models: a local transformers CTC or Whisper directory; adds the "
                        "character error rate")
    p.add_argument("--speaker-model", type=Path, default=None,
                   help="TTS models: a local transformers x-vector directory; adds the "
                        "speaker similarity to the prompt")
    p.add_argument("--prompt-seconds", type=float, default=3.0,
                   help="TTS models: seconds of each voice's first clip used as its prompt")
    p.add_argument("--temperature", type=float, default=None,
                   help="TTS models: the sampled setting's temperature (default the "
                        "model's); a greedy (0) setting is always scored too")
    p.add_argument("--levels", type=int, default=None, help="codebook levels to use (default: all)")
    p.add_argument(
        "--baseline",
        default=None,
        metavar="CODEC:RATE[,...]",
        help="classical codecs through ffmpeg, e.g. opus:6k,mp3:32k (opus, mp3, vorbis, aac)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval/<model>)")
    p.add_argument(
        "--crop-seconds",
        type=float,
        default=None,
        metavar="S",
        help="score a centred S-second crop of each file instead of the whole file",
    )
    p.add_argument(
        "--metrics",
        default="auto",
        help="extra metrics: auto (all installed), none, or a list such as pesq,stoi",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N files")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.set_defaults(func=run_eval_command)

    r = sub.add_parser(
        "report",
        help="one self-contained HTML report of a run, or a comparison of several",
        description="Write one HTML file that works offline: for one run its config, "
        "provenance, curves, validation metrics, spectrograms and audio; for several runs a "
        "config diff, overlaid curves, metrics at matched steps and the same clips side by "
        "side. Media are embedded when they total at most 20 MB, else copied into "
        "<report>_media/ beside the HTML (--media to choose). An Evaluation section shows "
        "`soundry eval` summaries given with --eval and any RUN/eval/summary.json or "
        "RUN/eval/*/summary.json.",
    )
    r.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folder(s)")
    r.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write")
    r.add_argument(
        "--media",
        choices=["auto", "embed", "folder"],
        default="auto",
        help="embed media as data URIs, copy them into a folder, or decide by size (auto)",
    )
    r.add_argument(
        "--listen-steps", type=int, default=4, help="validation steps with audio players"
    )
    r.add_argument("--max-clips", type=int, default=6, help="validation clips per step")
    r.add_argument(
        "--eval",
        dest="evals",
        action="append",
        type=Path,
        default=None,
        metavar="DIR",
        help="a `soundry eval --out` folder (its summary.json) to show in the Evaluation "
        "section; repeatable",
    )
    r.set_defaults(func=run_report_command)


def run_eval_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from soundry.audio.codecs import parse_baselines
    from soundry.eval.runner import format_table, run_eval

    console = Console()
    if _export_kind(args.model) == "tts":
        return _eval_tts(args, console)
    baselines = parse_baselines(args.baseline)
    out = args.out or Path("eval") / (args.model.resolve().name or "model")
    result = run_eval(
        args.model,
        args.data,
        out=out,
        levels=args.levels,
        baselines=baselines,
        crop_seconds=args.crop_seconds,
        extra=args.metrics,
        seed=args.seed,
        resamples=args.bootstrap,
        limit=args.limit,
        target=args.target,
    )
    console.print(format_table(result.summary))
    for name, reason in result.summary["skipped_metrics"].items():
        console.print(f"[yellow]{escape(name)} not computed[/]: {escape(str(reason))}")
    for note in result.summary.get("notes", []):  # metrics that were not finite on some clips
        console.print(f"[yellow]note[/]: {escape(str(note))}", highlight=False)
    console.print(f"per-file scores  {result.out_dir / 'per_file.csv'}")
    console.print(f"summary          {result.out_dir / 'summary.json'}")
    return 0


def _export_kind(path: Path) -> str | None:
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _eval_tts(args: argparse.Namespace, console: Any) -> int:
    """`soundry eval TTS_EXPORT TEST_DIR --prompts TRAIN_DIR`: soundry.eval.tts_run."""
    import json

    from soundry.errors import SoundryError
    from soundry.eval.tts_run import LocalASR, SpeakerEmbedder, evaluate_tts
    from soundry.generate.tokenize import open_recorded_codec
    from soundry.models.export import load_export

    if args.prompts is None:
        raise SoundryError("a TTS export is scored on held-out sentences in its training "
                           "voices: give --prompts TRAIN_DIR (clips of those voices)")
    model = load_export(args.model)
    codec = open_recorded_codec(model.codec_record, base=args.model)
    out = args.out or Path("eval") / (args.model.resolve().name or "model")
    settings = {"greedy": {"temperature": 0.0}, "sampled": {"temperature": args.temperature}}
    result = evaluate_tts(model, codec, args.data, args.prompts, settings, out_dir=out,
                          asr=LocalASR(args.asr) if args.asr else None,
                          speaker=SpeakerEmbedder(args.speaker_model)
                          if args.speaker_model else None, seed=args.seed,
                          prompt_seconds=args.prompt_seconds)
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    for name in ("floor", "greedy", "sampled"):
        row = result[name]
        extra = "".join(f"  {k} {row[k]:.3f}" for k in ("cer", "cer_reference",
                                                        "speaker_similarity") if k in row)
        console.print(f"{name:8s} duration error (median) {row['duration_error_median']:.3f}"
                      f"  content {row['content_rate']:.0%}  voice {row['voice_rate']:.0%}"
                      f"  MCD {row['mcd_median']:.2f} (wrong sentence "
                      f"{row['mcd_wrong_median']:.2f}){extra}", highlight=False)
    console.print(f"summary  {out / 'summary.json'}")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from soundry.eval.report import write_report

    result = write_report(
        args.runs,
        args.out,
        media=args.media,
        listen_steps=args.listen_steps,
        max_clips=args.max_clips,
        evals=args.evals or [],
    )
    console = Console()
    what = "comparison of " + ", ".join(result.runs) if len(result.runs) > 1 else result.runs[0]
    console.print(f"report ({what}): {result.path}")
    if result.media_folder is not None:
        console.print(
            f"media ({result.media_bytes / 1e6:.1f} MB) in {result.media_folder} — keep it "
            "next to the HTML"
        )
    return 0
