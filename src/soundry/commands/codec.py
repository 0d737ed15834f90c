"""`soundry export | encode | decode | reconstruct`: using a trained codec or VAE.

encode / decode / reconstruct dispatch on the export's kind: a codec writes and reads codes
(`soundry.models.codec_io`), a VAE one latent vector per sound (`soundry.models.vae_io`);
codec-only options given to a VAE are refused.
"""

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
    p.add_argument("--codec", choices=["embed", "reference"], default="embed",
                   help="models over codec tokens (LM, TTS): embed copies the soundry codec "
                   "into OUT_DIR/codec so the export stands alone (default); reference "
                   "records its absolute path only (a transformers codec is always referenced)")
    p.set_defaults(func=_export)

    p = sub.add_parser("encode", help="encode audio files to codes or VAE latents (.npz)")
    p.add_argument("model", type=Path, help="exported codec or VAE directory")
    p.add_argument("input", type=Path, help="audio file or folder")
    p.add_argument("output", type=Path, help="OUT.npz (or a folder for a folder input)")
    p.add_argument("--levels", type=int, default=None,
                   help="codec: codebook levels to keep (bitrate)")
    p.add_argument("--chunk-seconds", type=float, default=None, help="codec: chunk length "
                   "(default 10)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="decode codes or VAE latents (.npz) to audio")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path, help="codes .npz file or folder")
    p.add_argument("output", type=Path, help="OUT.wav (or a folder)")
    p.add_argument("--chunk-seconds", type=float, default=None)
    _precision_arg(p)
    p.set_defaults(func=_decode)

    p = sub.add_parser("reconstruct", help="encode then decode audio (files or folders)")
    p.add_argument("model", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--levels", type=int, default=None)
    p.add_argument("--chunk-seconds", type=float, default=None)
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

    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, ema=args.ema,
                     codec=args.codec)
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


def _load(args: argparse.Namespace) -> tuple[str, Any]:
    """(kind, model) of the export; codec-only options given for a VAE are an error."""
    from soundry.errors import SoundryError
    from soundry.models.codec_io import load_codec
    from soundry.models.export import load_export
    from soundry.models.vae import OneShotVAE

    model = load_export(args.model)
    if not isinstance(model, OneShotVAE):
        return "codec", load_codec(args.model)
    given = [flag for flag, value in (("--levels", getattr(args, "levels", None)),
                                      ("--chunk-seconds", args.chunk_seconds))
             if value is not None]
    if getattr(args, "precision", "fp32") != "fp32":
        given.append("--precision")
    if given:
        raise SoundryError(f"{args.model} is a VAE (one latent per sound); "
                           f"{', '.join(given)}: codec-only option(s)")
    return "vae", model


def _chunk(args: argparse.Namespace) -> float:
    return 10.0 if args.chunk_seconds is None else float(args.chunk_seconds)


def _encode(args: argparse.Namespace) -> int:
    from soundry.models import codec_io, vae_io

    kind, model = _load(args)
    for src, dst in _pairs(args.input, args.output, AUDIO_EXTS, ".npz"):
        if kind == "vae":
            vae_io.encode_file(model, src, dst)
        else:
            codec_io.encode_file(model, src, dst, levels=args.levels, chunk_seconds=_chunk(args))
        print(f"{src} -> {dst}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from soundry.models import codec_io, vae_io

    kind, model = _load(args)
    if kind == "codec":
        model = model.optimize_for_inference(args.precision)
    for src, dst in _pairs(args.input, args.output, {".npz"}, ".wav"):
        if kind == "vae":
            vae_io.decode_file(model, src, dst)
        else:
            codec_io.decode_file(model, src, dst, chunk_seconds=_chunk(args))
        print(f"{src} -> {dst}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from soundry.models import codec_io, vae_io

    kind, model = _load(args)
    if kind == "codec":
        model = model.optimize_for_inference(args.precision)
    for src, dst in _pairs(args.input, args.output, AUDIO_EXTS, ".wav"):
        if kind == "vae":
            vae_io.reconstruct_file(model, src, dst)
        else:
            codec_io.reconstruct_file(model, src, dst, levels=args.levels,
                                      chunk_seconds=_chunk(args))
        print(f"{src} -> {dst}")
    return 0
