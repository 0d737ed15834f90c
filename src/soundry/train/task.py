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
from collections.abc import Callable, Iterator
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

        `loss` is the scalar loss of this micro-batch; the engine divides it by the number of
        accumulated micro-batches. The optimizer's gradients are zeroed before its first
        backward of a step, so gradients a previous optimizer's loss left on these parameters
        are dropped (still: detach generator outputs in a discriminator loss, and use
        `frozen(discriminator)` in a generator loss, so no work is wasted on them).
        At the boundary the engine all-reduces gradients across processes, computes the
        optimizer's global grad norm (logged as grad_norm/<name>), clips it to
        `OptimizerSpec.clip`, then steps the optimizer and its scheduler. A non-finite loss
        or gradient skips the update (counted by the engine's NaN guard).
        Returns True when the optimizer actually stepped.
        """
        ...


class TrainLoader(Protocol):
    """An endless iterator of batches whose position can be saved and restored exactly.

    `state_dict()` describes the position after the last batch handed out (not after
    batches prefetched by workers) and must be JSON-serialisable (it goes into the
    checkpoint's rank<r>.json). After `load_state_dict(state)`, `iter(loader)` yields the
    batch that would have come next. The engine calls `iter()` once, after any restore.

    Iterating must not draw from the global random generators (python, numpy, torch): the
    engine restores them on resume, and a draw made only by the resumed run (for instance
    `torch.utils.data.DataLoader` drawing its workers' base seed when no `generator=` is
    given) would shift the training randomness (dropout, noise) after a resume.
    """

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
    """Where and how a task runs; filled by the engine before it calls `Task.networks()`.

    rank / world_size: this process among the data-parallel processes (shard data by them);
    seed: the recipe's seed; max_steps: the run length (for schedules).
    """

    run_dir: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    overfit: int | None = None  # train on N fixed items (sanity-check mode)
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    max_steps: int | None = None
    # the fraction of the run's training budget spent, 0..1, as decided at the end of the
    # previous step (the main process's time on every process; TrainClock.decide); None:
    # the run has no train.budget_minutes. Read by time-defined schedule phases.
    progress: Callable[[], float] | None = None


class Task(ABC):
    """Base class of every trainable system.

    The engine fills `ctx`, then calls `networks()` (moving them to the device), loads
    `--init-from` weights, freezes `frozen_prefixes()`, and calls `optimizers()` and
    `train_loader()`, each once. Then per step: `grad_accum` times `train_step` (under the
    run's autocast), and every `valid_every` steps `validate`.
    """

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
        """Metrics and audio on fixed validation items.

        The engine calls it on the main process with every network in eval mode, the EMA
        weights swapped in for networks that have an EMA, under `torch.no_grad()` and the
        run's autocast, and with the random generators seeded from (seed, step) and
        restored afterwards, so validation never perturbs training randomness.
        """
        return Validation(metrics={})

    def auxiliary_networks(self) -> dict[str, Any]:
        """Frozen networks the task uses but does not train (teachers), by name: each a
        `soundry.train.auxiliary.Auxiliary` (see `load_auxiliary`). Called once, after
        `networks()`; the engine moves them to the device, freezes them, puts them in eval
        mode and records their source and content hash in provenance.json. They are never
        optimised, averaged or checkpointed."""
        return {}

    def ema_networks(self) -> list[str]:
        """Default networks to keep an EMA of when the recipe sets `train.ema` without naming
        networks (`train.ema.networks` takes precedence). No EMA unless `train.ema` is set."""
        return []

    def begin_step(self, step: int, batches: list[Any]) -> None:
        """Called with all of a step's micro-batches (host side) before the first of them
        trains, when `train.grad_accum` > 1: a task whose loss is normalised by a count
        over the batch (tokens) takes the count of the whole step here. Default: nothing."""
        return None

    def compile(self, compile_fn: Any) -> list[str]:
        """Compile what the training step runs (`train.compile`); returns what was compiled.
        The default compiles each network's forward in place (its state dict keeps its
        names); tasks add their losses or sub-modules they call directly.
        `compile_fn(fn)` returns the compiled callable."""
        names = []
        for name, net in self.networks().items():
            net.forward = compile_fn(net.forward)
            names.append(name)
        return names

    def fsdp_units(self) -> dict[str, list[nn.Module]]:
        """Networks to shard under `train.fsdp`, by name, each with the submodules sharded
        as units of their own (a transformer's blocks: one block's weights are gathered at
        a time). Empty: the task cannot be sharded."""
        return {}

    def fsdp_methods(self) -> dict[str, tuple[str, ...]]:
        """Methods other than `forward` that run a sharded network's layers (by network),
        registered with FSDP so they gather its weights too."""
        return {}

    def frozen_prefixes(self) -> list[str]:
        """Parameter-name prefixes ('generator.encoder') to freeze for fine-tuning.

        Joined with `train.freeze`; applied after `--init-from` and before `optimizers()`,
        so frozen parameters are left out of the optimizers.
        """
        return []

    def extra_state(self) -> dict[str, Any]:
        """Task state that is not in the networks' state_dicts (JSON-serialisable), saved in
        every checkpoint and handed back to `load_extra_state` on resume."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""
        return None


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
