"""`soundry enhance`: run an audio-to-audio (transform) model over a file or a folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def register(sub: Any) -> None:
    p = sub.add_parser("enhance", help="restore audio with a transform model",
                       description="Run an exported transform model (denoiser, bandwidth "
                       "extender, ...) over IN and write OUT. IN may be a folder: OUT is then "
                       "a folder with the same relative names (as .wav). Long files run in "
                       "overlapping chunks, so memory does not grow with length.")
    p.add_argument("model", type=Path, help="exported transform directory")
    p.add_argument("input", type=Path, help="audio file or folder")
    p.add_argument("output", type=Path, help="output .wav/.flac file, or folder")
    p.add_argument("--chunk-seconds", type=float, default=10.0)
    p.add_argument("--overlap-seconds", type=float, default=0.25)
    p.set_defaults(func=_enhance)


def load_transform(path: Path | str) -> Any:
    """An exported transform model (eval mode); a clear error for another kind."""
    from soundry.errors import SoundryError
    from soundry.models.export import load_export
    from soundry.models.transform import TransformModel

    model = load_export(path)
    if not isinstance(model, TransformModel):
        raise SoundryError(f"{path} is not a transform export (enhance needs one)")
    return model


def enhance_file(model: Any, src: Path, dst: Path, chunk_seconds: float,
                 overlap_seconds: float) -> Path:
    """Read src at the model's rate and channels, enhance it, write dst (atomically)."""
    import torch

    from soundry.audio.io import write_audio
    from soundry.models.codec_io import read_for_codec
    from soundry.models.transform import enhance_chunked

    audio, _ = read_for_codec(model, src)
    out = enhance_chunked(model, torch.from_numpy(audio), chunk_seconds, overlap_seconds)
    return write_audio(dst, out.numpy(), model.sample_rate)


def _enhance(args: argparse.Namespace) -> int:
    from soundry.errors import DataError, SoundryError

    model = load_transform(args.model)
    if not args.input.exists():
        raise SoundryError(f"{args.input} does not exist")
    if args.input.is_file():
        enhance_file(model, args.input, args.output, args.chunk_seconds, args.overlap_seconds)
        print(f"wrote {args.output}")
        return 0
    files = sorted(p for p in args.input.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SoundryError(f"{args.input} holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
    done, skipped = 0, []
    for src in files:
        dst = (args.output / src.relative_to(args.input)).with_suffix(".wav")
        try:
            enhance_file(model, src, dst, args.chunk_seconds, args.overlap_seconds)
            done += 1
        except (DataError, RuntimeError, ValueError) as exc:  # one bad file is not the run
            log.warning("skipped %s: %s", src, exc)
            skipped.append(str(src))
    print(f"wrote {done} file(s) to {args.output}" +
          (f"; skipped {len(skipped)} unreadable: {', '.join(skipped[:5])}" if skipped else ""))
    return 0 if done else 2
