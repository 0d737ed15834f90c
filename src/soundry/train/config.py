"""Config schema of the training engine (the `train:` section) and of optimizers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from soundry.config import Strict


class TrainConfig(Strict):
    """How the engine runs a task: length, precision, logging, checkpoints, guards."""

    max_steps: int = Field(1000, ge=1)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    grad_accum: int = Field(1, ge=1)
    log_every: int = Field(10, ge=1)
    valid_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    best_metric: str | None = None
    best_mode: Literal["min", "max"] = "min"
    nan_patience: int = Field(10, ge=1)
