"""`soundry profile RECIPE`: time a training step by component, FLOPs and fraction of peak."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "profile",
        help="time a recipe's training step by component (data, forward, backward, ...)",
        description="Train RECIPE for --warmup + --steps steps in a temporary directory "
        "(no validation, checkpoints or health checks in between) and report the mean time "
        "per step of each part (data, generator forward, discriminator, losses, backward "
        "and optimizer per network, EMA, logging, other), the FLOPs of one step (matmuls "
        "and convolutions, forward and backward) and the fraction of the machine's measured "
        "matmul and conv1d peaks it reaches: a table, then one JSON line.",
    )
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    p.add_argument("--data", action="append", metavar="PATH", help="as for `soundry train`")
    p.add_argument("--valid", metavar="PATH", help="as for `soundry train`")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads")
    p.add_argument("--phase", metavar="NAME",
                   help="the schedule phase whose step to time (default: the first; e.g. gan)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run_profile)


def run_profile(args: argparse.Namespace) -> int:
    from soundry.commands.train import prepare
    from soundry.errors import ConfigError
    from soundry.train.profile import format_profile, profile_json, profile_recipe

    if args.steps < 1 or args.warmup < 0:
        raise ConfigError("--steps must be at least 1 and --warmup at least 0")
    ns = argparse.Namespace(recipe=args.recipe, overrides=args.overrides, data=args.data,
                            valid=args.valid, out=None, max_steps=None, init_from=None,
                            resume=None, overfit=None, threads=args.threads)
    recipe, _ = prepare(ns)
    result = profile_recipe(recipe, steps=args.steps, warmup=args.warmup, phase=args.phase)
    if not args.json:
        print(format_profile(result))
    print(profile_json(result))
    return 0
