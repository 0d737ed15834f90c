"""Run directory -> export directory (config.json + model.safetensors).

Each task registers an exporter that turns its recipe and trained networks into a model
export; `export_run` finds the checkpoint (best, last or a step), reads the weights
(optionally the EMA copy) and writes the export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from soundry.errors import SoundryError
from soundry.train.recipes import load_recipe


def find_checkpoint(run_dir: Path, which: str = "last") -> Path:
    """The checkpoint directory for 'best', 'last', 'auto' or a step number.

    'auto' is the best checkpoint by the recipe's `train.best_metric` when the run recorded
    one, else the last.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    index_path = ckpt_root / "index.json"
    if not index_path.is_file():
        raise SoundryError(f"{run_dir} has no checkpoints (no {index_path})")
    index = json.loads(index_path.read_text())
    if which == "auto":
        which = "best" if index.get("best") else "last"
    if which in ("best", "last"):
        name = index.get(which)
        if not name:
            raise SoundryError(f"{run_dir} has no '{which}' checkpoint")
    elif which.isdigit():
        name = f"step_{int(which):08d}"
    else:
        raise SoundryError(
            f"--checkpoint must be auto, best, last or a step number, not '{which}'"
        )
    path = ckpt_root / name
    if not path.is_dir():
        kept = sorted(p.name for p in ckpt_root.glob("step_*") if p.is_dir())
        raise SoundryError(f"checkpoint '{name}' not found in {ckpt_root} (kept: {kept})")
    return path


def export_run(
    run_dir: Path | str, out_dir: Path | str, checkpoint: str = "auto", ema: bool = False,
    codec: str = "embed",
) -> dict[str, Any]:
    """Export a run's model; returns {'kind', 'checkpoint', 'out_dir', 'chosen'}.

    `chosen` says which checkpoint was taken and why (e.g. "best by valid/mel_distance =
    3.412 at step 300"), for the caller to print. codec: for a model over codec tokens
    (LM, TTS), 'embed' copies a soundry codec into the export (see
    `embed_recorded_codec`),
    'reference' records only its absolute path.
    """
    if codec not in ("embed", "reference"):
        raise SoundryError(f"codec must be 'embed' or 'reference', not '{codec}'")
    import soundry.train.tasks  # noqa: F401  (registers tasks and exporters)
    from soundry.models.export import embed_recorded_codec, save_export
    from soundry.train.registry import EXPORTERS

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise SoundryError(f"{run_dir} is not a run directory (no config.yaml)")
    recipe = load_recipe(config_path)
    ckpt = find_checkpoint(run_dir, checkpoint)

    def load_network(name: str) -> dict[str, torch.Tensor]:
        path = ckpt / (f"{name}.ema.safetensors" if ema else f"{name}.safetensors")
        if not path.is_file():
            hint = " (was EMA enabled for this run?)" if ema else ""
            raise SoundryError(f"{path} does not exist{hint}")
        return load_file(str(path))

    kind, config, state = EXPORTERS.get(recipe.task)(recipe, load_network)
    config = {**config, "source": {"run_dir": str(run_dir), "checkpoint": ckpt.name, "ema": ema}}
    if codec == "embed":
        config = embed_recorded_codec(config, Path(out_dir))
    save_export(Path(out_dir), kind, config, state)
    return {
        "kind": kind,
        "checkpoint": str(ckpt),
        "out_dir": str(out_dir),
        "chosen": describe_choice(run_dir, ckpt),
    }


def describe_choice(run_dir: Path, ckpt: Path) -> str:
    """'best by METRIC = V at step N' or 'last (step N)' for a checkpoint of a run."""
    index_path = Path(run_dir) / "checkpoints" / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    step = ckpt.name.removeprefix("step_").lstrip("0") or "0"
    if index.get("best") == ckpt.name:
        metric, value = index.get("best_metric"), index.get("best_value")
        shown = f"{value:.4g}" if isinstance(value, int | float) else "n/a"
        return f"best by {metric} = {shown} at step {step}"
    if index.get("last") == ckpt.name:
        return f"last (step {step})"
    return f"step {step}"
