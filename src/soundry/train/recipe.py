"""Fields every recipe has, whatever its task, and the checks every recipe gets."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from soundry.config import Strict
from soundry.data.config import DataConfig
from soundry.health.config import HealthConfig
from soundry.losses.terms import LossTerms
from soundry.train.config import TrainConfig
from soundry.train.gan_schedule import GanScheduleConfig


class RecipeBase(Strict):
    """`task` names the system; `seed` seeds every random choice of the run.

    A task's recipe class declares the loss terms its step computes in `loss_terms`; a
    `schedule:` section's per-phase `weights:` may only name those.
    """

    loss_terms: ClassVar[LossTerms] = LossTerms([])

    task: str
    name: str | None = None
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

    def declared_terms(self) -> LossTerms:
        """The terms this recipe's step computes: `loss_terms`, plus any a recipe declares
        from its own content (a semantic codec's `distill_<teacher>`)."""
        return self.loss_terms

    @model_validator(mode="after")
    def _phase_weights_name_terms(self) -> RecipeBase:
        schedule = getattr(self, "schedule", None)
        if isinstance(schedule, GanScheduleConfig):
            for phase in schedule.phases:
                self.declared_terms().check(phase.weights, f"schedule phase '{phase.name}'")
        return self
