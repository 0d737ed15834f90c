"""`soundry demo` in quick mode: every stage runs and every promised output exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soundry.cli import main as cli


def test_demo_quick_mode_produces_run_export_reconstructions_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    code = cli(
        [
            "demo", "--out", str(out), "--max-steps", "4", "--clips", "2", "--seconds", "0.6",
            "model.encoder_dim=4", "model.decoder_dim=16", "model.latent_dim=16",
            "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8, 8]}, "
            "{type: mrd, windows: [256, 128], channels: 4}]",
            "data.num_workers=0", "data.batch_size=2", "data.valid_seconds=0.5",
            "train.valid_every=2", "train.checkpoint_every=2",
            "schedule.phases=[{name: warmup, steps: 1, discriminator: false, "
            "adversarial: false}, {name: disc, steps: 1, generator: false}, {name: gan}]",
        ]
    )
    # Four steps cannot teach a codec anything: the demo says so and exits 3 ("did not
    # learn"; 2 is reserved for a broken output or a diverged run).
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["learned"] is False and verdict["reasons"]
    assert code == (2 if verdict["broken"] else 3)
    printed = capsys.readouterr().out
    said = "is BROKEN" if verdict["broken"] else "did NOT learn"
    assert f"verdict: the model {said}" in printed
    assert set(verdict["systems"]) >= {"trained", "untrained"}
    assert verdict["systems"]["untrained"]["mel_distance"] > 0
    assert len(verdict["clips"]) == 8  # every validation clip checked
    report = out / "report.html"
    assert report.is_file() and str(report) in printed.replace("\n", "")
    assert (out / "model" / "config.json").is_file()
    assert (out / "model" / "model.safetensors").is_file()
    assert len(list((out / "reconstructions").glob("*.wav"))) == 4
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 4
    assert any(r["kind"] == "valid" and "valid/mel_distance" in r for r in rows)
    # All three phases ran: generator-only losses first, then D, then both.
    assert any("loss/d" in r for r in rows)
    html = report.read_text()
    assert "<audio" in html
    # A second demo into the same folder is refused up front; nothing of the first is lost.
    before = (out / "verdict.json").read_text()
    assert cli(["demo", "--out", str(out), "--max-steps", "4"]) == 2
    assert "already holds a demo run" in capsys.readouterr().err
    assert (out / "verdict.json").read_text() == before
