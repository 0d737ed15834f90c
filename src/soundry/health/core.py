"""Findings, the monitor interface and the running statistics monitors share.

A monitor watches what a run already produces and says, with a `Finding`, when the run is
failing in a way the loss curve does not show. Monitors are fed by the health runner
(`soundry.health.runner`) through three hooks, all optional:

- `on_batch(step, info)`: a `BatchInfo` of each training (micro-)batch: crop windows, file
  lengths, a few items' audio (host arrays; never a second pass over the data);
- `on_scalars(step, values)`: scalars of one training step (online) or one log interval
  (offline, from metrics.jsonl): losses, grad norms, clipping, ...;
- `on_valid(step, metrics, audio, sample_rate)`: a validation's metrics and audio clips.

`check(step)` returns the findings that stand now; the runner reports each (monitor, key)
once per severity. `state_dict()` is JSON: it goes into checkpoints (exact resume) and into
`RUN/health_state.json`, which `soundry doctor` reads back.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SEVERITIES = ("warning", "error")


@dataclass
class Finding:
    """One thing wrong with a run.

    step: the training step at which the monitor decided; since: the step the problem was
    first seen (None: unknown); key: what the finding is about within its monitor (a loss
    name, a level, ...), so distinct problems are reported separately; evidence: the figures
    (JSON) that show it, e.g. the curve's recent values or the clip's statistics.
    """

    step: int
    monitor: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    since: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def line(self) -> str:
        since = f", since step {self.since}" if self.since is not None else ""
        return f"[{self.monitor}] step {self.step}{since}: {self.message}"


@dataclass
class BatchInfo:
    """What the data monitors see of one training batch (host values, B items).

    windows: per item (file id, offset, window length, file length) in the batch's unit
    (samples or token frames); None when the batch carries no window metadata or its
    windows are fixed on purpose (one-shot mode). audio: up to a few items' audio [n, T]
    (float32, mono mix) with their valid lengths; sample_rate: of that audio.
    """

    windows: list[tuple[tuple[int, int], int, int, int]] | None = None
    audio: np.ndarray | None = None
    audio_lengths: list[int] | None = None
    sample_rate: int = 0
    ends: list[bool] | None = None


class Monitor:
    """Base class: override the hooks a monitor needs and `check`."""

    id = "monitor"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        # findings decided inside a hook (e.g. at a validation), handed over at the next check
        self.pending: list[Finding] = []

    def on_start(self, context: dict[str, Any]) -> list[Finding]:
        """Called once before the first step with what the run knows up front (the data
        index, the task); may return findings right away."""
        return []

    def on_batch(self, step: int, info: BatchInfo) -> None:
        return None

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        return None

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        return None

    def check(self, step: int) -> list[Finding]:
        """The findings that stand now (default: those the hooks decided since the last
        check)."""
        out, self.pending = self.pending, []
        return out

    def finding(self, step: int, severity: str, message: str, key: str = "",
                since: int | None = None, **evidence: Any) -> Finding:
        return Finding(step=step, monitor=self.id, severity=severity, message=message,
                       evidence=plain_json(evidence), key=key, since=since)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Series:
    """The recent values of one scalar (step, value), bounded, with a robust baseline."""

    def __init__(self, size: int) -> None:
        self.values: deque[tuple[int, float]] = deque(maxlen=size)

    def add(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.values.append((step, float(value)))

    def __len__(self) -> int:
        return len(self.values)

    def median(self, last: int | None = None, skip_last: int = 0) -> float:
        vals = [v for _, v in self.values]
        if skip_last:
            vals = vals[:-skip_last]
        if last is not None:
            vals = vals[-last:]
        return float(np.median(vals)) if vals else math.nan

    def spread(self, last: int | None = None) -> float:
        """A robust standard deviation of the last values: 1.4826 x their median absolute
        deviation (the std for Gaussian noise)."""
        vals = np.array([v for _, v in self.values][-last:] if last else
                        [v for _, v in self.values])
        if not len(vals):
            return math.nan
        return float(1.4826 * np.median(np.abs(vals - np.median(vals))))

    def last(self) -> tuple[int, float]:
        return self.values[-1]

    def tail(self, n: int = 8) -> list[list[float]]:
        """The last n points as [step, value] (evidence for a finding)."""
        return [[s, _round(v)] for s, v in list(self.values)[-n:]]

    def state(self) -> list[list[float]]:
        return [[s, v] for s, v in self.values]

    def load(self, points: list[list[float]]) -> None:
        self.values.clear()
        for s, v in points:
            self.values.append((int(s), float(v)))


def _round(v: float) -> float:
    return float(f"{v:.4g}") if math.isfinite(v) else v


def plain_json(value: Any) -> Any:
    """Evidence as plain JSON values (numpy scalars and arrays become floats and lists)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, np.generic):
        return plain_json(value.item())
    if isinstance(value, float):
        return _round(value) if math.isfinite(value) else None
    return value
