"""Model exports: a directory with `config.json` + `model.safetensors`, loaded by kind.

`config.json` holds {"kind": ..., "soundry_version": ..., <the kind's own config>}; the
weights are a flat safetensors state dict. `load_export(dir)` reads `kind` and calls the
loader registered for it in `EXPORT_KINDS`. A kind's loader lives in (and is registered on
import of) `soundry.models.<kind>` or any module imported before loading; "codec" is
registered here.

Codec exports: config {"model": <CodecConfig values>, "sample_rate", "channels",
"hop_length", "frame_rate", "n_codebooks", "codebook_size", ["weight_norm_folded"]} (see
`codec_export_config`; only "model" is required to load). The weights may be weight-normed
(as trained) or folded; the loader builds the codec, matches the layout of the weights, and
returns it in eval mode with weight norm folded (bit-identical outputs).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from soundry import __version__
from soundry.errors import SoundryError
from soundry.registry import Registry

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# kind -> loader(config dict, state dict) -> model (eval mode)
Loader = Callable[[dict[str, Any], dict[str, torch.Tensor]], torch.nn.Module]
EXPORT_KINDS: Registry[Loader] = Registry("export kind")


def embed_recorded_codec(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Copy the soundry codec a token model's config records into `out_dir/codec` and
    record it by that relative path (readers resolve it against the export), so the
    export speaks or generates on any machine. Other configs, and codecs of other types
    (a `transformers` model directory, often hundreds of MB), are returned unchanged."""
    record = config.get("codec")
    if not isinstance(record, dict) or record.get("type") != "soundry":
        return config
    source = Path(str(record.get("path", "")))
    if not source.is_absolute() or not source.is_dir():
        return config
    target = out_dir / "codec"
    if target.resolve() == source.resolve():
        return config
    if target.exists():
        shutil.rmtree(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    return {**config, "codec": {**record, "path": "codec", "embedded": True,
                                "embedded_from": str(source)}}


def save_export(
    out_dir: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write `out_dir/config.json` and `out_dir/model.safetensors` atomically.

    Both files are written to a temporary sibling directory which then replaces `out_dir`,
    so a reader never sees new weights with an old config (or half a file). Returns out_dir.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise SoundryError(f"export target {out_dir} exists and is not a directory")
    meta = {"kind": kind, "soundry_version": __version__, **config}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "kind": kind})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
        if out_dir.exists():
            # Keep any other files the user put there; replace ours.
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                os.replace(tmp / name, out_dir / name)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state dict) of an export directory, with clear errors."""
    path = Path(path)
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not path.is_dir():
        raise SoundryError(f"model directory '{path}' does not exist")
    if not config_file.is_file() or not weights_file.is_file():
        raise SoundryError(
            f"'{path}' is not a soundry export (needs {CONFIG_NAME} and {WEIGHTS_NAME}; make "
            "one with `soundry export RUN_DIR OUT_DIR`)"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise SoundryError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "kind" not in config:
        raise SoundryError(f"{config_file} has no 'kind'")
    return config, load_file(str(weights_file))


def export_kind(path: str | Path) -> str | None:
    """The `kind` of an export directory's config.json (None when it has none to read; the
    loaders then report what is wrong)."""
    path = Path(path)
    config_file = path if path.name == CONFIG_NAME else path / CONFIG_NAME
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return str(config.get("kind")) if isinstance(config, dict) and "kind" in config else None


def load_export(path: str | Path) -> torch.nn.Module:
    """The model of an export directory, in eval mode, built by its kind's loader."""
    config, state = read_export(path)
    kind = str(config["kind"])
    if kind not in EXPORT_KINDS:
        try:
            importlib.import_module(f"soundry.models.{kind}")
        except ModuleNotFoundError as exc:
            if exc.name != f"soundry.models.{kind}":
                raise
    return EXPORT_KINDS.get(kind)(config, state)


# ----------------------------------------------------------------------------- codec


def codec_export_config(source: Any, folded: bool | None = None) -> dict[str, Any]:
    """The config.json body (without kind/version) of a codec export.

    `source` is a `Codec` or its `CodecConfig` (e.g. a recipe's `model:` section). `folded`
    records whether the saved weights are weight-norm folded (informative: the loader reads
    the layout from the weights); by default it is taken from a Codec source.
    """
    from soundry.config import to_dict
    from soundry.models.codec import Codec, CodecConfig
    from soundry.nn.conv import has_weight_norm

    if isinstance(source, Codec):
        cfg = source.config
        if folded is None:
            folded = not has_weight_norm(source)
    elif isinstance(source, CodecConfig):
        cfg = source
    else:
        raise TypeError(f"expected a Codec or CodecConfig, got {type(source).__name__}")
    q = cfg.quantizer
    # a continuous bottleneck (vae, none) has no codes: 0 codebooks of 0 codes
    codebook_size = {"rvq": getattr(q, "codebook_size", 0),
                     "fsq": math.prod(getattr(q, "levels", [0]))}.get(q.type, 0)
    out: dict[str, Any] = {
        "model": to_dict(cfg),
        "sample_rate": cfg.sample_rate,
        "channels": cfg.channels,
        "hop_length": cfg.hop_length,
        "frame_rate": cfg.sample_rate / cfg.hop_length,
        "n_codebooks": getattr(q, "n_codebooks", 0),
        "codebook_size": codebook_size,
    }
    if folded is not None:
        out["weight_norm_folded"] = bool(folded)
    return out


def export_codec(codec: Any, out_dir: str | Path, fold: bool = True) -> Path:
    """Export a codec module; `fold` stores weight-norm-folded weights (the module is kept)."""
    import copy

    model = copy.deepcopy(codec)
    if fold:
        model.remove_weight_norm()
    return save_export(out_dir, "codec", codec_export_config(model), model.state_dict())


@EXPORT_KINDS.register("codec")
def load_codec_export(config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the codec of `config["model"]`, load `state` (folded or not), fold, eval mode."""
    from soundry.config import validate
    from soundry.models.codec import CodecConfig, build_codec

    if "model" not in config:
        raise SoundryError("codec export config.json has no 'model' section")
    cfg = validate(CodecConfig, config["model"], source="export config.json: model")
    codec = build_codec(cfg)
    load_folded(codec, state, cfg.weight_norm)
    return codec.eval()


def load_folded(model: torch.nn.Module, state: dict[str, torch.Tensor],
                weight_norm: bool) -> torch.nn.Module:
    """Load an export's weights into a freshly built `model` whether they were saved
    weight-normed or folded (the layout is read from the keys), then fold weight norm.
    A clear error when the weights do not match the model's config."""
    from soundry.nn.conv import remove_weight_norm

    if weight_norm and not any(k.endswith(".weight_g") for k in state):
        remove_weight_norm(model)  # the weights were exported folded
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SoundryError(
            "the export's weights do not match its config: "
            + (f"missing {', '.join(missing[:4])} " if missing else "")
            + (f"unexpected {', '.join(unexpected[:4])}" if unexpected else "")
        )
    remove_weight_norm(model)
    return model
