"""`soundry doctor RUN_DIR`: re-check a finished or running run from what its directory holds.

- Data monitors (crop_coverage, sample_rate, silence) and eos_untrained restore the state
  the run persisted in RUN/health_state.json (their inputs are batches, which a run does
  not keep) and decide again.
- The others replay the run's logs: loss_spike, grad_spike, discriminator_dominance and
  valid_vs_generation read metrics.jsonl (log-interval means, and each interval's largest
  grad norm), output_saturation reads the validation audio under RUN/valid/, and
  codebook_collapse the validation metrics.
- Findings the run recorded in RUN/health.jsonl stand too (spikes inside a log interval
  are visible online only); each (monitor, key) is listed once, at its highest severity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from soundry.errors import SoundryError
from soundry.health.config import HealthConfig
from soundry.health.core import SEVERITIES, Finding
from soundry.health.runner import STATE_FILE, build_monitors, read_findings

#: monitors whose inputs are batches: restored from the persisted state, not replayed
RESTORED = ("crop_coverage", "sample_rate", "silence", "eos_untrained")


def _health_config(run_dir: Path) -> HealthConfig:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return HealthConfig()
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return HealthConfig.model_validate(raw.get("health") or {})
    except ValueError as exc:
        raise SoundryError(f"{path}: health section is invalid: {exc}") from exc


def _valid_audio(run_dir: Path, step: int) -> tuple[dict[str, np.ndarray], int]:
    import soundfile as sf

    folder = run_dir / "valid" / f"step_{step:08d}"
    clips: dict[str, np.ndarray] = {}
    rate = 0
    for wav in sorted(folder.glob("*.wav")):
        try:
            data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        except (RuntimeError, OSError):
            continue  # a clip cut by a killed run
        clips[wav.stem] = data.T
    return clips, rate


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl records; a line cut by a killed process is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def diagnose(run_dir: str | Path) -> list[Finding]:
    """Every finding that stands for the run in `run_dir`, errors first."""
    root = Path(run_dir)
    if not (root / "metrics.jsonl").is_file() and not (root / STATE_FILE).is_file():
        raise SoundryError(f"'{root}' is not a run directory: it has no metrics.jsonl "
                           "(pass the folder `soundry train` wrote)")
    cfg = _health_config(root)
    monitors = build_monitors(cfg) if cfg.enabled else []
    state: dict[str, Any] = {}
    if (root / STATE_FILE).is_file():
        try:
            state = json.loads((root / STATE_FILE).read_text())
        except ValueError:
            state = {}
    saved = state.get("monitors", {})
    records = _read_metrics(root / "metrics.jsonl") if (root / "metrics.jsonl").is_file() else []
    last_step = max([int(r.get("step", 0)) for r in records] + [int(state.get("step", 0))])
    found: list[Finding] = []
    for m in monitors:
        if m.id in RESTORED:
            if m.id in saved:
                m.load_state_dict(saved[m.id])
                found.extend(m.check(int(state.get("step", last_step))))
            continue
        for r in records:
            step = int(r.get("step", 0))
            values = {k: float(v) for k, v in r.items()
                      if isinstance(v, int | float) and k not in ("step", "time")}
            if r.get("kind") == "train":
                m.on_scalars(step, values)
                found.extend(m.check(step))
            elif r.get("kind") == "valid":
                audio, rate = _valid_audio(root, step) if m.id == "output_saturation" else ({}, 0)
                m.on_valid(step, values, audio, rate)
                found.extend(m.check(step))
    for f in read_findings(root):
        found.append(f)
    return merge(found)


def merge(findings: list[Finding]) -> list[Finding]:
    """One finding per (monitor, key): the most severe, the earliest at that severity."""
    best: dict[str, Finding] = {}
    for f in findings:
        ident = f"{f.monitor}:{f.key}"
        have = best.get(ident)
        if have is None or SEVERITIES.index(f.severity) > SEVERITIES.index(have.severity):
            best[ident] = f
    return sorted(best.values(), key=lambda f: (-SEVERITIES.index(f.severity), f.step))


def doctor_text(run_dir: str | Path, findings: list[Finding]) -> str:
    if not findings:
        return f"{run_dir}: healthy (no monitor found a problem)"
    errors = sum(f.severity == "error" for f in findings)
    lines = [f"{run_dir}: {errors} error(s), {len(findings) - errors} warning(s)"]
    lines += [f"  {f.severity.upper():7s} {f.line()}" for f in findings]
    return "\n".join(lines)
