"""`soundry profile`: per-section step times that add up, FLOPs counted, a JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soundry import cli
from soundry.train.sections import SectionTimer, section

TOY = str(Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml")
SMALL = ["data.sample_rate=8000", "data.segment_seconds=0.05", "data.batch_size=2",
         "data.num_workers=0", "data.valid_count=1", "data.valid_seconds=0.1",
         "model.channels=4", "model.layers=1", "model.kernel_size=3", "model.disc_channels=4",
         "toy.items_per_epoch=8"]


def test_sections_are_exclusive_and_free_when_no_timer_runs() -> None:
    import time

    timer = SectionTimer()
    with timer:
        with section("outer"):
            time.sleep(0.02)
            with section("inner"):
                time.sleep(0.03)
    assert timer.totals["inner"] >= 0.03
    assert 0.02 <= timer.totals["outer"] < 0.03 + 0.02  # the inner time is not counted twice
    assert timer.counts == {"outer": 1, "inner": 1}
    with section("nothing"):  # no timer: nothing recorded anywhere
        pass
    assert "nothing" not in timer.totals


@pytest.mark.timeout(300)
def test_profile_command_reports_sections_flops_and_peaks(capsys) -> None:
    import torch

    threads = torch.get_num_threads()
    assert cli.main(["profile", TOY, *SMALL, "--steps", "3", "--warmup", "1",
                     "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # --threads does not leak into the caller
    out = capsys.readouterr().out
    assert "section" in out and "backward/generator" in out and "GFLOP/s" in out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["profile"] and row["steps"] == 3 and row["threads"] == 1
    shares = row["sections_share"]
    assert {"data", "backward/generator", "optimizer/generator", "other"} <= set(shares)
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.02)
    assert row["flops_per_step"] > 0 and 0 < row["fraction_of_matmul_peak"] < 1
    assert row["peak_gflops"]["matmul_gflops"] > 0


@pytest.mark.timeout(300)
def test_profile_times_the_phase_asked_for(capsys) -> None:
    # a warm-up that lasts 30% of a budgeted run, then the GAN: a few profile steps would
    # otherwise fall wherever 30% of them lands
    phases = ("schedule.phases=[{name: warmup, until: 0.3, discriminator: false, "
              "adversarial: false}, {name: gan}]")
    base = ["profile", TOY, *SMALL, phases, "--steps", "2", "--warmup", "1", "--threads", "1",
            "--json"]
    assert cli.main(base) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["phase"] == "warmup" and "backward/discriminator" not in first["sections_share"]
    assert cli.main([*base, "--phase", "gan"]) == 0
    gan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert gan["phase"] == "gan" and "backward/discriminator" in gan["sections_share"]
    assert cli.main([*base, "--phase", "gann"]) != 0
    assert "warmup, gan" in capsys.readouterr().err
