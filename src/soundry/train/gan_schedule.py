"""Adversarial training schedules: which networks train, and with which loss weights, when.

A schedule is a list of phases run in order. Each phase lasts `steps` optimizer steps (the
last may be open-ended) and says whether the generator and discriminator train, whether the
generator sees adversarial and feature-matching losses, and which loss weights it
overrides. The usual codec recipe is::

    schedule:
      phases:
        - {name: warmup, steps: 2000, discriminator: false, adversarial: false}  # recon only
        - {name: disc, steps: 500, generator: false}                             # D catches up
        - {name: gan}                                                            # full GAN

and an "adversarial-only" fine-tuning phase is just `weights: {mel: 0}`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from soundry.config import Strict


class PhaseConfig(Strict):
    """One phase of training. `weights` overrides loss weights (by loss name) in this phase."""

    name: str = "gan"
    steps: int | None = Field(None, ge=1)
    generator: bool = True
    discriminator: bool = True
    adversarial: bool = True
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        if not (self.generator or self.discriminator):
            raise ValueError(f"phase '{self.name}' trains neither generator nor discriminator")
        return self


class GanScheduleConfig(Strict):
    """Ordered phases; only the last phase may leave `steps` unset (runs to the end)."""

    phases: list[PhaseConfig] = Field(default_factory=lambda: [PhaseConfig()])

    @model_validator(mode="after")
    def _check(self) -> GanScheduleConfig:
        if not self.phases:
            raise ValueError("schedule needs at least one phase")
        for phase in self.phases[:-1]:
            if phase.steps is None:
                raise ValueError(
                    f"phase '{phase.name}' has no 'steps' but is not the last phase"
                )
        return self

    def phase_at(self, step: int) -> PhaseConfig:
        """The phase that step `step` (0-based) belongs to; after the end, the last phase."""
        start = 0
        for phase in self.phases:
            if phase.steps is None or step < start + phase.steps:
                return phase
            start += phase.steps
        return self.phases[-1]

    def boundaries(self) -> list[tuple[int, str]]:
        """(first step, phase name) of each phase."""
        out, start = [], 0
        for phase in self.phases:
            out.append((start, phase.name))
            start += phase.steps or 0
        return out
