"""Frozen auxiliary networks (teachers): loaded from a local directory, never trained.

A task that distils from a teacher (WavLM features, a text LM, a trained codec) returns it
from `Task.auxiliary_networks()`. The engine then moves it to the training device, puts it
in eval mode with every parameter frozen, and records where it came from (path and a
content hash) in the run's provenance.json. It is not a training network: no optimizer,
no EMA, no health monitor sees it, and checkpoints do not hold its weights, so a resumed
run loads it again from its source (and says so if the files changed).

    teacher = load_auxiliary("/models/wavlm-base")        # transformers or soundry export
    feats = teacher(audio)                                  # eval mode, under no_grad

Nothing is downloaded: the directory must hold the model (transformers' `save_pretrained`
layout with config.json, or a soundry export with config.json + model.safetensors).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundry.errors import SoundryError

log = logging.getLogger("soundry.train")


class Auxiliary:
    """A frozen network, its source and the hash of its files. Calling it runs the network
    under `torch.no_grad()` (in eval mode, which `prepare` sets)."""

    def __init__(self, module: nn.Module, source: str, digest: str) -> None:
        self.module = module
        self.source = source
        self.digest = digest

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def prepare(self, device: torch.device) -> Auxiliary:
        """Move to `device`, eval mode, every parameter frozen; returns self."""
        self.module.to(device)
        self.module.eval()
        self.module.requires_grad_(False)
        return self

    def describe(self) -> dict[str, Any]:
        """What provenance.json records about it."""
        return {"source": self.source, "sha256": self.digest,
                "class": type(self.module).__name__,
                "parameters": sum(p.numel() for p in self.module.parameters())}


def content_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of every file under `path` (or the file)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_auxiliary(path: str | Path, kind: str = "auto") -> Auxiliary:
    """A frozen network from a local directory.

    kind: "soundry" (an export: config.json with "kind" + model.safetensors), "transformers"
    (`AutoModel.from_pretrained(path, local_files_only=True)`), or "auto" (by config.json).
    """
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise SoundryError(f"auxiliary network '{path}': no config.json (a local model "
                           "directory is needed; nothing is downloaded)")
    if kind == "auto":
        try:
            meta = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SoundryError(f"auxiliary network '{path}': unreadable config.json ({exc})"
                               ) from None
        kind = "transformers" if "model_type" in meta else "soundry"
    if kind == "soundry":
        from soundry.models.export import load_export

        module = load_export(path)
    elif kind == "transformers":
        try:
            from transformers import AutoModel
        except ImportError:
            raise SoundryError("transformers is not installed (pip install 'soundry[hf]')"
                               ) from None
        module = AutoModel.from_pretrained(str(path), local_files_only=True)
    else:
        raise SoundryError(f"auxiliary network kind '{kind}': use auto, soundry or transformers")
    if not isinstance(module, nn.Module):
        raise SoundryError(f"auxiliary network '{path}' is not a torch module")
    return Auxiliary(module, str(path.resolve()), content_hash(path))


def check_unchanged(auxiliary: dict[str, Auxiliary], recorded: dict[str, Any]) -> None:
    """Warn when a resumed run's teacher files differ from those the run started with."""
    for name, aux in auxiliary.items():
        before = recorded.get(name, {}).get("sha256")
        if before is not None and before != aux.digest:
            log.warning("auxiliary network '%s' (%s) changed since the run started "
                        "(sha256 %s... -> %s...)", name, aux.source, before[:12], aux.digest[:12])
