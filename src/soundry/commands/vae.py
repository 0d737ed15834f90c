"""`soundry sample | interpolate`: generating with a trained one-shot VAE."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("sample", help="draw new sounds from a VAE's prior",
                       description="Draw COUNT latents from the VAE's prior (its flow), decode "
                       "them and write sample_<i>.wav plus samples.json (latents and seeds).")
    p.add_argument("model", type=Path, help="exported VAE directory")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--temperature", type=float, default=None,
                   help="scale of the prior's base noise (lower: safer, less varied); "
                   "default: the model's sample_temperature")
    p.add_argument("--seed", type=int, default=0, help="sample i is drawn with seed + i")
    p.set_defaults(func=_sample)

    p = sub.add_parser("interpolate", help="morph one sound into another through a VAE",
                       description="Encode A and B (posterior means through the flow), walk "
                       "between them in latent space and decode each step; writes "
                       "step_<i>.wav and interpolation.json.")
    p.add_argument("model", type=Path, help="exported VAE directory")
    p.add_argument("a", type=Path, help="first sound")
    p.add_argument("b", type=Path, help="last sound")
    p.add_argument("--steps", type=int, default=9, help="points on the path, both ends counted")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--path", choices=["linear", "slerp"], default="linear")
    p.set_defaults(func=_interpolate)


def _sample(args: argparse.Namespace) -> int:
    from soundry.models.vae_io import load_vae, write_samples

    if args.temperature <= 0:
        from soundry.errors import SoundryError

        raise SoundryError("--temperature must be positive")
    listing = write_samples(load_vae(args.model), args.out, args.count, args.temperature,
                            args.seed)
    print(f"wrote {len(listing['samples'])} samples to {args.out}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from soundry.models.vae_io import load_vae, write_interpolation

    listing = write_interpolation(load_vae(args.model), args.a, args.b, args.out, args.steps,
                                  args.path)
    print(f"wrote {len(listing['steps'])} steps to {args.out}")
    return 0
