"""The contract between a system (codec, VAE, token LM, ...) and the training engine.

A task builds its networks, optimizers and data and defines its training step, validation
and demo outputs. The engine owns everything else: device placement and precision,
gradient accumulation, clipping, grad-norm logging, the NaN guard, EMA, checkpoints,
resume, logs and progress.

A training step with several networks calls `updater.update(name, loss)` once per
optimizer, in the order the system needs (e.g. discriminator, then generator)::

    def train_step(self, batch, step, updater):
        loss_d = ...
        updater.update("discriminator", loss_d)
        with frozen(self.nets["discriminator"]):
            loss_g = ...
        updater.update("generator", loss_g)
        return {"loss/d": loss_d.detach(), "loss/g": loss_g.detach()}
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from soundry.config import Strict


@dataclass
class OptimizerSpec:
    """One optimizer of a task and what the engine needs to drive it.

    `networks` names the entries of `Task.networks()` whose parameters it updates (used for
    grad-norm logging, clipping and freezing); `clip` is the max global grad norm (None: no
    clipping, but the norm is still logged).
    """

    name: str
    networks: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: Any | None = None
    clip: float | None = None


class Updater(Protocol):
    """Handed to `Task.train_step` by the engine."""

    def update(self, name: str, loss: torch.Tensor) -> bool:
        """Backpropagate `loss` for optimizer `name` and step it at an accumulation boundary.

        A non-finite loss or gradient skips the update (counted by the engine's NaN guard).
        Returns True when the optimizer actually stepped.
        """
        ...


class TrainLoader(Protocol):
    """An endless iterator of batches whose position can be saved and restored exactly."""

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Validation:
    """What a task reports at a validation.

    metrics: scalar name -> value (e.g. 'mel_distance'); the engine logs them as 'valid/...'.
    audio: clip name -> float32 array [channels, time] at `sample_rate`. Names ending in
      '_ref' and '_out' form a reference/output pair (e.g. 'clip00_ref', 'clip00_out');
      other names (e.g. 'gen_t0.5_00') are standalone outputs such as LM generations.
    """

    metrics: dict[str, float]
    audio: dict[str, Any] = field(default_factory=dict)
    sample_rate: int = 0


@dataclass
class TaskContext:
    """Where and how a task runs; filled by the engine / CLI."""

    run_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    overfit: int | None = None  # train on N fixed items (sanity-check mode)


class Task(ABC):
    """Base class of every trainable system."""

    #: the task's recipe schema (a `Strict` subclass with `task`, `seed`, `data`, `train`, ...)
    recipe_class: type[Strict]

    def __init__(self, recipe: Any, ctx: TaskContext) -> None:
        self.recipe = recipe
        self.ctx = ctx

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """All trainable networks by name (built once; the engine moves them to the device)."""

    @abstractmethod
    def optimizers(self) -> list[OptimizerSpec]:
        """Optimizers in the order their updates happen within a step."""

    @abstractmethod
    def train_loader(self) -> TrainLoader:
        """Training batches; random choices seeded by (seed, epoch, index) only."""

    @abstractmethod
    def train_step(self, batch: Any, step: int, updater: Updater) -> dict[str, Any]:
        """One (micro-)step. Returns scalars to log (tensors are detached by the engine)."""

    def validate(self, step: int) -> Validation:
        """Metrics and audio on fixed validation items (networks are in eval mode)."""
        return Validation(metrics={})

    def ema_networks(self) -> list[str]:
        """Names of the networks to keep an EMA of (empty: none)."""
        return []

    def frozen_prefixes(self) -> list[str]:
        """Parameter-name prefixes ('generator.encoder') to freeze for fine-tuning."""
        return []


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` get no gradients inside the block (activations still do).

    Used in a generator step so the discriminator's weights receive no gradient; this also
    saves the work of computing them.
    """
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
