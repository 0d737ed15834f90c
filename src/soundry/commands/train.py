"""`soundry train`: train a recipe, or resume a run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Train the system a recipe describes. Everything the run writes (config.yaml, metrics.jsonl,
TensorBoard logs, validation audio, checkpoints, summary.json) goes to the run directory.

examples:
  soundry train recipes/toy.yaml --out runs/toy train.max_steps=200
  soundry train recipes/codec/tiny.yaml --data /audio/speech --valid /audio/valid
  soundry train recipes/lm/tiny.yaml --data runs/tokens-tiny   # token LM: sets tokens.path
  soundry train recipes/codec/tiny.yaml --init-from runs/pretrained train.freeze=[generator.encoder]
  soundry train --resume runs/toy               # continue exactly where it stopped
  soundry train --resume runs/toy train.max_steps=400   # ... and train longer
"""


class _IntermixedParser(argparse.ArgumentParser):
    """Accepts `key=value` overrides after options (plain argparse stops at the first option)."""

    _inner = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def register(subparsers: Any) -> None:
    parser_class = subparsers._parser_class
    subparsers._parser_class = _IntermixedParser
    try:
        p = subparsers.add_parser(
            "train", help="train a model from a recipe (or --resume a run)",
            description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    finally:
        subparsers._parser_class = parser_class
    p.add_argument("recipe", nargs="?", metavar="RECIPE", help="recipe YAML (omit with --resume)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted recipe overrides, e.g. train.max_steps=500 optim.generator.lr=1e-4")
    p.add_argument("--data", action="append", metavar="PATH",
                   help="training data: audio folder or manifest (repeat for several; sets "
                        "data.sources), or for a token LM the token directory made by "
                        "`soundry tokenize` (sets tokens.path)")
    p.add_argument("--valid", metavar="PATH",
                   help="validation audio (sets data.valid; a token LM validates on items "
                        "held out of its token directory, see tokens.valid_count)")
    p.add_argument("--out", metavar="RUN_DIR",
                   help="run directory (default: runs/<recipe name>-<date>-<time>)")
    p.add_argument("--max-steps", type=int, metavar="N", help="sets train.max_steps")
    p.add_argument("--init-from", metavar="PATH",
                   help="export, checkpoint or run directory to take matching weights from")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint")
    p.add_argument("--overfit", type=int, metavar="N",
                   help="train on N fixed items (a sanity check: the loss should approach 0)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="intra-op CPU threads of torch (sets train.threads; default: torch's)")
    p.set_defaults(func=handle)


def _data_sugar(data: list[str] | None, valid: str | None,
                recipe_class: Any = None) -> list[str]:
    """--data / --valid as overrides: the task's recipe class maps them when it defines
    `data_flag_overrides` (the token LM: tokens.path); otherwise data.sources/data.valid."""
    mapper = getattr(recipe_class, "data_flag_overrides", None)
    if mapper is not None:
        return list(mapper(list(data or []), valid))
    out = []
    if data:
        out.append("data.sources=" + json.dumps([{"path": p} for p in data]))
    if valid is not None:
        out.append("data.valid=" + json.dumps(valid))
    return out


def _sugar(args: argparse.Namespace, recipe_class: Any = None) -> list[str]:
    """The flags as dotted overrides (values as JSON, which is YAML)."""
    out = _data_sugar(args.data, args.valid, recipe_class)
    if args.max_steps is not None:
        out.append(f"train.max_steps={args.max_steps}")
    if args.init_from is not None:
        out.append("train.init_from=" + json.dumps(args.init_from))
    if args.overfit is not None:
        out.append(f"train.overfit={args.overfit}")
    if getattr(args, "threads", None) is not None:
        out.append(f"train.threads={args.threads}")
    return out


def _recipe_class(raw: dict[str, Any]) -> Any:
    """The recipe class of the task `raw` names (None when it names none it knows; the
    validation of the recipe reports that)."""
    import soundry.train.tasks  # noqa: F401  (registers the task recipe classes)
    from soundry.train.registry import TASK_RECIPES

    task = raw.get("task")
    if task is None or str(task) not in TASK_RECIPES.names():
        return None
    return TASK_RECIPES.get(str(task))


def prepare(args: argparse.Namespace) -> tuple[Any, Path]:
    """Validate everything the command line says; returns (recipe, run_dir). No side effects."""
    from soundry.config import apply_overrides, read_yaml
    from soundry.errors import ConfigError
    from soundry.train.recipes import recipe_from_dict

    overrides = list(args.overrides)
    recipe_path = args.recipe
    if recipe_path and "=" in recipe_path and not Path(recipe_path).exists():
        overrides.insert(0, recipe_path)  # `--resume RUN key=value`: no recipe given
        recipe_path = None
    if args.resume:
        if recipe_path:
            raise ConfigError("give either a RECIPE or --resume RUN_DIR, not both (a resumed run "
                              "reads RUN_DIR/config.yaml; change it with key=value overrides)")
        run_dir = Path(args.resume)
        if args.out and Path(args.out).resolve() != run_dir.resolve():
            raise ConfigError("--out and --resume name different directories")
        source = run_dir / "config.yaml"
        if not source.is_file():
            raise ConfigError(f"--resume: '{run_dir}' has no config.yaml; is it a run directory?")
    else:
        if not recipe_path:
            raise ConfigError("missing RECIPE (a recipe YAML such as recipes/toy.yaml), or use "
                              "--resume RUN_DIR")
        source = Path(recipe_path)
        run_dir = Path(args.out) if args.out else None  # type: ignore[assignment]
    base = read_yaml(source)
    # the flags come first, so explicit key=value overrides win over them
    overrides = _sugar(args, _recipe_class(apply_overrides(base, overrides))) + overrides
    raw = apply_overrides(base, overrides)
    recipe = recipe_from_dict(raw, source=str(source), overrides=overrides)
    if run_dir is None:
        name = recipe.name or source.stem
        run_dir = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return recipe, run_dir


def handle(args: argparse.Namespace) -> int:
    recipe, run_dir = prepare(args)
    from soundry.train.engine import run_training

    run_training(recipe, run_dir, resume=bool(args.resume), command=["soundry", *sys.argv[1:]])
    return 0
