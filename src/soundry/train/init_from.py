"""Start a run from existing weights (`--init-from PATH`) and freeze parts of it.

PATH may be:
  - an export directory (config.json + model.safetensors),
  - a checkpoint directory (RUN/checkpoints/step_XXXXXXXX: <net>.safetensors files),
  - a run directory (its newest complete checkpoint),
  - a single .safetensors file.

Tensors are matched by name: '<network>.<state_dict key>'. A checkpoint names its networks
by file; an export or single file has bare keys, which are given to the network whose
state_dict shares the most names with them (or used as is when they already start with a
network name). Matching names with different shapes are skipped and reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundry.errors import ConfigError, SoundryError
from soundry.registry import did_you_mean
from soundry.train.checkpoint import STATE, CheckpointManager, load_tensors

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What `init_from` did; names are '<network>.<key>'."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "missing": self.missing,
                "unexpected": self.unexpected, "shape_mismatched": self.mismatched}

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            return ", ".join(names[:6]) + (f", ... (+{len(names) - 6})" if len(names) > 6 else "")

        lines = [f"init from {self.source}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing (kept their initial values) {len(self.missing)}: "
                         f"{few(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored) {len(self.unexpected)}: {few(self.unexpected)}")
        if self.mismatched:
            shown = [f"{m['name']} {m['source_shape']}->{m['target_shape']}"
                     for m in self.mismatched]
            lines.append(f"  shape mismatch (skipped) {len(self.mismatched)}: {few(shown)}")
        return "\n".join(lines)


def read_source(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """('checkpoint' | 'flat', tensors) from an export, checkpoint, run dir or file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return "flat", load_tensors(path)
    if not path.is_dir():
        raise SoundryError(f"--init-from: '{path}' is neither a directory nor a .safetensors file")
    if (path / "model.safetensors").is_file():
        return "flat", load_tensors(path / "model.safetensors")
    if (path / STATE).is_file():
        return "checkpoint", _checkpoint_tensors(path)
    if (path / "checkpoints").is_dir():
        latest = CheckpointManager(path, keep_last=1).latest()
        if latest is None:
            raise SoundryError(f"--init-from: run directory '{path}' has no complete checkpoint")
        return "checkpoint", _checkpoint_tensors(latest)
    raise SoundryError(
        f"--init-from: '{path}' is not an export (config.json + model.safetensors), a "
        "checkpoint directory (state.json) or a run directory (checkpoints/)"
    )


def _checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        if file.name.endswith(".ema.safetensors"):
            continue
        net = file.name[: -len(".safetensors")]
        out.update({f"{net}.{k}": v for k, v in load_tensors(file).items()})
    return out


def _assign_flat(tensors: dict[str, torch.Tensor], targets: dict[str, dict[str, torch.Tensor]]
                 ) -> dict[str, torch.Tensor]:
    """Give bare export keys a network prefix."""
    if any(k.split(".", 1)[0] in targets for k in tensors):
        return tensors
    overlap = {net: len(set(tensors) & set(sd)) for net, sd in targets.items()}
    best = max(overlap, key=lambda n: overlap[n])
    return {f"{best}.{k}": v for k, v in tensors.items()}


@torch.no_grad()
def init_from(path: str | Path, networks: dict[str, nn.Module]) -> InitReport:
    """Copy every tensor of `path` whose name and shape match into `networks`."""
    kind, tensors = read_source(path)
    targets = {name: net.state_dict(keep_vars=True) for name, net in networks.items()}
    if kind == "flat":
        tensors = _assign_flat(tensors, targets)
    report = InitReport(source=str(path))
    flat_targets = {f"{net}.{k}": v for net, sd in targets.items() for k, v in sd.items()}
    for name, target in flat_targets.items():
        source = tensors.get(name)
        if source is None:
            report.missing.append(name)
        elif tuple(source.shape) != tuple(target.shape):
            report.mismatched.append({"name": name, "source_shape": list(source.shape),
                                      "target_shape": list(target.shape)})
        else:
            target.copy_(source.to(device=target.device, dtype=target.dtype))
            report.loaded.append(name)
    report.unexpected = sorted(set(tensors) - set(flat_targets))
    _mark_loaded_codebooks(networks, report.loaded)
    if not report.loaded:
        raise SoundryError(
            f"--init-from {path}: no tensor matches the networks ({', '.join(networks)}) by "
            f"name and shape; e.g. it has {', '.join(list(tensors)[:3])}"
        )
    log.debug(report.summary())
    return report


def _mark_loaded_codebooks(networks: dict[str, nn.Module], loaded: list[str]) -> None:
    """A quantizer whose codebooks came from PATH skips its data-dependent initialisation."""
    for net_name, net in networks.items():
        for mod_name, module in net.named_modules():
            mark = getattr(module, "mark_initialized", None)
            prefix = f"{net_name}.{mod_name}." if mod_name else f"{net_name}."
            if mark is not None and any(n.startswith(prefix) and "codebook" in n
                                        for n in loaded):
                mark()


def freeze(networks: dict[str, nn.Module], prefixes: list[str]) -> list[str]:
    """Set requires_grad=False on parameters named '<network>.<path>' under any prefix.

    A prefix matches a name equal to it or starting with it plus '.'. A prefix matching no
    parameter is a ConfigError (a typo would otherwise train what was meant to be frozen).
    Returns the frozen names.
    """
    params = {f"{net}.{k}": p for net, module in networks.items()
              for k, p in module.named_parameters()}
    frozen = []
    for prefix in prefixes:
        prefix = prefix.rstrip(".")
        hits = [n for n in params if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            modules = [f"{net}.{k}" if k else net for net, module in networks.items()
                       for k, _ in module.named_modules()]
            raise ConfigError(
                f"train.freeze: '{prefix}' matches no parameter{did_you_mean(prefix, modules)}; "
                f"names look like '<network>.<submodule>', networks: {', '.join(networks)}"
            )
        for name in hits:
            params[name].requires_grad_(False)
            frozen.append(name)
    return sorted(set(frozen))


def write_report(report: InitReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_dict(), indent=1))
