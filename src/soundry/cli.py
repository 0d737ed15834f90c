"""The `soundry` command: one entry point, one subcommand per verb.

Each verb lives in `soundry.commands.<module>`, which defines `register(subparsers)`.
Command modules import heavy libraries (torch, ...) inside their handlers, so `--help`
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from soundry import __version__
from soundry.errors import SoundryError

# Order here is the order in `soundry --help`.
COMMAND_MODULES = ["demo", "data", "train", "profile", "doctor", "codec", "vae", "transform",
                   "eval", "lm", "tts", "semantic"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundry",
        description="Train, evaluate and run neural audio models.",
    )
    parser.add_argument("--version", action="version", version=f"soundry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"soundry.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Recipe overrides (key=value) may come after options; argparse alone rejects that.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except SoundryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
