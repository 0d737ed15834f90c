"""`soundry export | encode | decode | reconstruct`: using a trained codec."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("soundry.codec")

AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained network of a run as config.json + model.safetensors",
        description="Export a run's trained model (codec generator, LM, ...) to a directory "
        "that `soundry.load`, encode/decode/reconstruct and generate read.",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--checkpoint",
        default="auto",
        help="auto | best | last | STEP (default: auto = the best by the recipe's "
        "train.best_metric when the run recorded one, else the last)",
    )
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.set_defaults(func=_export)

    p = sub.add_parser("encode", help="encode audio files to codes (.npz)")
    p.add_argument("model", type=Path, help="exported codec directory")
    p.add_argument("input", type=Path, help="audio file or folder")
    p.add_argument("output", type=Path, help="OUT.npz (or a folder for a folder input)")
    p.add_argument("--levels", type=int, default=None, help="codebook levels to keep (bitrate)")
    p.add_argument("--chunk-seconds", type=float, default=10.0)
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="decode codes (.npz) to audio")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path, help="codes .npz file or folder")
    p.add_argument("output", type=Path, help="OUT.wav (or a folder)")
    p.add_argument("--chunk-seconds", type=float, default=10.0)
    _precision_arg(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("reconstruct", help="encode then decode audio (files or folders)")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--chunk-seconds", type=float, default=10.0)
    _precision_arg(p)
    p.set_defaults(func=_reconstruct)


def _precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 runs the decoder in bfloat16 (several times faster on CPUs with AMX / "
        "AVX512-BF16; codes unchanged, output within about 35 dB SNR of fp32)",
    )


def _export(args: argparse.Namespace) -> int:
    from soundry.train.export import export_run

    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, ema=args.ema)
    print(f"exported {out['kind']} from {out['checkpoint']} ({out['chosen']}) to {args.out_dir}")
    return 0


def _pairs(inp: Path, out: Path, in_exts: set[str], out_ext: str) -> list[tuple[Path, Path]]:
    """(input file, output file) pairs for a file or a folder (folder structure kept)."""
    from soundry.errors import SoundryError

    if inp.is_dir():
        files = sorted(p for p in inp.rglob("*") if p.suffix.lower() in in_exts)
        if not files:
            raise SoundryError(f"no input files ({', '.join(sorted(in_exts))}) under {inp}")
        return [(f, (out / f.relative_to(inp)).with_suffix(out_ext)) for f in files]
    if not inp.is_file():
        raise SoundryError(f"input '{inp}' does not exist")
    return [(inp, out)]


def _encode(args: argparse.Namespace) -> int:
    from soundry.models.codec_io import encode_file, load_codec

    codec = load_codec(args.model)
    for src, dst in _pairs(args.input, args.output, AUDIO_EXTS, ".npz"):
        encode_file(codec, src, dst, levels=args.levels, chunk_seconds=args.chunk_seconds)
        print(f"{src} -> {dst}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from soundry.models.codec_io import decode_file, load_codec

    codec = load_codec(args.model).optimize_for_inference(args.precision)
    for src, dst in _pairs(args.input, args.output, {".npz"}, ".wav"):
        decode_file(codec, src, dst, chunk_seconds=args.chunk_seconds)
        print(f"{src} -> {dst}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from soundry.models.codec_io import load_codec, reconstruct_file

    codec = load_codec(args.model).optimize_for_inference(args.precision)
    for src, dst in _pairs(args.input, args.output, AUDIO_EXTS, ".wav"):
        reconstruct_file(codec, src, dst, levels=args.levels, chunk_seconds=args.chunk_seconds)
        print(f"{src} -> {dst}")
    return 0
