"""The training engine: one loop for every system.

A `Task` builds networks, optimizers and data and defines the training step; the engine
does the rest. Per optimizer step (`step` counts optimizer steps, 1-based):

    for each of train.grad_accum micro-batches:
        batch = next(loader) -> device
        with autocast: task.train_step(batch, step, updater)
            updater.update(name, loss)  # backward(loss / grad_accum); at the last micro-batch:
                                        # all-reduce grads, grad norm, clip, NaN check,
                                        # optimizer.step, scheduler.step, zero_grad
    EMA update; every log_every: one train line; NaN guard;
    every valid_every: validation; every checkpoint_every: checkpoint

Devices, processes and precision come from `accelerate.Accelerator`. The networks are not
wrapped in DistributedDataParallel: tasks call their own modules, and the engine averages
gradients across processes itself at each accumulation boundary (one flat all-reduce per
optimizer), which also makes gradient accumulation free of DDP's no_sync bookkeeping.
bf16 runs use accelerate's autocast (no loss scaling is needed for bf16); tf32 only sets
the torch.backends matmul/cuDNN flags. A bf16 run on a CPU without native bf16 (see
`soundry.train.precision`) starts with a warning: emulated bf16 is far slower than fp32.

NaN guard: an update whose loss or gradient norm is not finite is skipped (no optimizer or
scheduler step), counted and logged ("nonfinite_skips"). A step with any skipped update
extends a streak; `train.nan_patience` such steps in a row stop the run with a
`SoundryError`. No checkpoint is written during a streak, and never from non-finite
weights, so the last checkpoint stays a good one.

Resume (`resume=True`) loads the newest complete checkpoint: weights, EMA, optimizer and
scheduler states, RNG states, the data loader position, the running log averages; drops
metrics.jsonl lines after that step; and continues so that the result is identical to an
uninterrupted run.

Test hook: the environment variable SOUNDRY_TEST_KILL_AT_STEP=<step> makes the process
SIGKILL itself right after finishing that step (after its logs, validation and
checkpoint). Only the resume tests set it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from soundry.config import to_dict
from soundry.errors import ConfigError, SoundryError, TrainingStopped
from soundry.health.runner import HealthRunner
from soundry.registry import did_you_mean
from soundry.train.auxiliary import check_unchanged
from soundry.train.checkpoint import (
    CheckpointManager,
    all_finite,
    capture_rng,
    restore_rng,
    step_name,
)
from soundry.train.ema import EMA
from soundry.train.init_from import freeze, init_from, write_report
from soundry.train.logging import (
    Progress,
    RunLogger,
    check_wandb,
    read_auxiliary,
    write_provenance,
)
from soundry.train.optim import load_keeping_recipe
from soundry.train.precision import bf16_cpu_warning, cpu_has_native_bf16
from soundry.train.task import OptimizerSpec, Task, TaskContext

log = logging.getLogger("soundry.train")

KILL_AT_STEP_ENV = "SOUNDRY_TEST_KILL_AT_STEP"


def derive_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (run seed, step, rank, ...)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Draws from the python/numpy/torch generators inside the block leave no trace."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch generators inside the block; restore their states after."""
    with preserved_rng():
        seed_everything(seed)
        yield


def set_precision_flags(precision: str) -> None:
    """tf32 allows TensorFloat-32 matmuls/convolutions on Ampere+ GPUs; the others forbid it."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def make_accelerator(precision: str, cpu: bool) -> Any:
    """An `accelerate.Accelerator` for this run's precision.

    accelerate keeps its state in a process-wide singleton that refuses a second
    Accelerator with another precision; a process that runs several trainings in a row
    (tests, the demo) resets that part of it (the distributed part is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if precision == "bf16" else "no"
    shared = AcceleratorState._shared_state
    if shared and (shared.get("_mixed_precision") != mixed
                   or (cpu and getattr(shared.get("device"), "type", "cpu") != "cpu")):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed, cpu=cpu)


# ----------------------------------------------------------------------------- accumulators


class LogAccumulator:
    """Sums of logged values over one log interval, kept on the device (no sync per step).

    Non-finite values are left out of the means; the NaN guard counts them instead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.maxima: dict[str, float] = {}

    def add(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            v = value.detach().float()
            if v.numel() != 1:
                v = v.mean()
            v = v.reshape(())
            finite = torch.isfinite(v).float()
            v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
            if key in self.sums:
                self.sums[key] = self.sums[key] + v
                self.counts[key] = self.counts[key] + finite
            else:
                self.sums[key], self.counts[key] = v, finite
        else:
            v = float(value)
            if not np.isfinite(v):
                return
            self.sums[key] = self.sums.get(key, 0.0) + v
            self.counts[key] = self.counts.get(key, 0.0) + 1.0

    def add_max(self, key: str, value: float) -> None:
        if np.isfinite(value):
            self.maxima[key] = max(self.maxima.get(key, -np.inf), value)

    def means(self) -> dict[str, float | None]:
        """Interval means (None when every value was non-finite) and maxima; one sync."""
        on_device = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        totals = {k: (float(v), float(self.counts[k])) for k, v in self.sums.items()
                  if k not in on_device}
        if on_device:
            flat = torch.stack([self.sums[k].to(self.device) for k in on_device]
                               + [self.counts[k].to(self.device) for k in on_device]).tolist()
            for i, k in enumerate(on_device):
                totals[k] = (flat[i], flat[len(on_device) + i])
        out: dict[str, float | None] = {
            k: (total / count if count > 0 else None) for k, (total, count) in totals.items()
        }
        out.update(self.maxima)
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.maxima.clear()

    def state_dict(self) -> dict[str, Any]:
        def plain(d: dict[str, Any]) -> dict[str, list[Any]]:
            return {k: [float(v), isinstance(v, torch.Tensor)] for k, v in d.items()}

        return {"sums": plain(self.sums), "counts": plain(self.counts),
                "maxima": dict(self.maxima)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def back(d: dict[str, list[Any]]) -> dict[str, Any]:
            return {k: (torch.tensor(v, dtype=torch.float32, device=self.device) if is_tensor
                        else v) for k, (v, is_tensor) in d.items()}

        self.sums, self.counts = back(state["sums"]), back(state["counts"])
        self.maxima = dict(state["maxima"])


# ----------------------------------------------------------------------------- updater


class StepUpdater:
    """The `Updater` the engine hands to `Task.train_step`."""

    def __init__(self, specs: list[OptimizerSpec], grad_accum: int, accelerator: Any,
                 acc: LogAccumulator) -> None:
        self.specs = {s.name: s for s in specs}
        self.params = {
            s.name: [p for g in s.optimizer.param_groups for p in g["params"]] for s in specs
        }
        self.grad_accum = grad_accum
        self.accelerator = accelerator
        self.acc = acc
        self.world_size = accelerator.num_processes
        self.micro = 0
        self._zeroed: set[str] = set()
        self._pending: set[str] = set()
        self._loss_ok: dict[str, torch.Tensor] = {}
        self._called: set[str] = set()
        self.skipped: dict[str, int] = {s.name: 0 for s in specs}
        self.skipped_this_step = False
        # this step's grad norm and clipping flag per optimizer (host floats, for health)
        self.step_values: dict[str, float] = {}

    def begin(self, micro: int) -> None:
        self.micro = micro
        self._called.clear()
        if micro == 0:
            self._zeroed.clear()
            self.skipped_this_step = False
            self.step_values = {}

    def update(self, name: str, loss: torch.Tensor) -> bool:
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"updater.update: no optimizer '{name}'{did_you_mean(name, self.specs)}"
                           f" (optimizers: {', '.join(self.specs)})")
        if loss.ndim != 0:
            raise ValueError(f"updater.update('{name}'): loss must be a scalar, got "
                             f"shape {tuple(loss.shape)}")
        if name in self._called:
            raise RuntimeError(f"updater.update('{name}') called twice in one train_step; sum "
                               "the losses of one optimizer and update once")
        self._called.add(name)
        if name not in self._zeroed:
            # drop gradients another optimizer's backward left on these parameters
            spec.optimizer.zero_grad(set_to_none=True)
            self._zeroed.add(name)
            self._loss_ok.pop(name, None)
        finite = torch.isfinite(loss.detach())
        self._loss_ok[name] = finite if name not in self._loss_ok else self._loss_ok[name] & finite
        if loss.requires_grad:
            self.accelerator.backward(loss / self.grad_accum if self.grad_accum > 1 else loss)
        self._pending.add(name)
        if self.micro == self.grad_accum - 1:
            return self._boundary(spec)
        return False

    def finish(self) -> None:
        """Step optimizers whose loss was given in earlier micro-batches but not the last."""
        for name in list(self._pending):
            self._boundary(self.specs[name])

    def _boundary(self, spec: OptimizerSpec) -> bool:
        params = self.params[spec.name]
        loss_ok = self._loss_ok.pop(spec.name)
        if self.world_size > 1:  # every process must take the same decision
            loss_ok = self._all_reduce(params, loss_ok)
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
        else:
            norm = torch.zeros((), device=self.accelerator.device)
        ok = torch.isfinite(norm) & loss_ok
        norm_value, ok_value = torch.stack([norm.float(), ok.float()]).tolist()  # one sync
        stepped = bool(ok_value)
        if stepped:
            clipped = spec.clip is not None and bool(grads) and norm_value > spec.clip
            if spec.clip is not None and grads:
                torch.nn.utils.clip_grads_with_norm_(params, spec.clip, norm)
            spec.optimizer.step()
            if spec.scheduler is not None:
                spec.scheduler.step()
            self.acc.add(f"grad_norm/{spec.name}", norm_value)
            self.acc.add_max(f"grad_norm_max/{spec.name}", norm_value)
            if spec.clip is not None:  # share of this interval's steps that were clipped
                self.acc.add(f"clip_fraction/{spec.name}", float(clipped))
            self.step_values[f"grad_norm/{spec.name}"] = norm_value
            self.step_values[f"clipped/{spec.name}"] = float(clipped)
        else:
            self.skipped[spec.name] += 1
            self.skipped_this_step = True
        spec.optimizer.zero_grad(set_to_none=True)
        self._pending.discard(spec.name)
        return stepped

    def _all_reduce(self, params: list[nn.Parameter], loss_ok: torch.Tensor) -> torch.Tensor:
        """Average gradients over processes in one flat all-reduce; returns whether every
        process's loss was finite."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        trainable = [p for p in params if p.requires_grad]
        for p in trainable:
            if p.grad is None:  # every process must reduce the same flat layout
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in trainable]
        bad_loss = (~loss_ok).float().reshape(1)
        flat = _flatten_dense_tensors([*(g.float() for g in grads), bad_loss])
        dist.all_reduce(flat)
        reduced = _unflatten_dense_tensors(flat, [*grads, bad_loss])
        for g, r in zip(grads, reduced[:-1], strict=True):
            g.copy_(r / self.world_size)
        return reduced[-1].reshape(()) == 0


# ----------------------------------------------------------------------------- engine


class Engine:
    """Runs one task to `train.max_steps` in `run_dir` (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        recipe: Any,
        run_dir: str | Path,
        resume: bool = False,
        init_from: str | Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.task = task
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.command = command
        if init_from is not None:
            self.recipe.train.init_from = str(init_from)
        self._kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "0") or 0)
        self.preflight()

    # -- checks that need no work

    def preflight(self) -> None:
        """Errors a user can fix, raised before anything is built or written."""
        cfg = self.cfg
        if not self.resume and self.run_dir.exists():
            taken = [n for n in ("metrics.jsonl", "checkpoints") if (self.run_dir / n).exists()]
            if taken:
                raise SoundryError(
                    f"run directory '{self.run_dir}' already holds a run ({', '.join(taken)}); "
                    "continue it with --resume, or choose another --out"
                )
        if self.resume and not self.run_dir.is_dir():
            raise SoundryError(f"--resume: '{self.run_dir}' is not a directory")
        if cfg.init_from is not None and not self.resume and not Path(cfg.init_from).exists():
            raise SoundryError(f"--init-from: '{cfg.init_from}' does not exist")
        check_wandb(cfg.wandb.enabled)

    # -- setup

    def _setup(self) -> None:
        cfg, recipe = self.cfg, self.recipe
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        set_precision_flags(cfg.precision)
        self.accelerator = make_accelerator(cfg.precision, cpu=cfg.device == "cpu")
        acc = self.accelerator
        self.device = acc.device
        self.rank, self.world_size = acc.process_index, acc.num_processes
        self.is_main = acc.is_main_process
        if self.is_main:
            log.info("torch intra-op threads: %d (%s)", torch.get_num_threads(),
                     "train.threads" if cfg.threads is not None else "torch's default")
            if cfg.precision == "bf16" and self.device.type == "cpu" \
                    and not cpu_has_native_bf16():
                log.warning(bf16_cpu_warning())

        ctx: TaskContext = self.task.ctx
        ctx.run_dir, ctx.device = self.run_dir, self.device
        ctx.rank, ctx.world_size = self.rank, self.world_size
        ctx.seed, ctx.max_steps = recipe.seed, cfg.max_steps
        if cfg.overfit is not None:
            ctx.overfit = cfg.overfit

        self.ckpt = CheckpointManager(self.run_dir, cfg.keep_last, cfg.best_mode, self.rank,
                                      barrier=acc.wait_for_everyone)
        resume_from = self.ckpt.latest() if self.resume else None

        # Build and check everything before writing anything to the run directory.
        # Identical initial weights on every process:
        seed_everything(recipe.seed)
        self.networks = self.task.networks()
        if not self.networks:
            raise SoundryError(f"task '{recipe.task}' built no network")
        for net in self.networks.values():
            net.to(self.device)
            net.train()

        self.auxiliary = self.task.auxiliary_networks()
        clash = set(self.auxiliary) & set(self.networks)
        if clash:
            raise SoundryError(f"task '{recipe.task}' names {sorted(clash)} both as trained and "
                               "as auxiliary networks")
        for aux in self.auxiliary.values():
            aux.prepare(self.device)

        report = None
        if resume_from is None and cfg.init_from:
            report = init_from(cfg.init_from, self.networks)
        self.frozen = freeze(self.networks, [*cfg.freeze, *self.task.frozen_prefixes()])
        if self.frozen and self.is_main:
            log.info("frozen %d parameter tensors", len(self.frozen))

        self.specs = self.task.optimizers()
        self._check_specs()
        self.ema = self._make_ema()
        self.loader = self.task.train_loader()

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt.remove_partial()
            if report is not None:
                write_report(report, self.run_dir / "init_report.json")
                print(report.summary())
        acc.wait_for_everyone()

        self.acc = LogAccumulator(self.device)
        self.updater = StepUpdater(self.specs, cfg.grad_accum, acc, self.acc)
        self.step = 0
        self.consecutive_skips = 0
        self.last_valid: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self._health_state: dict[str, Any] | None = None

        # per-process randomness for training (dropout, ...) differs between processes
        seed_everything(derive_seed(recipe.seed, 1, self.rank))
        if resume_from is not None:
            self._load(resume_from)
        elif self.resume:
            log.info("no complete checkpoint in %s: starting from step 0", self.run_dir)
        if self.world_size > 1:
            self._broadcast_weights()

        self.logger: RunLogger | None = None
        if self.is_main:
            _write_config(recipe, self.run_dir / "config.yaml")
            if self.resume and self.auxiliary:
                check_unchanged(self.auxiliary, read_auxiliary(self.run_dir))
            write_provenance(self.run_dir, self.step if self.resume else None, self.command,
                             {n: a.describe() for n, a in self.auxiliary.items()})
            self.logger = RunLogger(
                self.run_dir, cfg.tensorboard, cfg.tensorboard_audio, cfg.wandb,
                to_dict(recipe), resume_step=self.step if self.resume else None,
            )
            if resume_from is not None:
                self.ckpt.write_index(resume_from.name)
        self.health = HealthRunner(self.recipe.health, self.run_dir if self.is_main else None,
                                   self.logger)
        if not self.is_main:  # monitors watch the main process's batches and validations
            self.health.monitors = []
        if self._health_state is not None:
            self.health.load_state_dict(self._health_state)
        if self.is_main and self.resume:
            self.health.truncate_after(self.step)
        self.health.start(self._health_context(), self.step)

    def _health_context(self) -> dict[str, Any]:
        """What the monitors know up front: the task's and the loader's descriptions."""
        context: dict[str, Any] = {}
        for source in (self.loader, self.task):
            describe = getattr(source, "health_context", None)
            if callable(describe):
                context.update(describe())
        return context

    def _broadcast_weights(self) -> None:
        """Start every process from the main process's weights (and EMA), whatever the
        task's initialisation did."""
        import torch.distributed as dist

        with torch.no_grad():
            for net in self.networks.values():
                for tensor in net.state_dict(keep_vars=True).values():
                    dist.broadcast(tensor.data, src=0)
            if self.ema is not None:
                for name in self.ema.networks:
                    for tensor in self.ema.state_dict(name).values():
                        dist.broadcast(tensor, src=0)

    def _check_specs(self) -> None:
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise SoundryError(f"task optimizers have duplicate names: {names}")
        for spec in self.specs:
            for net in spec.networks:
                if net not in self.networks:
                    raise SoundryError(
                        f"optimizer '{spec.name}' names network '{net}'"
                        f"{did_you_mean(net, self.networks)}; networks: {', '.join(self.networks)}"
                    )

    def _make_ema(self) -> EMA | None:
        ema_cfg = self.cfg.ema
        if ema_cfg is None:
            return None
        names = ema_cfg.networks or self.task.ema_networks()
        if not names:
            raise ConfigError("train.ema is set but names no network (train.ema.networks) and "
                              f"the task has no default; networks: {', '.join(self.networks)}")
        for name in names:
            if name not in self.networks:
                raise ConfigError(f"train.ema.networks: unknown network '{name}'"
                                  f"{did_you_mean(name, self.networks)}; networks: "
                                  f"{', '.join(self.networks)}")
        return EMA({n: self.networks[n] for n in names}, ema_cfg.beta, ema_cfg.start_step)

    # -- checkpoints

    def _save(self, step: int) -> Path:
        if not all_finite(self.networks):
            last = self.ckpt.latest()
            raise SoundryError(
                f"step {step}: network weights are not finite; not saving them. The last good "
                f"checkpoint is {last or 'none'}. Lower the learning rate or enable clipping."
            )
        optimizers = {
            s.name: {"optimizer": s.optimizer.state_dict(),
                     "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None}
            for s in self.specs
        }
        state = {
            "engine": {
                "skipped": dict(self.updater.skipped),
                "consecutive_skips": self.consecutive_skips,
                "best": [self.ckpt.best, self.ckpt.best_metric, self.ckpt.best_value],
                "log": self.acc.state_dict(),
                "last_valid": self.last_valid,
                "health": self.health.state_dict(),
            },
            "task": self.task.extra_state(),
            "networks": list(self.networks),
            "optimizers": [s.name for s in self.specs],
            "ema": list(self.ema.networks) if self.ema else [],
        }
        rank_state = {"rng": capture_rng(), "loader": self.loader.state_dict()}
        ema_state = ({n: self.ema.state_dict(n) for n in self.ema.networks}
                     if self.ema is not None else {})
        path = self.ckpt.save(step, self.networks, ema_state, optimizers, state, rank_state)
        self.last_checkpoint = path
        self.health.save_state(step)
        return path

    def _load(self, path: Path) -> None:
        state = self.ckpt.read_state(path)
        if set(state["networks"]) != set(self.networks):
            raise SoundryError(f"checkpoint {path} holds networks {state['networks']}, the "
                               f"task builds {list(self.networks)}")
        for name, net in self.networks.items():
            net.load_state_dict(self.ckpt.read_network(path, name))
        if self.ema is not None:
            for name in self.ema.networks:
                if name in state["ema"]:
                    self.ema.load_state_dict(name, self.ckpt.read_network(path, name, ema=True))
                else:  # EMA switched on for a resumed run: start it from the weights
                    self.ema.load_state_dict(name, {k: v.detach().float() for k, v in
                                                    self.networks[name].state_dict().items()})
        missing = [s.name for s in self.specs if s.name not in state["optimizers"]]
        if missing:
            raise SoundryError(f"checkpoint {path} has no state for optimizer(s) "
                               f"{', '.join(missing)}; it holds {', '.join(state['optimizers'])}")
        for spec in self.specs:
            saved = self.ckpt.read_optimizer(path, spec.name)
            changed = load_keeping_recipe(spec.optimizer, spec.scheduler, saved["optimizer"],
                                          saved["scheduler"])
            for line in changed:
                log.info("optimizer %s: the recipe changes %s on resume", spec.name, line)
        engine = state["engine"]
        self.updater.skipped.update(engine["skipped"])
        self.consecutive_skips = engine["consecutive_skips"]
        best, metric, value = engine["best"]
        if best is not None:
            self.ckpt.set_best(best, metric, value)
        self.acc.load_state_dict(engine["log"])
        self.last_valid = engine["last_valid"]
        self._health_state = engine.get("health")
        self.task.load_extra_state(state["task"])
        rank_state = self.ckpt.read_rank_state(path)
        self.loader.load_state_dict(rank_state["loader"])
        restore_rng(rank_state["rng"])
        self.step = int(state["step"])
        self.last_checkpoint = path
        log.info("resumed from %s (step %d)", path, self.step)

    # -- validation

    def _validate(self, step: int) -> tuple[str, float] | None:
        """Validate on the main process; returns a new best (metric, value) on every process.

        An error on the main process is re-raised there and reported on the others, so no
        process is left waiting.
        """
        best: tuple[str, float] | None = None
        failure: BaseException | None = None
        if self.is_main:
            try:
                best = self._validate_main(step)
            except Exception as exc:
                if self.world_size == 1:
                    raise
                failure = exc
        if self.world_size > 1:
            from accelerate.utils import broadcast_object_list

            box = [(best, None if failure is None else f"{type(failure).__name__}: {failure}")]
            broadcast_object_list(box, from_process=0)
            best, error = box[0]
            if failure is not None:
                raise failure
            if error is not None:
                raise SoundryError(f"validation failed on the main process: {error}")
        return best

    def _validate_main(self, step: int) -> tuple[str, float] | None:
        flags = {m: m.training for net in self.networks.values() for m in net.modules()}
        for net in self.networks.values():
            net.eval()
        swap = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        try:
            with swap, torch.no_grad(), self.accelerator.autocast(), \
                    isolated_rng(derive_seed(self.recipe.seed, 2, step)):
                result = self.task.validate(step)
        finally:
            for module, flag in flags.items():
                module.training = flag
        metrics = {f"valid/{k}": float(v) for k, v in result.metrics.items()}
        self.last_valid = metrics
        assert self.logger is not None
        if metrics:
            self.logger.valid(step, metrics)
        self.logger.audio(step, result.audio, result.sample_rate)
        self.health.on_valid(step, metrics, result.audio, result.sample_rate)
        key = self.cfg.best_key
        if key is None:
            return None
        if key not in metrics:
            raise SoundryError(
                f"train.best_metric '{self.cfg.best_metric}' is not a validation metric"
                f"{did_you_mean(key, metrics)}; the task reports: {', '.join(metrics) or 'none'}"
            )
        value = metrics[key]
        return (key, value) if np.isfinite(value) and self.ckpt.is_better(value) else None

    # -- logging

    def _log_train(self, step: int, t0: float, steps_since: int, data_wait: float) -> float:
        """Write the train line of the interval ending at `step`; returns the time the
        interval was measured up to (the next one starts there, so logging itself counts)."""
        means = self.acc.means()
        # losses first, then the task's other scalars, then the engine's
        engine_keys = ("grad_norm/", "grad_norm_max/", "clip_fraction/")
        values = {k: v for k, v in means.items() if k.startswith("loss")}
        values.update({k: v for k, v in means.items() if not k.startswith(engine_keys)})
        values.update(means)
        for spec in self.specs:
            values[f"lr/{spec.name}"] = float(spec.optimizer.param_groups[0]["lr"])
        values["nonfinite_skips"] = sum(self.updater.skipped.values())
        if len(self.specs) > 1:
            for name, count in self.updater.skipped.items():
                values[f"nonfinite_skips/{name}"] = count
        now = time.perf_counter()
        elapsed = max(now - t0, 1e-9)
        values["perf/steps_per_s"] = steps_since / elapsed
        values["perf/data_fraction"] = min(1.0, data_wait / elapsed)
        self.acc.reset()
        if self.logger is not None:
            self.logger.train(step, values)
            self.progress.update(step, values)
        return now

    # -- the loop

    def fit(self) -> dict[str, Any]:
        """Train to max_steps (or stop on the NaN guard); returns the run summary.

        train.threads holds for the run; the process's earlier thread count comes back
        after it (a process may run several trainings in a row).
        """
        threads_before = torch.get_num_threads()
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads_before)

    def _fit(self) -> dict[str, Any]:
        self._setup()
        cfg = self.cfg
        self.progress = Progress(cfg.max_steps, self.step, cfg.progress and self.is_main)
        status = "completed"
        try:
            if cfg.valid_at_start and self.step == 0:
                self._validate(0)  # no checkpoint of step 0, so no best either
            summary = self._loop()
            status = summary["status"]
        finally:
            self.progress.close()
            if self.logger is not None:
                self.logger.close()
        if status != "completed":
            raise TrainingStopped(summary["message"])
        if self.is_main:
            print(summary_line(summary))
        return summary

    def _loop(self) -> dict[str, Any]:
        cfg, task, updater, health = self.cfg, self.task, self.updater, self.health
        device = self.device
        from accelerate.utils import send_to_device

        # Starting a loader may draw from the global generators (a torch DataLoader draws its
        # workers' base seed unless given a generator). An uninterrupted run makes that draw
        # before its first checkpoint and a resumed run after restoring the RNG states, which
        # would shift all later randomness; so the first batch of a session leaves no trace.
        with preserved_rng():
            batches = iter(self.loader)
            first = next(batches)
        batches = itertools.chain([first], batches)
        start_step = self.step
        self.valid_seconds = self.checkpoint_seconds = self.side_cpu_seconds = 0.0
        loop_c0 = time.process_time()
        loop_t0 = t0 = time.perf_counter()
        data_wait = 0.0
        steps_since = 0
        message = ""
        status = "completed"
        while self.step < cfg.max_steps:
            step = self.step + 1
            for micro in range(cfg.grad_accum):
                t_data = time.perf_counter()
                host_batch = next(batches)
                data_wait += time.perf_counter() - t_data
                health.on_batch(step, host_batch)
                batch = send_to_device(host_batch, device, non_blocking=True)
                updater.begin(micro)
                with self.accelerator.autocast():
                    out = task.train_step(batch, step, updater)
                for key, value in (out or {}).items():
                    self.acc.add(key, value)
            updater.finish()
            health.on_step(step, out or {}, updater.step_values)
            self.step = step
            steps_since += 1
            if self.ema is not None:
                self.ema.update(step)
            self.consecutive_skips = self.consecutive_skips + 1 if updater.skipped_this_step else 0

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                t0 = self._log_train(step, t0, steps_since, data_wait)
                data_wait, steps_since = 0.0, 0
            elif self.logger is not None:
                self.progress.update(step)

            if self.consecutive_skips >= cfg.nan_patience:
                status = "stopped_nonfinite"
                last = self.ckpt.latest()
                message = (
                    f"stopped at step {step}: {self.consecutive_skips} steps in a row had a "
                    "non-finite loss or gradient (train.nan_patience="
                    f"{cfg.nan_patience}). The last good checkpoint is "
                    f"{last if last is not None else 'none (no checkpoint was written yet)'}. "
                    "Check the data (NaN/Inf samples), lower the learning rate or enable "
                    "gradient clipping, then --resume."
                )
                break

            best = None
            if step % cfg.valid_every == 0 or step == cfg.max_steps:
                t_valid, c_valid = time.perf_counter(), time.process_time()
                best = self._validate(step)
                self.valid_seconds += time.perf_counter() - t_valid
                self.side_cpu_seconds += time.process_time() - c_valid
            due = step % cfg.checkpoint_every == 0 or step == cfg.max_steps or best is not None
            if due:
                if self.consecutive_skips == 0 or step == cfg.max_steps:
                    if best is not None:  # recorded only with the checkpoint it names
                        self.ckpt.set_best(step_name(step), *best)
                    t_save, c_save = time.perf_counter(), time.process_time()
                    self._save(step)
                    self.checkpoint_seconds += time.perf_counter() - t_save
                    self.side_cpu_seconds += time.process_time() - c_save
                else:
                    log.warning("step %d: skipping the checkpoint during a run of non-finite "
                                "updates", step)
            if health.active and (step % self.recipe.health.check_every == 0
                                  or step == cfg.max_steps):
                health.check(step)
            if self._kill_at == step:
                os.kill(os.getpid(), signal.SIGKILL)
        if health.active:
            health.check(self.step)
            health.save_state(self.step)
        loop_seconds = time.perf_counter() - loop_t0
        self.train_cpu_seconds = time.process_time() - loop_c0 - self.side_cpu_seconds
        return self._finish(status, message, start_step,
                            loop_seconds - self.valid_seconds - self.checkpoint_seconds)

    def _finish(self, status: str, message: str, start_step: int, seconds: float
                ) -> dict[str, Any]:
        best = self.ckpt.root / self.ckpt.best if self.ckpt.best else None
        steps_run = self.step - start_step
        summary = {
            "status": status,
            "message": message,
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "steps_this_session": steps_run,
            # wall time of this session's steps, without validations and checkpoint writes
            "train_seconds": seconds,
            "steps_per_second": steps_run / seconds if seconds > 0 else None,
            # CPU time of this process (all threads) for the same steps
            "train_cpu_seconds": self.train_cpu_seconds,
            "valid_seconds": self.valid_seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best_checkpoint": str(best) if best else None,
            "best_metric": self.ckpt.best_metric,
            "best_value": self.ckpt.best_value,
            "nonfinite_skips": sum(self.updater.skipped.values()),
            "valid": self.last_valid,
            # time the health monitors took during this session's steps (and validations)
            "health_seconds": round(self.health.seconds, 4),
            "health_valid_seconds": round(self.health.valid_seconds, 4),
            "health_findings": {sev: sum(f.severity == sev for f in self.health.findings)
                                for sev in ("warning", "error")},
        }
        if hasattr(self.loader, "summary"):  # data loaders report usable / skipped files
            summary["data"] = self.loader.summary()
        if self.is_main:
            import json

            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


def _write_config(recipe: Any, path: Path) -> None:
    """The fully resolved recipe as YAML, replaced atomically (--resume reads it back)."""
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    os.replace(tmp, path)


def summary_line(summary: dict[str, Any]) -> str:
    """One line: steps, time, run dir, best checkpoint."""
    secs = int(summary["train_seconds"])
    took = f"{secs // 3600}h{secs // 60 % 60:02d}m{secs % 60:02d}s" if secs >= 3600 else \
        f"{secs // 60}m{secs % 60:02d}s"
    best = summary["best_checkpoint"] or summary["last_checkpoint"] or "none"
    label = "best checkpoint" if summary["best_checkpoint"] else "last checkpoint"
    from soundry.eval.fmt import fmt_metric

    value = (f" ({summary['best_metric']} = {fmt_metric(summary.get('best_value'), '.4g')})"
             if summary["best_checkpoint"] else "")
    data = summary.get("data") or {}
    skipped = (f"; data: {data['usable_files']} files used, {data['skipped_files']} skipped, "
               f"{data['replaced_items']} items replaced" if data else "")
    return (f"trained {summary['steps']} steps in {took}: run dir {summary['run_dir']}; "
            f"{label} {best}{value}{skipped}")


def run_training(
    recipe: Any,
    run_dir: str | Path,
    resume: bool = False,
    init_from: str | Path | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Build the recipe's task and train it in `run_dir`; returns the summary dict."""
    from soundry.train.tasks import TASKS

    task_cls = TASKS.get(recipe.task)
    ctx = TaskContext(run_dir=Path(run_dir), overfit=recipe.train.overfit, seed=recipe.seed,
                      max_steps=recipe.train.max_steps)
    task = task_cls(recipe, ctx)
    return Engine(task, recipe, run_dir, resume=resume, init_from=init_from,
                  command=command).fit()
