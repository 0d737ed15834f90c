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

`discriminator_seconds` makes every discriminator pass cheaper on long items: the
discriminators score one random window of that length of each (real, generated) pair, the
same window of both, so feature matching compares like with like; the reconstruction losses
still see the whole signal. (A one-shot VAE's 1 s at 44.1 kHz costs ~4x its generator step
in discriminator passes otherwise.)

`ramp_steps` eases a phase in: the adversarial and feature-matching weights grow linearly
over the phase's first `ramp_steps` steps, to k / ramp_steps of their values at the phase's
k-th step (1 / ramp_steps on the first, full from step `ramp_steps` on), so the generator, fresh
from a reconstruction-only warm-up, is not hit by the full adversarial gradient at once.

Steps here are 0-based (the first optimizer step is step 0); the engine numbers steps from 1,
and tasks pass `step - 1`.
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
    ramp_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        if not (self.generator or self.discriminator):
            raise ValueError(f"phase '{self.name}' trains neither generator nor discriminator")
        return self


class GanScheduleConfig(Strict):
    """Ordered phases; only the last phase may leave `steps` unset (runs to the end)."""

    phases: list[PhaseConfig] = Field(default_factory=lambda: [PhaseConfig()])
    discriminator_seconds: float | None = Field(None, gt=0)

    def window_samples(self, sample_rate: int) -> int | None:
        """`discriminator_seconds` in samples at `sample_rate` (None: the whole signal)."""
        if self.discriminator_seconds is None:
            return None
        return max(1, round(self.discriminator_seconds * sample_rate))

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
        return self.position(step)[0]

    def position(self, step: int) -> tuple[PhaseConfig, int]:
        """(phase, steps since the phase began) of 0-based `step`."""
        start = 0
        for phase in self.phases:
            if phase.steps is None or step < start + phase.steps:
                return phase, step - start
            start += phase.steps
        last = self.phases[-1]
        return last, step - (start - (last.steps or 0))

    def ramp(self, step: int) -> float:
        """The adversarial ramp factor in [0, 1] at 0-based `step` (1 without a ramp)."""
        phase, offset = self.position(step)
        if not phase.ramp_steps:
            return 1.0
        return min(1.0, (offset + 1) / phase.ramp_steps)

    def boundaries(self) -> list[tuple[int, str]]:
        """(first step, phase name) of each phase."""
        out, start = [], 0
        for phase in self.phases:
            out.append((start, phase.name))
            start += phase.steps or 0
        return out
