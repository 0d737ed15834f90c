"""A training-time budget: stop on wall-clock minutes of training, validate at time points.

`train.budget_minutes: M` stops a run once its training time reaches M minutes, or at
`train.max_steps`, whichever comes first. Training time is the wall-clock time of the
optimizer steps (data, forward, backward, update, logging, health checks); validations and
checkpoint writes do not count, and it is summed across resumes (kept in the checkpoint),
so a run killed at minute 40 and resumed stops after 20 more minutes of steps.

`train.valid_at_minutes: [5, 15, 30, 60]` validates (and checkpoints) at the first step
whose training time reaches each point, besides every `valid_every` steps; every validation
line records `valid/train_minutes`, so a report can draw quality against compute.

With a budget, a cosine lr schedule without an explicit `total_steps` decays over the budget:
its position is the fraction of the budget spent, not of `max_steps` (see
`soundry.train.optim.ScheduledLR.follow`), and a schedule phase may last `until` a fraction
of it (`soundry.train.gan_schedule.PhaseTimer`). Both read `decided_fraction`: the training
time as it stood at the last step's decision point (the main process's, on every process),
not the live clock, which each process advances by its own logging and health time.

Several processes must stop at, and validate at, the same step: the main process's clock
decides and the others follow (`TrainClock.agree`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class TrainClock:
    """Training seconds of a run (this session's plus the resumed ones'), the budget and
    the validation time points.

    budget_minutes: None for no time limit. points_minutes: validation points (minutes of
    training time); a point is due once, at the first step that reaches it.
    """

    def __init__(self, budget_minutes: float | None = None,
                 points_minutes: Sequence[float] = ()) -> None:
        self.budget_s = None if budget_minutes is None else 60.0 * float(budget_minutes)
        self.points_s = sorted(60.0 * float(p) for p in points_minutes)
        self.seconds = 0.0  # training seconds so far, all sessions
        self.decided = 0.0  # `seconds` at the last decision point (see `decide`)
        self._next_point = 0  # index of the first point not yet reached

    @property
    def active(self) -> bool:
        """Whether the clock decides anything (a budget or validation points are set)."""
        return self.budget_s is not None or bool(self.points_s)

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0

    def add(self, seconds: float) -> None:
        """Count `seconds` more of training time."""
        self.seconds += max(0.0, float(seconds))

    def fraction(self) -> float:
        """The part of the budget spent, 0..1 (0 without a budget)."""
        if self.budget_s is None:
            return 0.0
        return min(1.0, self.seconds / self.budget_s)

    def decide(self) -> None:
        """Fix the time that schedules read until the next call (after `agree` on several
        processes, so that every process reads the main process's time)."""
        self.decided = self.seconds

    def decided_fraction(self) -> float:
        """The part of the budget spent at the last `decide`, 0..1 (0 without a budget)."""
        if self.budget_s is None:
            return 0.0
        return min(1.0, self.decided / self.budget_s)

    def exhausted(self) -> bool:
        return self.budget_s is not None and self.seconds >= self.budget_s

    def take_due(self) -> bool:
        """True once for each validation point the training time has reached since the last
        call (several points passed in one step count as one validation)."""
        due = False
        while self._next_point < len(self.points_s) and \
                self.seconds >= self.points_s[self._next_point]:
            self._next_point += 1
            due = True
        return due

    def agree(self, due: bool, device: torch.device) -> tuple[bool, bool]:
        """(budget exhausted, validation point due) as the main process sees them, on every
        process of a multi-process run (a collective: every process must call it)."""
        import torch.distributed as dist

        flags = torch.tensor([float(self.exhausted()), float(due), self.seconds],
                             dtype=torch.float64, device=device)
        dist.broadcast(flags, src=0)
        self.seconds = float(flags[2])
        return bool(flags[0]), bool(flags[1])

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "next_point": self._next_point}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = float(state.get("seconds", 0.0))
        self.decided = self.seconds
        # the points passed before the checkpoint stay passed; recounted from the restored
        # time, since a resumed recipe may list other points
        self._next_point = sum(p <= self.seconds for p in self.points_s)


__all__ = ["TrainClock"]
