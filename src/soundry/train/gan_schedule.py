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

A phase may instead last `until` a fraction of the run is spent: of `train.budget_minutes`
of training time when the run has a budget, else of `train.max_steps`. A budgeted recipe
then keeps its shape on a CPU twice as slow (the warm-up still ends at, say, 70% of the
hour, not after a step count that machine never reaches)::

    schedule:
      phases:
        - {name: warmup, until: 0.7, discriminator: false, adversarial: false}
        - {name: gan, ramp_steps: 100}

A time-defined boundary becomes a step the first time the run's progress reaches it
(`PhaseTimer`); the step is kept in checkpoints, so a resumed run keeps its phases.

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

import logging
import math
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from soundry.config import Strict

log = logging.getLogger("soundry.train")


class PhaseConfig(Strict):
    """One phase of training. `weights` overrides loss weights (by loss name) in this phase."""

    name: str = "gan"
    steps: int | None = Field(None, ge=1)
    # instead of `steps`: the phase ends once this fraction of the run is spent (0..1]
    until: float | None = Field(None, gt=0.0, le=1.0)
    generator: bool = True
    discriminator: bool = True
    adversarial: bool = True
    weights: dict[str, float] = Field(default_factory=dict)
    ramp_steps: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        if not (self.generator or self.discriminator):
            raise ValueError(f"phase '{self.name}' trains neither generator nor discriminator")
        if self.steps is not None and self.until is not None:
            raise ValueError(f"phase '{self.name}' sets both 'steps' and 'until': keep one")
        return self

    @property
    def open_ended(self) -> bool:
        return self.steps is None and self.until is None


class GanScheduleConfig(Strict):
    """Ordered phases; only the last phase may leave both `steps` and `until` unset (it runs
    to the end)."""

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
            if phase.open_ended:
                raise ValueError(
                    f"phase '{phase.name}' has neither 'steps' nor 'until' but is not the "
                    "last phase"
                )
        untils = [p.until for p in self.phases if p.until is not None]
        if any(b <= a for a, b in zip(untils, untils[1:], strict=False)):
            raise ValueError(f"phase 'until' points must increase strictly, got {untils}")
        return self

    def phase_at(self, step: int) -> PhaseConfig:
        """The phase that step `step` (0-based) belongs to; after the end, the last phase.
        Phases with `until` need a `PhaseTimer`; here they are taken as never ending."""
        return PhaseTimer(self).position(step)[0]

    def position(self, step: int) -> tuple[PhaseConfig, int]:
        """(phase, steps since the phase began) of 0-based `step` (see `phase_at`)."""
        return PhaseTimer(self).position(step)

    def ramp(self, step: int) -> float:
        """The adversarial ramp factor in [0, 1] at 0-based `step` (1 without a ramp)."""
        return PhaseTimer(self).ramp(step)

    def boundaries(self) -> list[tuple[int, str]]:
        """(first step, phase name) of each phase (see `phase_at`)."""
        return PhaseTimer(self).boundaries()


class PhaseTimer:
    """A schedule's phases as step ranges, resolving `until` boundaries as the run goes.

    `progress()` is the fraction of the run spent so far (0..1; the engine's training clock
    over the budget as decided at the end of the previous step, the same on every process).
    Only the steps a run trains resolve boundaries (`position(step, resolve=True)`, which
    `GanStep.plan` does for the step it plans): a phase with `until: u` ends at the first
    such step at which progress >= u, and that step is kept (`state_dict`), so later
    questions about any step get the same answer. Questions with `resolve=False` only read:
    an unresolved boundary counts as not reached. Without `progress` (no budget), `until: u`
    ends at step ceil(u * max_steps) when `max_steps` is known (and never otherwise), kept
    in the same way once a trained step passes it, so a resume with another `max_steps`
    does not move a boundary the run already crossed.
    """

    def __init__(self, schedule: GanScheduleConfig, progress: Callable[[], float] | None = None,
                 max_steps: int | None = None) -> None:
        self.schedule = schedule
        self.progress = progress
        self.max_steps = max_steps
        self.ends: dict[int, int] = {}  # phase index -> first step after it (0-based)

    def _end(self, index: int, start: int, step: int, resolve: bool) -> int | None:
        """The first step after phase `index` (starting at `start`); an `until` boundary is
        resolved (and kept) at trained `step` when it is due and `resolve`; None while the
        end is not known."""
        phase = self.schedule.phases[index]
        if phase.steps is not None:
            return start + phase.steps
        if phase.until is None:
            return None
        if index in self.ends:
            return max(start, self.ends[index])
        if self.progress is None:
            if self.max_steps is None:
                return None
            end = max(start, math.ceil(phase.until * self.max_steps))
            if resolve and step >= end:
                self._keep(index, start, end)
            return end
        if resolve and step >= start and self.progress() >= phase.until:
            self._keep(index, start, step)
            return step
        return None

    def _keep(self, index: int, start: int, end: int) -> None:
        self.ends[index] = end
        if end <= start:
            phase = self.schedule.phases[index]
            log.warning("schedule phase '%s' got no steps: %.0f%% of the run was spent before "
                        "it began (step %d); the phases before it lasted longer than planned",
                        phase.name, 100 * (phase.until or 0.0), start)

    def position(self, step: int, resolve: bool = False) -> tuple[PhaseConfig, int]:
        """(phase, steps since the phase began) of 0-based `step`; `resolve`: `step` is a
        step the run trains now (see the class docstring)."""
        start = 0
        phases = self.schedule.phases
        for index, phase in enumerate(phases):
            end = self._end(index, start, step, resolve)
            if end is None or step < end or index == len(phases) - 1:
                return phase, step - start
            start = end
        raise AssertionError("unreachable: the last phase always returns")

    def phase_at(self, step: int, resolve: bool = False) -> PhaseConfig:
        return self.position(step, resolve)[0]

    def ramp(self, step: int, resolve: bool = False) -> float:
        """The adversarial ramp factor in [0, 1] at 0-based `step` (1 without a ramp)."""
        phase, offset = self.position(step, resolve)
        if not phase.ramp_steps:
            return 1.0
        return min(1.0, (offset + 1) / phase.ramp_steps)

    def boundaries(self) -> list[tuple[int, str]]:
        """(first step, phase name) of each phase whose start is known."""
        out, start = [], 0
        for index, phase in enumerate(self.schedule.phases):
            out.append((start, phase.name))
            end = self._end(index, start, -1, resolve=False)
            if end is None:
                break
            start = end
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"ends": {str(k): v for k, v in self.ends.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ends = {int(k): int(v) for k, v in (state.get("ends") or {}).items()}
