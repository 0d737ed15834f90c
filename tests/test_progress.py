"""Training progress: plain, complete lines once per log interval when the output is not a
terminal (a log file, CI); the rich bar on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from soundry.train.engine import run_training
from soundry.train.logging import Progress, format_duration
from soundry.train.recipes import recipe_from_dict

LINE = re.compile(r"^step (\d+)/(\d+)  ([0-9.e+]+) it/s  ETA \d+:\d\d:\d\d"
                  r"(  loss\S* -?[0-9.e+-]+)*$")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_once_per_log_interval() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(10, 0, True, stream=out, clock=clock)
    losses = {"loss/g": 12.3, "loss/mel": 1.02, "acc/x": 0.5, "perf/steps_per_s": 9.0}
    for step in range(1, 11):
        clock.now += 0.5
        if step % 4 == 0 or step == 10:
            progress.update(step, losses)
        else:
            progress.update(step)
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "step 4/10  2 it/s  ETA 0:00:03  loss/g 12.3  loss/mel 1.02",
        "step 8/10  2 it/s  ETA 0:00:01  loss/g 12.3  loss/mel 1.02",
        "step 10/10  2 it/s  ETA 0:00:00  loss/g 12.3  loss/mel 1.02",
    ]
    assert all(LINE.match(line) for line in lines)


def test_rate_and_eta_follow_the_last_interval_and_a_resumed_start() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(1000, 200, True, stream=out, clock=clock)  # resumed at step 200
    clock.now += 40.0
    progress.update(300, {"loss/lm": 3.25, "loss/level_0": float("nan")})
    clock.now += 10.0
    progress.update(400, {"loss/lm": 2.5})
    assert out.getvalue().splitlines() == [
        "step 300/1000  2.5 it/s  ETA 0:04:40  loss/lm 3.25",
        "step 400/1000  10 it/s  ETA 0:01:00  loss/lm 2.5",
    ]


def test_a_budgeted_run_shows_the_budget_and_the_nearer_end() -> None:
    out, clock = io.StringIO(), Clock()
    spent = {"minutes": 0.0}
    progress = Progress(1_000_000, 0, True, stream=out, clock=clock, budget_minutes=60.0,
                        spent_minutes=lambda: spent["minutes"])
    clock.now += 50.0
    spent["minutes"] = 5.0  # training time; the step count's end is days away
    progress.update(100, {"loss/g": 2.0})
    # a max_steps that comes before the budget's end decides the ETA
    near = Progress(120, 0, True, stream=out, clock=clock, budget_minutes=60.0,
                    spent_minutes=lambda: spent["minutes"])
    clock.now += 10.0
    near.update(100, {"loss/g": 2.0})
    assert out.getvalue().splitlines() == [
        "step 100  2 it/s  5.0/60 min  ETA 0:55:00  loss/g 2",
        "step 100  10 it/s  5.0/60 min  ETA 0:00:02  loss/g 2",
    ]
    tty = FakeTTY()
    bar = Progress(1_000_000, 0, True, stream=tty, budget_minutes=60.0,
                   spent_minutes=lambda: spent["minutes"])
    bar.update(1, {"loss/g": 1.0})
    bar.close()
    assert "5.0/60 min" in tty.getvalue() and "/1000000" not in tty.getvalue()


def test_terminal_gets_the_bar_and_disabled_writes_nothing() -> None:
    tty = FakeTTY()
    bar = Progress(10, 0, True, stream=tty)
    assert bar._progress is not None
    bar.update(1, {"loss/g": 1.0})
    bar.close()
    assert "step" in tty.getvalue() and not LINE.match(tty.getvalue().strip())
    out = io.StringIO()
    off = Progress(10, 0, False, stream=out)
    off.update(5, {"loss/g": 1.0})
    off.close()
    assert out.getvalue() == ""


def test_format_duration() -> None:
    assert format_duration(53.4) == "0:00:53"
    assert format_duration(3 * 3600 + 4 * 60 + 10) == "3:04:10"
    assert format_duration(27 * 3600) == "27:00:00"


def test_training_into_a_log_prints_complete_lines(tmp_path: Path, capsys: Any) -> None:
    recipe = recipe_from_dict({
        "task": "toy",
        "data": {"sample_rate": 8000, "segment_seconds": 0.032, "batch_size": 2,
                 "num_workers": 0, "valid_count": 1, "valid_seconds": 0.05},
        "model": {"channels": 4, "layers": 1, "kernel_size": 3, "disc_channels": 4},
        "toy": {"items_per_epoch": 8, "valid_clips": 0},
        "train": {"progress": True, "tensorboard": False, "max_steps": 7, "log_every": 3,
                  "valid_every": 100, "checkpoint_every": 100},
    })
    run_training(recipe, tmp_path / "run")  # captured stdout is not a terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert [int(LINE.match(line).group(1)) for line in lines] == [3, 6, 7], lines
    assert all(line.split("/")[1].startswith("7  ") for line in lines)
    assert all("loss/" in line for line in lines)
    assert "\u2026" not in "".join(lines)  # nothing cut off
