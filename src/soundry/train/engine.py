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

The run ends at train.max_steps, or earlier when train.budget_minutes of training time are
spent (`soundry.train.budget`: validations and checkpoints excluded, summed across resumes);
train.valid_at_minutes adds validations at training-time points.

Devices, processes and precision come from `accelerate.Accelerator`. The networks are not
wrapped in DistributedDataParallel: tasks call their own modules, and the engine averages
gradients across processes itself at each accumulation boundary (one flat all-reduce per
optimizer), which also makes gradient accumulation free of DDP's no_sync bookkeeping.
bf16 runs use accelerate's autocast (no loss scaling is needed for bf16); fp16 runs use
float16 autocast with dynamic loss scaling per optimizer (`StepUpdater`); tf32 only sets
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
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundry.config import to_dict
from soundry.errors import ConfigError, SoundryError, TrainingStopped
from soundry.health.runner import HealthRunner
from soundry.registry import did_you_mean
from soundry.train.auxiliary import check_unchanged
from soundry.train.budget import TrainClock
from soundry.train.checkpoint import (
    CheckpointManager,
    step_name,
)
from soundry.train.compiling import compile_task
from soundry.train.ema import EMA
from soundry.train.engine_state import restore_checkpoint, save_checkpoint
from soundry.train.fsdp import shard
from soundry.train.init_from import freeze, init_from, write_report
from soundry.train.logging import (  # noqa: F401  (summary_line: public API)
    Progress,
    RunLogger,
    check_wandb,
    read_auxiliary,
    summary_line,
    write_config,
    write_provenance,
)
from soundry.train.optim import ScheduledLR
from soundry.train.precision import bf16_cpu_warning, cpu_has_native_bf16
from soundry.train.runtime import (  # noqa: F401  (seed_everything: public API)
    autocast_context,
    derive_seed,
    isolated_rng,
    make_accelerator,
    preserved_rng,
    seed_everything,
    set_precision_flags,
)
from soundry.train.sections import section
from soundry.train.task import Task, TaskContext
from soundry.train.updater import LogAccumulator, StepUpdater

log = logging.getLogger("soundry.train")

KILL_AT_STEP_ENV = "SOUNDRY_TEST_KILL_AT_STEP"



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
        #: callables of the finished step number, called after its update and train log and
        #: before its validation and checkpoint (`soundry profile` times steps with them)
        self.step_hooks: list[Any] = []
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

        self.sharded = self._shard() if cfg.fsdp and self.world_size > 1 else []
        self.specs = self.task.optimizers()
        self._check_specs()
        self.ema = self._make_ema()
        self.loader = self.task.train_loader()
        self.compiled = compile_task(self.task, self.device) if cfg.compile else []
        self.first_step_seconds: float | None = None

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt.remove_partial()
            if report is not None:
                write_report(report, self.run_dir / "init_report.json")
                print(report.summary())
        acc.wait_for_everyone()

        self.acc = LogAccumulator(self.device)
        self.updater = StepUpdater(self.specs, cfg.grad_accum, acc, self.acc,
                                   fp16=cfg.precision == "fp16")
        self.step = 0
        self.consecutive_skips = 0
        self.last_valid: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self._health_state: dict[str, Any] | None = None
        self.clock = TrainClock(cfg.budget_minutes, cfg.valid_at_minutes)
        if cfg.budget_minutes is not None:  # time-defined schedule phases read the budget
            ctx.progress = self.clock.decided_fraction

        # per-process randomness for training (dropout, ...) differs between processes
        seed_everything(derive_seed(recipe.seed, 1, self.rank))
        if resume_from is not None:
            restore_checkpoint(self, resume_from)
        elif self.resume:
            log.info("no complete checkpoint in %s: starting from step 0", self.run_dir)
        if self.world_size > 1:
            self._broadcast_weights()
        if cfg.budget_minutes is not None:
            follow = [s.name for s in self.specs if isinstance(s.scheduler, ScheduledLR)
                      and s.scheduler.follow(self.clock.decided_fraction)]
            if follow and self.is_main:
                log.info("lr schedule of %s decays over the %g-minute training budget",
                         ", ".join(follow), cfg.budget_minutes)

        self.logger: RunLogger | None = None
        if self.is_main:
            write_config(recipe, self.run_dir / "config.yaml")
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

    def _shard(self) -> list[str]:
        """Shard the task's shardable networks (train.fsdp); returns their names."""
        units = self.task.fsdp_units()
        if not units:
            raise SoundryError(f"train.fsdp: task '{self.recipe.task}' has no network that "
                               "can be sharded; set train.fsdp: false")
        methods = self.task.fsdp_methods()
        for name, modules in units.items():
            shard(self.networks[name], modules, methods.get(name, ()))
        if self.is_main:
            log.info("sharded %s over %d processes (FSDP)", ", ".join(units), self.world_size)
        return list(units)

    def _broadcast_weights(self) -> None:
        """Start every process from the main process's weights (and EMA), whatever the
        task's initialisation did. Sharded networks start alike by their seed (and a
        resume loads the same full state on every process)."""
        import torch.distributed as dist

        with torch.no_grad():
            for name, net in self.networks.items():
                if name in self.sharded:
                    continue
                for tensor in net.state_dict(keep_vars=True).values():
                    dist.broadcast(tensor.data, src=0)
            if self.ema is not None:
                for name in self.ema.networks:
                    for tensor in self.ema.state_dict(name).values():
                        dist.broadcast(tensor, src=0)

    def _check_replicas(self, step: int) -> None:
        """Every process must hold the same weights, buffers (codebooks, usage counts) and
        EMA: compare a float64 checksum of each tensor across processes before a
        checkpoint (only the main process writes it, so a drifted replica would be lost
        silently). Raises naming the first tensors that differ."""
        import torch.distributed as dist

        tensors: dict[str, torch.Tensor] = {}
        for name, net in self.networks.items():
            if name in self.sharded:  # each process holds its own shard: nothing to compare
                continue
            for key, value in net.state_dict().items():
                tensors[f"{name}.{key}"] = value
        if self.ema is not None:
            for name in self.ema.networks:
                for key, value in self.ema.state_dict(name).items():
                    tensors[f"ema.{name}.{key}"] = value
        names = sorted(tensors)
        if not names:  # every network sharded
            return
        local = torch.stack([
            torch.stack([tensors[n].detach().double().sum(),
                         tensors[n].detach().double().pow(2).sum()]) for n in names
        ]).to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        bad = [names[i] for i in range(len(names))
               if any(not torch.equal(g[i], gathered[0][i]) for g in gathered[1:])]
        if bad:
            raise SoundryError(
                f"step {step}: the processes' copies of {len(bad)} tensors differ (first: "
                f"{', '.join(bad[:5])}); a per-process random draw or an unsynchronised "
                "buffer update made them drift. Not writing the checkpoint.")

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
        elif self.sharded:  # a sharded forward pass needs every process's shards
            try:
                self._validation_result(step)
            except Exception as exc:
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

    def _validation_result(self, step: int) -> Any:
        """The task's validation of `step` in eval mode, under the EMA weights when kept."""
        flags = {m: m.training for net in self.networks.values() for m in net.modules()}
        for net in self.networks.values():
            net.eval()
        swap = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        try:
            with swap, torch.no_grad(), autocast_context(self.accelerator, self.cfg.precision), \
                    isolated_rng(derive_seed(self.recipe.seed, 2, step)):
                result = self.task.validate(step)
        finally:
            for module, flag in flags.items():
                module.training = flag
        return result

    def _validate_main(self, step: int) -> tuple[str, float] | None:
        result = self._validation_result(step)
        metrics = {f"valid/{k}": float(v) for k, v in result.metrics.items()}
        self.last_valid = metrics
        assert self.logger is not None
        if metrics:
            # the training time reached, for quality-against-compute curves (not a score:
            # the health monitors and the best checkpoint see only the task's metrics)
            extra = {"valid/train_minutes": self.clock.minutes} if self.clock.active else {}
            self.logger.valid(step, {**metrics, **extra})
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
        self.progress = Progress(cfg.max_steps, self.step, cfg.progress and self.is_main,
                                 budget_minutes=cfg.budget_minutes,
                                 spent_minutes=lambda: self.clock.minutes)
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
        out_of_time = False
        while self.step < cfg.max_steps and not out_of_time:
            t_iter = time.perf_counter()
            side_before = self.valid_seconds + self.checkpoint_seconds
            step = self.step + 1
            micro_batches: list[Any] = []
            if cfg.grad_accum > 1:  # the task sees the whole step before it trains on it
                t_data = time.perf_counter()
                with section("data"):
                    micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
                data_wait += time.perf_counter() - t_data
                with section("task"):
                    task.begin_step(step, micro_batches)
            for micro in range(cfg.grad_accum):
                t_data = time.perf_counter()
                with section("data"):
                    host_batch = micro_batches[micro] if micro_batches else next(batches)
                data_wait += time.perf_counter() - t_data
                with section("health"):
                    health.on_batch(step, host_batch)
                with section("data"):
                    batch = send_to_device(host_batch, device, non_blocking=True)
                updater.begin(micro)
                with autocast_context(self.accelerator, cfg.precision), section("task"):
                    out = task.train_step(batch, step, updater)
                for key, value in (out or {}).items():
                    self.acc.add(key, value)
            updater.finish()
            with section("health"):
                health.on_step(step, out or {}, updater.step_values)
            self.step = step
            steps_since += 1
            if self.ema is not None:
                with section("ema"):
                    self.ema.update(step)
            self.consecutive_skips = self.consecutive_skips + 1 if updater.skipped_this_step else 0
            t_mark = time.perf_counter()
            if self.first_step_seconds is None:
                self.first_step_seconds = t_mark - t_iter
                if self.compiled and self.is_main:
                    log.info("first step (with compilation): %.1f s", self.first_step_seconds)
            self.clock.add(t_mark - t_iter)
            t_iter = t_mark  # the rest of this step is counted at its end
            point_due = False
            if self.clock.active:
                point_due = self.clock.take_due()
                out_of_time = self.clock.exhausted()
                if self.world_size > 1:
                    out_of_time, point_due = self.clock.agree(point_due, device)
                self.clock.decide()  # what the next step's lr and phase read
            final = step == cfg.max_steps or out_of_time

            if step % cfg.log_every == 0 or final:
                with section("logging"):
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

            for hook in self.step_hooks:
                hook(step)
            best = None
            if step % cfg.valid_every == 0 or final or point_due:
                t_valid, c_valid = time.perf_counter(), time.process_time()
                best = self._validate(step)
                self.valid_seconds += time.perf_counter() - t_valid
                self.side_cpu_seconds += time.process_time() - c_valid
            due = step % cfg.checkpoint_every == 0 or final or point_due or best is not None
            if due:
                if self.consecutive_skips == 0 or final:
                    if best is not None:  # recorded only with the checkpoint it names
                        self.ckpt.set_best(step_name(step), *best)
                    t_save, c_save = time.perf_counter(), time.process_time()
                    if self.world_size > 1:
                        self._check_replicas(step)
                    save_checkpoint(self, step)
                    self.checkpoint_seconds += time.perf_counter() - t_save
                    self.side_cpu_seconds += time.process_time() - c_save
                else:
                    log.warning("step %d: skipping the checkpoint during a run of non-finite "
                                "updates", step)
            if health.active and (step % self.recipe.health.check_every == 0 or final):
                with section("health"):
                    health.check(step)
            side = self.valid_seconds + self.checkpoint_seconds - side_before
            self.clock.add(time.perf_counter() - t_iter - side)
            if self._kill_at == step:
                os.kill(os.getpid(), signal.SIGKILL)
        if health.active:
            health.check(self.step)
            health.save_state(self.step)
        loop_seconds = time.perf_counter() - loop_t0
        self.train_cpu_seconds = time.process_time() - loop_c0 - self.side_cpu_seconds
        if status == "completed" and out_of_time:
            message = (f"the {cfg.budget_minutes:g}-minute training budget was spent at step "
                       f"{self.step} (train.budget_minutes)")
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
            # the session's first step (with train.compile: the compilation)
            "first_step_seconds": self.first_step_seconds,
            "compiled": self.compiled,
            # training time of all sessions of the run (what train.budget_minutes limits)
            "train_minutes_total": self.clock.minutes,
            "budget_minutes": self.cfg.budget_minutes,
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
