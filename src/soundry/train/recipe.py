"""Fields every recipe has, whatever its task."""

from __future__ import annotations

from pydantic import Field

from soundry.config import Strict
from soundry.data.config import DataConfig
from soundry.health.config import HealthConfig
from soundry.train.config import TrainConfig


class RecipeBase(Strict):
    """`task` names the system; `seed` seeds every random choice of the run."""

    task: str
    name: str | None = None
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
