"""The health runner: feeds the monitors during training and reports their findings.

The engine calls, on the main process:

- `start(context)` once (the data index: file sample rates, whether windows are random);
- `on_batch(step, batch)` per micro-batch, with the host batch before it moves to the
  device (window metadata and a few items' audio; no extra pass over the data);
- `on_step(step, logs, engine_values)` per optimizer step: the task's logged values (device
  tensors are buffered and read in one sync at the next check) and the engine's grad norms
  and clipping flags;
- `on_valid(step, metrics, audio, sample_rate)` after each validation;
- `check(step)` every `health.check_every` steps and at the end.

A new finding is appended to RUN/health.jsonl, logged once as a WARNING / ERROR line and
sent to TensorBoard as text; the same (monitor, key) is reported again only when its
severity rises. `state_dict()` (the monitors' state and what was reported) goes into every
checkpoint and into RUN/health_state.json, which `soundry doctor` reads.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from soundry.health.config import HealthConfig
from soundry.health.core import SEVERITIES, BatchInfo, Finding, Monitor, plain_json
from soundry.health.data_monitors import CropCoverage, SampleRate, Silence
from soundry.health.lm_monitors import EosUntrained, ValidVsGeneration
from soundry.health.output_monitors import (
    CodebookCollapse,
    OutputSaturation,
    PosteriorCollapse,
)
from soundry.health.train_monitors import DiscriminatorDominance, GradSpike, LossSpike

log = logging.getLogger("soundry.health")

#: monitor id -> class; every id is also a `health.<id>` recipe section
MONITORS: dict[str, type[Monitor]] = {
    m.id: m for m in (CropCoverage, SampleRate, Silence, OutputSaturation, CodebookCollapse,
                      PosteriorCollapse,
                      LossSpike, GradSpike, DiscriminatorDominance, EosUntrained,
                      ValidVsGeneration)
}

HEALTH_FILE = "health.jsonl"
STATE_FILE = "health_state.json"
#: items of a batch whose audio the data monitors see (bounds their cost on large batches)
AUDIO_ITEMS = 16


def build_monitors(cfg: HealthConfig) -> list[Monitor]:
    return [cls(getattr(cfg, mid)) for mid, cls in MONITORS.items()
            if getattr(cfg, mid).enabled]


def batch_info(batch: Any, context: dict[str, Any]) -> BatchInfo:
    """What the data monitors read from one host batch (audio clips or token windows)."""
    info = BatchInfo(sample_rate=int(context.get("sample_rate") or 0))
    if not isinstance(batch, dict):
        return info
    random_windows = context.get("random_windows", True)
    if "audio" in batch and isinstance(batch["audio"], torch.Tensor):
        audio = batch["audio"]
        frames = audio.shape[-1]
        if random_windows and "file_frames" in batch and "offset" in batch:
            files = zip(batch["source"].tolist(), batch["file"].tolist(), strict=True)
            info.windows = [(f, int(o), frames, int(n)) for f, o, n in
                            zip(files, batch["offset"].tolist(), batch["file_frames"].tolist(),
                                strict=True)]
        sub = audio[:AUDIO_ITEMS].detach()
        info.audio = sub.float().mean(dim=1).cpu().numpy() if sub.dim() == 3 else \
            sub.float().reshape(sub.shape[0], -1).cpu().numpy()
        if "lengths" in batch:
            info.audio_lengths = [int(n) for n in batch["lengths"][:AUDIO_ITEMS].tolist()]
    elif "codes" in batch and "item_frames" in batch and random_windows:
        ids = batch.get("id") or list(range(len(batch["lengths"])))
        info.windows = [((0, zlib.crc32(str(i).encode())), int(o), int(n), int(t)) for i, o, n, t in
                        zip(ids, batch["offsets"].tolist(), batch["lengths"].tolist(),
                            batch["item_frames"].tolist(), strict=True)]
    return info


class HealthRunner:
    """Online monitoring of one run (see the module docstring)."""

    def __init__(self, cfg: HealthConfig, run_dir: Path | None, logger: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.logger = logger
        self.monitors = build_monitors(cfg) if cfg.enabled else []
        self.context: dict[str, Any] = {}
        self.reported: dict[str, str] = {}  # "monitor:key" -> severity reported
        self.findings: list[Finding] = []
        self._buffer: list[tuple[int, dict[str, Any]]] = []
        # time spent in the monitors: during training steps / inside validations
        self.seconds = 0.0
        self.valid_seconds = 0.0

    @property
    def active(self) -> bool:
        return bool(self.monitors)

    # -- hooks -----------------------------------------------------------------------------

    def start(self, context: dict[str, Any], step: int = 0) -> None:
        self.context = dict(context)
        if step > 0:  # resumed: start-up findings were reported by the first session
            return
        if self.run_dir is not None and (self.run_dir / HEALTH_FILE).exists():
            (self.run_dir / HEALTH_FILE).unlink()  # a fresh run in a reused directory
        for m in self.monitors:
            self._report(m.on_start(self.context))

    def on_batch(self, step: int, batch: Any) -> None:
        if not self.monitors:
            return
        t0 = time.perf_counter()
        info = batch_info(batch, self.context)
        for m in self.monitors:
            m.on_batch(step, info)
        self.seconds += time.perf_counter() - t0

    def on_step(self, step: int, logs: dict[str, Any], engine_values: dict[str, float]
                ) -> None:
        if self.monitors:
            self._buffer.append((step, {**logs, **engine_values}))

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        t0 = time.perf_counter()
        self._flush()
        for m in self.monitors:
            m.on_valid(step, metrics, audio, sample_rate)
        self.valid_seconds += time.perf_counter() - t0

    def check(self, step: int) -> list[Finding]:
        """Run every monitor's check; report and return the new findings."""
        t0 = time.perf_counter()
        self._flush()
        new: list[Finding] = []
        for m in self.monitors:
            new.extend(self._report(m.check(step)))
        self.seconds += time.perf_counter() - t0
        return new

    # -- internals -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Turn the buffered step values into floats (one device sync) and feed them."""
        if not self._buffer:
            return
        buffered, self._buffer = self._buffer, []
        tensors = [(i, k) for i, (_, vals) in enumerate(buffered)
                   for k, v in vals.items() if isinstance(v, torch.Tensor)]
        floats: dict[tuple[int, str], float] = {}
        if tensors:
            tensors_device = buffered[tensors[0][0]][1][tensors[0][1]].device
            stacked = torch.stack([buffered[i][1][k].detach().float().mean().to(
                tensors_device) for i, k in tensors]).tolist()  # the one sync
            floats = dict(zip(tensors, stacked, strict=True))
        for i, (step, vals) in enumerate(buffered):
            plain = {k: (floats[(i, k)] if isinstance(v, torch.Tensor) else float(v))
                     for k, v in vals.items() if isinstance(v, torch.Tensor | int | float)}
            for m in self.monitors:
                m.on_scalars(step, plain)

    def _report(self, findings: list[Finding]) -> list[Finding]:
        new = []
        for f in findings:
            ident = f"{f.monitor}:{f.key}"
            before = self.reported.get(ident)
            if before is not None and SEVERITIES.index(before) >= SEVERITIES.index(f.severity):
                continue
            self.reported[ident] = f.severity
            self.findings.append(f)
            new.append(f)
            level = logging.ERROR if f.severity == "error" else logging.WARNING
            log.log(level, "health: %s", f.line())
            if self.run_dir is not None:
                with open(self.run_dir / HEALTH_FILE, "a") as out:
                    out.write(json.dumps(f.to_dict()) + "\n")
            if self.logger is not None:
                self.logger.text(f.step, f"health/{f.monitor}", f"**{f.severity}**: {f.message}")
        return new

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"monitors": {m.id: m.state_dict() for m in self.monitors},
                "reported": dict(self.reported), "context": plain_json(self.context)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("monitors", {})
        for m in self.monitors:
            if m.id in saved:
                m.load_state_dict(saved[m.id])
        self.reported = dict(state.get("reported", {}))

    def save_state(self, step: int) -> None:
        """RUN/health_state.json (atomically): what `soundry doctor` re-checks from."""
        if self.run_dir is None or not self.monitors:
            return
        self._flush()
        path = self.run_dir / STATE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"step": step, **self.state_dict()}))
        os.replace(tmp, path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop findings recorded after the checkpoint's step."""
        if self.run_dir is None:
            return
        path = self.run_dir / HEALTH_FILE
        if not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def read_findings(run_dir: str | Path) -> list[Finding]:
    """The findings recorded in RUN/health.jsonl (empty when there is none)."""
    path = Path(run_dir) / HEALTH_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(Finding.from_dict(json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a killed process
    return out
