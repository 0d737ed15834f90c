"""Config schema of the training engine (the `train:` section) and of optimizers.

Pure pydantic (no torch import), so recipes can be validated before any heavy import.
The optimizer classes are built by `soundry.train.optim.build_optimizer`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from soundry.config import Strict

# ----------------------------------------------------------------------------- lr schedules


class ConstantSchedule(Strict):
    """The same lr at every step (after an optional linear warm-up)."""

    type: Literal["constant"] = "constant"
    warmup_steps: int = Field(0, ge=0)


class WarmupSchedule(Strict):
    """Linear warm-up from lr/warmup_steps to lr over `warmup_steps`, then constant."""

    type: Literal["warmup"] = "warmup"
    warmup_steps: int = Field(1000, ge=1)


class ExponentialSchedule(Strict):
    """lr * gamma**(step - warmup_steps) after warm-up; `gamma` is per optimizer step.

    DAC uses gamma = 0.999996. `min_ratio` floors the decay at lr * min_ratio.
    """

    type: Literal["exponential"] = "exponential"
    gamma: float = Field(0.999996, gt=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    min_ratio: float = Field(0.0, ge=0, le=1)


class CosineSchedule(Strict):
    """Half-cosine from lr to lr * min_ratio over `total_steps` (None: train.max_steps)."""

    type: Literal["cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    total_steps: int | None = Field(None, ge=1)
    min_ratio: float = Field(0.0, ge=0, le=1)


ScheduleConfig = Annotated[
    ConstantSchedule | WarmupSchedule | ExponentialSchedule | CosineSchedule,
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------- optimizers


class AdamWConfig(Strict):
    """torch.optim.AdamW for every parameter of the networks it is given.

    `decay_1d`: apply weight decay to < 2-D parameters (biases, gains) too; off by default.
    `clip`: max global grad norm of this optimizer's parameters (None: no clipping; the
    norm is logged either way).
    """

    type: Literal["adamw"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    decay_1d: bool = False
    clip: float | None = Field(None, gt=0)
    schedule: ScheduleConfig = Field(default_factory=ConstantSchedule)


class MuonConfig(Strict):
    """Muon for hidden matrix weights, an internal AdamW for everything else.

    Routing (see `soundry.train.optim.route_parameters`): weights of Linear / ConvNd /
    ConvTransposeNd layers (and their weight-norm direction) go to Muon; biases, weight-norm
    gains, embeddings, all < 2-D parameters, parameters of modules marked
    `muon_exclude = True`, names matching an `adamw_params` glob ("<net>.<param name>") and,
    with `exclude_last_layer`, each network's last Linear/Conv layer (its output layer) go to
    AdamW.

    `adjust_lr`: "match_rms_adamw" scales Muon's lr by 0.2 * sqrt(max(rows, cols)) so an
    AdamW lr and weight decay carry over (then `lr` ~ 3e-4); "original" scales by
    sqrt(max(1, rows / cols)) (then `lr` ~ 0.02). `adamw_lr` None: the same `lr`.
    """

    type: Literal["muon"] = "muon"
    lr: float = Field(3e-4, gt=0)
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, le=20)
    weight_decay: float = Field(0.1, ge=0)
    adjust_lr: Literal["match_rms_adamw", "original", "none"] = "match_rms_adamw"
    adamw_lr: float | None = Field(None, gt=0)
    adamw_betas: tuple[float, float] = (0.9, 0.95)
    adamw_eps: float = Field(1e-8, gt=0)
    adamw_weight_decay: float = Field(0.0, ge=0)
    adamw_params: list[str] = Field(default_factory=list)
    exclude_last_layer: bool = True
    clip: float | None = Field(None, gt=0)
    schedule: ScheduleConfig = Field(default_factory=ConstantSchedule)


OptimizerConfig = Annotated[AdamWConfig | MuonConfig, Field(discriminator="type")]


# ----------------------------------------------------------------------------- engine


class EMAConfig(Strict):
    """Exponential moving average of network weights, used for validation and export.

    `networks` empty: the task's default (`Task.ema_networks()`). Before `start_step` the
    average simply copies the weights. shadow = beta * shadow + (1 - beta) * weights after
    every optimizer step.
    """

    networks: list[str] = Field(default_factory=list)
    beta: float = Field(0.999, gt=0, lt=1)
    start_step: int = Field(0, ge=0)


class WandbConfig(Strict):
    """Optional Weights & Biases logging (needs the `wandb` package)."""

    enabled: bool = False
    project: str = "soundry"
    entity: str | None = None
    mode: Literal["online", "offline"] = "online"


class TrainConfig(Strict):
    """How the engine runs a task: length, precision, logging, checkpoints, guards.

    Steps count optimizer steps (one step = `grad_accum` micro-batches). Schedules are
    in steps: `log_every` writes one train line to metrics.jsonl with means over the
    interval; `valid_every` validates; `checkpoint_every` writes a checkpoint, keeping the
    last `keep_last` plus the best by `best_metric` (a validation metric, with or without
    its 'valid/' prefix).
    """

    max_steps: int = Field(1000, ge=1)
    # stop once the training time (steps only: validations and checkpoints excluded; summed
    # across resumes) reaches this many minutes, or at max_steps (see soundry.train.budget)
    budget_minutes: float | None = Field(None, gt=0)
    # validate and checkpoint at the first step whose training time reaches each point
    valid_at_minutes: list[float] = Field(default_factory=list)
    # fp16: float16 autocast with dynamic loss scaling (one GradScaler per optimizer), for
    # GPUs without bf16 (V100 class); an overflowing step is skipped and the scale lowered
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    grad_accum: int = Field(1, ge=1)
    # shard the task's large networks over the processes (FSDP2; tasks that name shardable
    # units: the token LM). No effect on one process. See soundry.train.fsdp.
    fsdp: bool = False
    # torch.compile the task's networks and losses (static shapes; eager fallback with a
    # logged reason). See soundry.train.compiling.
    compile: bool = False
    log_every: int = Field(10, ge=1)
    valid_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    nan_patience: int = Field(10, ge=1)
    # device: "auto" uses the accelerator accelerate finds (GPU when present); "cpu" forces CPU.
    device: Literal["auto", "cpu"] = "auto"
    # intra-op CPU threads of torch (torch.set_num_threads); None leaves torch's default.
    threads: int | None = Field(None, ge=1)
    # torch.use_deterministic_algorithms (slower on GPU; CPU runs are deterministic anyway).
    deterministic: bool = False
    valid_at_start: bool = False
    ema: EMAConfig | None = None
    # parameter-name prefixes ('<network>.<submodule>') whose parameters are not trained
    freeze: list[str] = Field(default_factory=list)
    # export dir, checkpoint dir or run dir to initialise matching tensors from (by name)
    init_from: str | None = None
    # train on N fixed items (sanity check: the loss should go to ~0)
    overfit: int | None = Field(None, ge=1)
    tensorboard: bool = True
    tensorboard_audio: bool = True
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.best_metric is not None and not self.best_metric.strip():
            raise ValueError("best_metric must name a validation metric or be null")
        if any(not (p > 0) for p in self.valid_at_minutes):
            raise ValueError(f"valid_at_minutes must be positive minutes, got "
                             f"{self.valid_at_minutes}")
        if self.fsdp and self.ema is not None:
            raise ValueError("train.fsdp with train.ema: an EMA of sharded weights is not "
                             "supported; set train.ema: null")
        if self.budget_minutes is not None and any(p > self.budget_minutes
                                                   for p in self.valid_at_minutes):
            within = [p for p in self.valid_at_minutes if p <= self.budget_minutes]
            raise ValueError(f"valid_at_minutes {self.valid_at_minutes} has points past "
                             f"budget_minutes ({self.budget_minutes}): they would never come; "
                             f"with a shorter budget also set "
                             f"train.valid_at_minutes={within or [self.budget_minutes]}")
        return self

    @property
    def best_key(self) -> str | None:
        """`best_metric` as logged: 'valid/<name>'."""
        if self.best_metric is None:
            return None
        name = self.best_metric
        return name if name.startswith("valid/") else f"valid/{name}"
