"""The training-time budget (`train.budget_minutes`, `train.valid_at_minutes`): where a run
stops, when it validates, what counts as training time, resumes, and a cosine lr that
decays over the budget. Time is simulated: each training step advances a fake clock by 10 s
and each validation by 100 s, so step counts are exact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_engine_basic import LinearTask, toy_recipe

from soundry.errors import ConfigError
from soundry.train import engine as engine_mod
from soundry.train.budget import TrainClock
from soundry.train.config import CosineSchedule
from soundry.train.engine import Engine
from soundry.train.gan_schedule import GanScheduleConfig, PhaseTimer
from soundry.train.logging import read_metrics
from soundry.train.optim import ScheduledLR
from soundry.train.task import OptimizerSpec, TaskContext, Validation

STEP_S, VALID_S = 10.0, 100.0


class FakeTime:
    """Stands in for the engine's `time` module: perf_counter moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(engine_mod, "time", fake)
    return fake


class TimedTask(LinearTask):
    """A step costs STEP_S seconds and a validation VALID_S; the lr follows a cosine."""

    def __init__(self, recipe: Any, fake: FakeTime, cosine: bool = False) -> None:
        super().__init__(recipe, TaskContext(), [torch.ones(1, 2)], lr=0.1)
        self.fake, self.cosine = fake, cosine

    def optimizers(self) -> list[OptimizerSpec]:
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr)
        sched = ScheduledLR(opt, CosineSchedule(), total_steps=1000) if self.cosine else None
        return [OptimizerSpec("net", ["net"], opt, sched, None)]

    def train_step(self, batch: torch.Tensor, step: int, updater: Any) -> dict[str, Any]:
        self.fake.now += STEP_S
        return super().train_step(batch, step, updater)

    def validate(self, step: int) -> Validation:
        self.fake.now += VALID_S
        return super().validate(step)


def _run(tmp_path: Path, fake: FakeTime, train: dict[str, Any], cosine: bool = False,
         resume: bool = False, name: str = "run") -> tuple[dict[str, Any], list[dict]]:
    recipe = toy_recipe({"max_steps": 100, "log_every": 1, **train})
    summary = Engine(TimedTask(recipe, fake, cosine), recipe, tmp_path / name,
                     resume=resume).fit()
    return summary, read_metrics(tmp_path / name / "metrics.jsonl")


def test_budget_stops_the_run_and_validations_do_not_count(tmp_path: Path, fake_time) -> None:
    summary, lines = _run(tmp_path, fake_time, {"budget_minutes": 1.0,
                                                "valid_at_minutes": [0.25, 0.5]})
    # 6 steps of 10 s fill the minute; the validations' 100 s each are not training time
    assert summary["steps"] == 6 and summary["status"] == "completed"
    assert summary["train_minutes_total"] == pytest.approx(1.0)
    assert "budget" in summary["message"]
    valid = [r for r in lines if r["kind"] == "valid"]
    # 0.25 min is reached at step 2 (20 s), 0.5 at step 3, the end at step 6
    assert [r["step"] for r in valid] == [2, 3, 6]
    assert [r["valid/train_minutes"] for r in valid] == pytest.approx([20 / 60, 0.5, 1.0])
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert "step_00000006" in ckpts


def test_max_steps_still_ends_a_run_under_budget(tmp_path: Path, fake_time) -> None:
    summary, _ = _run(tmp_path, fake_time, {"budget_minutes": 10.0, "max_steps": 4})
    assert summary["steps"] == 4 and "budget" not in summary["message"]


def test_budget_is_summed_across_resumes(tmp_path: Path, fake_time) -> None:
    first, _ = _run(tmp_path, fake_time, {"budget_minutes": 1.0, "max_steps": 4,
                                          "checkpoint_every": 2})
    assert first["steps"] == 4
    # resumed from step 4 (40 s spent): 2 more steps fill the minute
    second, lines = _run(tmp_path, fake_time, {"budget_minutes": 1.0, "checkpoint_every": 2,
                                               "valid_at_minutes": [0.5]}, resume=True)
    assert second["steps"] == 6 and second["steps_this_session"] == 2
    assert second["train_minutes_total"] == pytest.approx(1.0)
    # step 4 ended the first session; the 0.5-minute point (30 s) passed before that
    # checkpoint, so the resumed session does not validate at step 5 for it
    assert [r["step"] for r in lines if r["kind"] == "valid"] == [4, 6]


def test_cosine_lr_decays_over_the_budget(tmp_path: Path, fake_time) -> None:
    _, lines = _run(tmp_path, fake_time, {"budget_minutes": 1.0}, cosine=True)
    lrs = [r["lr/net"] for r in lines if r["kind"] == "train"]
    # the lr logged at step k (the one step k+1 uses) is set by step k's update, when the
    # clock holds the k-1 steps before it: (k-1) x 10 s of the 60 s
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * (k - 1) / 6)) for k in range(1, 7)]
    assert lrs == pytest.approx(expected, abs=1e-9)


def test_cosine_without_budget_follows_max_steps(tmp_path: Path, fake_time) -> None:
    _, lines = _run(tmp_path, fake_time, {"max_steps": 6}, cosine=True)
    lrs = [r["lr/net"] for r in lines if r["kind"] == "train"]
    # total_steps=1000: barely moves in 6 steps
    assert min(lrs) > 0.0999
    assert not any("valid/train_minutes" in r for r in lines)


def test_budget_config_errors() -> None:
    with pytest.raises(ConfigError, match="never come"):
        toy_recipe({"budget_minutes": 1.0, "valid_at_minutes": [5.0]})
    # the error names the override that fixes it: the points within the shorter budget
    with pytest.raises(ConfigError, match=r"train\.valid_at_minutes=\[0\.5\]"):
        toy_recipe({"budget_minutes": 1.0, "valid_at_minutes": [0.5, 5.0]})
    with pytest.raises(ConfigError, match="positive"):
        toy_recipe({"valid_at_minutes": [0.0]})
    with pytest.raises(ConfigError):
        toy_recipe({"budget_minutes": -1.0})


def test_clock_points_fire_once_and_restore_from_the_time() -> None:
    clock = TrainClock(2.0, [0.5, 1.0, 1.5])
    clock.add(65.0)  # past 0.5 and 1.0 in one go: one validation
    assert clock.take_due() and not clock.take_due()
    assert clock.fraction() == pytest.approx(65 / 120) and not clock.exhausted()
    other = TrainClock(2.0, [0.5, 1.0, 1.5])
    other.load_state_dict(clock.state_dict())
    assert not other.take_due()
    other.add(30.0)
    assert other.take_due() and other.minutes == pytest.approx(95 / 60)
    other.add(100.0)
    assert other.exhausted() and other.fraction() == 1.0
    assert not TrainClock().active and TrainClock().fraction() == 0.0


# ----------------------------------------------------------------------------- timed phases

PHASES = {"phases": [{"name": "warmup", "until": 0.5, "discriminator": False,
                      "adversarial": False}, {"name": "gan", "ramp_steps": 2}]}


class PhasedTask(TimedTask):
    """Records the GAN schedule's phase of every step (a phase that lasts `until` half the
    run); the schedule's resolved boundaries travel in the checkpoints' extra state."""

    def __init__(self, recipe: Any, fake: FakeTime) -> None:
        super().__init__(recipe, fake)
        from soundry.train.gan import GanStep

        self.gan = GanStep(torch.nn.Identity(), GanScheduleConfig(**PHASES), ctx=self.ctx)
        self.seen: dict[int, str] = {}

    def train_step(self, batch: torch.Tensor, step: int, updater: Any) -> dict[str, Any]:
        self.seen[step] = self.gan.plan(step, {}).phase.name
        return super().train_step(batch, step, updater)

    def extra_state(self) -> dict[str, Any]:
        return {"gan": self.gan.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.gan.load_state_dict(state.get("gan") or {})


def test_a_phase_lasts_until_a_fraction_of_the_budget(tmp_path: Path, fake_time) -> None:
    recipe = toy_recipe({"max_steps": 100, "log_every": 1, "budget_minutes": 1.0})
    task = PhasedTask(recipe, fake_time)
    Engine(task, recipe, tmp_path / "run").fit()
    # step k runs with (k - 1) x 10 s of the 60 s spent: half the budget is reached at step 4
    assert task.seen == {1: "warmup", 2: "warmup", 3: "warmup", 4: "gan", 5: "gan", 6: "gan"}
    assert task.gan.timer.boundaries() == [(0, "warmup"), (3, "gan")]
    assert task.gan.plan(5, {"adversarial": 1.0}).weights["adversarial"] == 1.0  # ramp done
    assert task.gan.plan(4, {"adversarial": 1.0}).weights["adversarial"] == 0.5


def test_a_resumed_run_keeps_its_resolved_phase_boundary(tmp_path: Path, fake_time) -> None:
    first = toy_recipe({"max_steps": 5, "log_every": 1, "budget_minutes": 1.0,
                        "checkpoint_every": 5})
    Engine(PhasedTask(first, fake_time), first, tmp_path / "run").fit()
    # resumed with twice the budget: progress at step 6 is 50 s of 120 s, below the
    # phase's 0.5, yet the boundary already passed at step 4 stays where it was
    longer = toy_recipe({"max_steps": 100, "log_every": 1, "budget_minutes": 2.0})
    task = PhasedTask(longer, fake_time)
    Engine(task, longer, tmp_path / "run", resume=True).fit()
    assert set(task.seen.values()) == {"gan"} and min(task.seen) == 6


def test_phase_timer_without_a_budget_uses_max_steps_and_answers_consistently() -> None:
    schedule = GanScheduleConfig(**PHASES)
    static = PhaseTimer(schedule, None, max_steps=10)
    assert [static.phase_at(s).name for s in (0, 4, 5, 9)] == ["warmup"] * 2 + ["gan"] * 2
    # no budget and no step count: the timed phase never ends
    assert PhaseTimer(schedule).phase_at(10 ** 6).name == "warmup"
    progress = {"value": 0.0}
    timer = PhaseTimer(schedule, lambda: progress["value"])
    assert timer.phase_at(7, resolve=True).name == "warmup"
    progress["value"] = 0.6
    # a question about another step only reads: it does not pin the boundary there
    assert timer.phase_at(20).name == "warmup" and timer.ends == {}
    assert timer.phase_at(8, resolve=True).name == "gan"
    progress["value"] = 0.0  # once resolved, the boundary no longer depends on progress
    assert [timer.phase_at(s).name for s in (7, 8, 20)] == ["warmup", "gan", "gan"]
    restored = PhaseTimer(schedule)
    restored.load_state_dict(timer.state_dict())
    assert restored.boundaries() == timer.boundaries() == [(0, "warmup"), (8, "gan")]


def test_a_crossed_step_boundary_stays_when_max_steps_changes() -> None:
    timer = PhaseTimer(GanScheduleConfig(**PHASES), None, max_steps=10)
    assert timer.phase_at(6, resolve=True).name == "gan" and timer.ends == {0: 5}
    resumed = PhaseTimer(GanScheduleConfig(**PHASES), None, max_steps=40)
    resumed.load_state_dict(timer.state_dict())
    assert resumed.phase_at(7).name == "gan"  # not back to the warm-up until step 20


def test_a_phase_whose_point_passed_before_it_began_is_skipped_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    schedule = GanScheduleConfig(phases=[
        {"name": "warmup", "steps": 5, "discriminator": False, "adversarial": False},
        {"name": "disc", "until": 0.1, "generator": False}, {"name": "gan"}])
    timer = PhaseTimer(schedule, lambda: 0.5)
    with caplog.at_level("WARNING", logger="soundry.train"):
        assert timer.phase_at(4, resolve=True).name == "warmup"
        assert timer.phase_at(5, resolve=True).name == "gan"
    assert "phase 'disc' got no steps" in caplog.text


def test_schedules_read_the_decided_time_not_the_live_clock() -> None:
    clock = TrainClock(1.0)
    clock.add(30.0)
    clock.decide()
    clock.add(5.0)  # this process's own logging time after the decision point
    assert clock.decided_fraction() == pytest.approx(0.5) and clock.fraction() > 0.5
    restored = TrainClock(1.0)
    restored.load_state_dict(clock.state_dict())
    assert restored.decided_fraction() == pytest.approx(35 / 60)


def test_timed_phase_config_errors() -> None:
    with pytest.raises(ValueError, match="both 'steps' and 'until'"):
        GanScheduleConfig(phases=[{"name": "a", "steps": 3, "until": 0.5}, {"name": "b"}])
    with pytest.raises(ValueError, match="must increase"):
        GanScheduleConfig(phases=[{"name": "a", "until": 0.6}, {"name": "b", "until": 0.3},
                                  {"name": "c"}])
    with pytest.raises(ValueError, match="must increase strictly"):
        GanScheduleConfig(phases=[{"name": "a", "until": 0.5}, {"name": "b", "until": 0.5},
                                  {"name": "c"}])
    with pytest.raises(ValueError, match="neither 'steps' nor 'until'"):
        GanScheduleConfig(phases=[{"name": "a"}, {"name": "b"}])
    with pytest.raises(ValueError):
        GanScheduleConfig(phases=[{"name": "a", "until": 1.5}, {"name": "b"}])
