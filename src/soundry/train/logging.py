"""Run logs: metrics.jsonl (the source of truth), TensorBoard, optional wandb, progress bar.

metrics.jsonl holds one JSON object per line: {"step", "kind": "train" | "valid", "time",
<metric>: value}. Values that are not finite are written as null (JSON has no NaN).
Keys under "perf/" (throughput) depend on the machine, as does "time"; everything else is
a deterministic function of the recipe, so a resumed run writes the same lines as an
uninterrupted one.

Validation audio goes to RUN/valid/step_XXXXXXXX/<clip>.wav (16-bit PCM, clipped to
[-1, 1]) with a mel-spectrogram <clip>.png next to it, and to TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from soundry.audio.io import write_audio
from soundry.config import to_dict
from soundry.errors import MissingDependencyError

PROVENANCE_PACKAGES = [
    "torch", "numpy", "scipy", "accelerate", "safetensors", "pydantic", "soundfile", "soxr",
    "librosa", "transformers", "tensorboard", "matplotlib", "rich",
]


def _clean(value: Any) -> Any:
    """A JSON-safe float (None for NaN/Inf) or the value unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- metrics.jsonl


class MetricsFile:
    """Append-only metrics.jsonl, line-flushed so a killed run loses at most a partial line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: Any = None

    def truncate_after(self, step: int) -> int:
        """Drop every line with "step" > `step` (and any unreadable partial line).

        Used on resume from the checkpoint of `step`: the resumed run rewrites those lines.
        Returns the number of lines dropped.
        """
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(record.get("step", 0)) > step:
                dropped += 1
            else:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)
        return dropped

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- spectrogram


def mel_image(audio: np.ndarray, sample_rate: int, title: str = "") -> np.ndarray:
    """A mel-spectrogram picture of `audio` ([channels, time] or [time]; channels averaged).

    Returns an RGB uint8 image [height, width, 3]. 64 ms windows, 75 % overlap, 80 mel
    bands up to Nyquist, log10 power floored at -5 (1e-5).
    """
    import librosa.filters
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    mono = np.asarray(audio, dtype=np.float32)
    if mono.ndim > 1:
        mono = mono.mean(axis=0)
    n_fft = int(2 ** round(math.log2(max(sample_rate * 0.064, 64))))
    hop = n_fft // 4
    if mono.shape[-1] < n_fft:
        mono = np.pad(mono, (0, n_fft - mono.shape[-1]))
    frames = 1 + (mono.shape[-1] - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(mono[index] * np.hanning(n_fft)[None, :], axis=-1)) ** 2
    n_mels = min(80, n_fft // 4)
    fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    mel = np.log10(np.maximum(fb @ spec.T, 1e-5))

    fig = plt.figure(figsize=(6, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    seconds = mono.shape[-1] / sample_rate
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=max(mel.max() - 8, -5),
              extent=(0, seconds, 0, n_mels))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def write_png(image: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    matplotlib.image.imsave(str(path), image)


# ----------------------------------------------------------------------------- provenance


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    """Where a run comes from: versions, git commit, command line, hardware."""
    import torch

    from soundry import __version__

    packages = {}
    for name in PROVENANCE_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    hardware: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        hardware["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "soundry_version": __version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "command": command if command is not None else list(sys.argv),
        "python": sys.version.split()[0],
        "packages": packages,
        "hardware": hardware,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_provenance(run_dir: Path, resumed_from: int | None, command: list[str] | None,
                     auxiliary: dict[str, Any] | None = None) -> None:
    """provenance.json: the first start, plus one entry per resume. `auxiliary`: the frozen
    networks' sources and content hashes (by name), recorded with each start."""
    path = Path(run_dir) / "provenance.json"
    info = provenance(command)
    if auxiliary:
        info["auxiliary"] = auxiliary
    if resumed_from is None or not path.exists():
        data = {**info, "resumes": []}
    else:
        data = json.loads(path.read_text())
        data.setdefault("resumes", []).append({**info, "from_step": resumed_from})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_auxiliary(run_dir: Path) -> dict[str, Any]:
    """The auxiliary networks provenance.json recorded at the run's first start ({} if none)."""
    path = Path(run_dir) / "provenance.json"
    try:
        return dict(json.loads(path.read_text()).get("auxiliary", {}))
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- progress


class Progress:
    """Training progress on the main process: step, it/s, ETA and the main losses.

    On a terminal, a rich progress bar, redrawn from the training thread at most twice a
    second (no refresh thread competing with the step for the GIL and the CPU). Anywhere
    else (a log file, CI, a pipe) one plain line per log interval, written when the engine
    reports the interval's values::

        step 120/300  3.4 it/s  ETA 0:00:53  loss/g 12.3  loss/mel 1.02

    `stream` is where it writes (default: sys.stdout at construction); `interactive`
    None decides by `stream.isatty()`. `clock` times the plain lines' rate and ETA.

    A run with a training-time budget passes `budget_minutes` and `spent_minutes` (the
    training clock): the ETA is then the nearer of the step count's end and the budget's
    (training time; validations come on top), and the line says how much of the budget is
    spent::

        step 600  2.1 it/s  4.9/60 min  ETA 0:55:06  loss/g 43.99  loss/mel 2.932
    """

    REFRESH_SECONDS = 0.5
    MAX_LOSSES = 4

    def __init__(self, total: int, start: int, enabled: bool, stream: Any = None,
                 interactive: bool | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 budget_minutes: float | None = None,
                 spent_minutes: Callable[[], float] | None = None) -> None:
        self._progress: Any = None
        self._stream: Any = None
        self._last_refresh = 0.0
        self._clock = clock
        self.total = int(total)
        self.budget_minutes = budget_minutes if spent_minutes is not None else None
        self._spent = spent_minutes
        if not enabled:
            return
        stream = sys.stdout if stream is None else stream
        if interactive is None:
            isatty = getattr(stream, "isatty", None)
            interactive = bool(isatty()) if isatty is not None else False
        if not interactive:
            self._stream = stream
            self._mark = (int(start), clock())
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.speed
                return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="cyan")

        if self.budget_minutes is None:
            columns = [TextColumn("step"), MofNCompleteColumn(), BarColumn(), Rate(),
                       TextColumn("ETA"), TimeRemainingColumn()]
        else:  # the bar and its ETA would follow max_steps, which the budget ends first
            columns = [TextColumn("step {task.completed:.0f}"), Rate(),
                       TextColumn("{task.fields[budget]}")]
        self._progress = RichProgress(
            *columns, TextColumn("{task.fields[losses]}"),
            auto_refresh=False, transient=False, console=Console(file=stream),
        )
        self._task = self._progress.add_task("train", total=total, completed=start, losses="",
                                             budget="")
        self._progress.start()

    @classmethod
    def _losses(cls, metrics: dict[str, Any]) -> list[tuple[str, float]]:
        shown = [(k, v) for k, v in metrics.items()
                 if (k == "loss" or k.startswith("loss/")) and isinstance(v, int | float)
                 and math.isfinite(v)]
        return shown[: cls.MAX_LOSSES]

    def update(self, step: int, metrics: dict[str, Any] | None = None) -> None:
        if self._stream is not None:
            if metrics is not None:
                self._line(step, metrics)
            return
        if self._progress is None:
            return
        fields = {}
        if metrics is not None:
            shown = self._losses(metrics)
            fields["losses"] = "  ".join(f"{k[5:] or k} {v:.4g}" for k, v in shown)
        if self.budget_minutes is not None:
            speed = self._progress.tasks[0].speed
            left = (self.total - step) / speed if speed else None
            fields["budget"] = self._budget_text(left)
        self._progress.update(self._task, completed=step, **fields)
        now = time.monotonic()
        if now - self._last_refresh >= self.REFRESH_SECONDS:
            self._last_refresh = now
            self._progress.refresh()

    def _line(self, step: int, metrics: dict[str, Any]) -> None:
        """One complete plain line: rate and ETA from the steps since the previous line."""
        last_step, last_time = self._mark
        now = self._clock()
        steps, seconds = step - last_step, now - last_time
        self._mark = (step, now)
        if self.budget_minutes is not None:
            rate = steps / seconds if steps > 0 and seconds > 0 else None
            parts = [f"step {step}", f"{rate:.3g} it/s" if rate else "-- it/s",
                     self._budget_text(max(0, self.total - step) / rate if rate else None)]
        elif steps > 0 and seconds > 0:
            rate = steps / seconds
            parts = [f"step {step}/{self.total}", f"{rate:.3g} it/s",
                     f"ETA {format_duration(max(0, self.total - step) / rate)}"]
        else:
            parts = [f"step {step}/{self.total}", "-- it/s", "ETA --"]
        parts += [f"{k} {v:.4g}" for k, v in self._losses(metrics)]
        self._stream.write("  ".join(parts) + "\n")
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()

    def _budget_text(self, steps_left_s: float | None) -> str:
        """'4.9/60 min  ETA 0:55:06': budget spent, and the nearer of the budget's end and
        (`steps_left_s`, seconds) the step count's."""
        assert self._spent is not None and self.budget_minutes is not None
        spent = self._spent()
        left = max(0.0, 60.0 * (self.budget_minutes - spent))
        if steps_left_s is not None:
            left = min(left, steps_left_s)
        return f"{spent:.1f}/{self.budget_minutes:g} min  ETA {format_duration(left)}"

    def close(self) -> None:
        self._stream = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def format_duration(seconds: float) -> str:
    """H:MM:SS (hours unbounded), e.g. 0:00:53 or 27:04:10."""
    total = int(round(seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


# ----------------------------------------------------------------------------- run logger


class RunLogger:
    """Everything the engine logs, fanned out to metrics.jsonl, TensorBoard and wandb."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        tensorboard_audio: bool,
        wandb: Any,
        config: dict[str, Any],
        resume_step: int | None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl")
        if resume_step is not None:
            self.metrics.truncate_after(resume_step)
        elif self.metrics.path.exists():
            self.metrics.path.unlink()
        self.tensorboard_audio = tensorboard_audio
        self.tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events of the killed run after the resumed checkpoint
            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        self.wandb: Any = None
        if wandb.enabled:
            self.wandb = _start_wandb(self.run_dir, wandb, config)

    def train(self, step: int, values: dict[str, Any]) -> None:
        self._scalars(step, "train", values)

    def valid(self, step: int, values: dict[str, Any]) -> None:
        self._scalars(step, "valid", values)

    def _scalars(self, step: int, kind: str, values: dict[str, Any]) -> None:
        self.metrics.write({"step": step, "kind": kind, "time": round(time.time(), 3), **values})
        finite = {k: v for k, v in values.items()
                  if isinstance(v, int | float) and math.isfinite(v)}
        if self.tb is not None:
            for key, value in finite.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(finite, step=step)

    def audio(self, step: int, clips: dict[str, Any], sample_rate: int) -> Path | None:
        """Write each clip as WAV + mel PNG under RUN/valid/step_XXXXXXXX/; send to TB/wandb."""
        if not clips:
            return None
        if sample_rate <= 0:
            raise ValueError("Validation.audio needs Validation.sample_rate > 0")
        out = self.run_dir / "valid" / f"step_{step:08d}"
        out.mkdir(parents=True, exist_ok=True)
        media: dict[str, Any] = {}
        for name, clip in clips.items():
            data = np.asarray(clip.detach().cpu().float() if hasattr(clip, "detach") else clip,
                              dtype=np.float32)
            write_audio(out / f"{name}.wav", data, sample_rate)  # 16-bit, clipped
            image = mel_image(data, sample_rate, title=f"{name} (step {step})")
            write_png(image, out / f"{name}.png")
            mono = data.mean(axis=0) if data.ndim > 1 else data
            if self.tb is not None:
                if self.tensorboard_audio:
                    self.tb.add_audio(f"audio/{name}", np.clip(mono, -1, 1)[None, :], step,
                                      sample_rate=sample_rate)
                self.tb.add_image(f"mel/{name}", image, step, dataformats="HWC")
            if self.wandb is not None:
                import wandb

                media[f"audio/{name}"] = wandb.Audio(mono, sample_rate=sample_rate)
                media[f"mel/{name}"] = wandb.Image(image)
        if self.wandb is not None and media:
            self.wandb.log(media, step=step)
        return out

    def text(self, step: int, tag: str, text: str) -> None:
        """A text entry (health findings) in TensorBoard and wandb."""
        if self.tb is not None:
            self.tb.add_text(tag, text, step)
        if self.wandb is not None:
            self.wandb.log({tag: text}, step=step)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def check_wandb(enabled: bool) -> None:
    """Fail before any work when wandb is enabled but not installed."""
    if not enabled:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise MissingDependencyError("wandb", "wandb", "train.wandb.enabled") from None


def _start_wandb(run_dir: Path, cfg: Any, config: dict[str, Any]) -> Any:
    check_wandb(True)
    import wandb

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    id_file.write_text(run_id)
    return wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(run_dir),
                      config=config, id=run_id, resume="allow", name=run_dir.name)


# ----------------------------------------------------------------------------- run files


def write_config(recipe: Any, path: Path) -> None:
    """The fully resolved recipe as YAML, replaced atomically (--resume reads it back)."""
    import yaml

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    os.replace(tmp, path)


def summary_line(summary: dict[str, Any]) -> str:
    """One line: steps, time, run dir, best checkpoint."""
    secs = int(summary["train_seconds"])
    took = f"{secs // 3600}h{secs // 60 % 60:02d}m{secs % 60:02d}s" if secs >= 3600 else \
        f"{secs // 60}m{secs % 60:02d}s"
    best = summary["best_checkpoint"] or summary["last_checkpoint"] or "none"
    label = "best checkpoint" if summary["best_checkpoint"] else "last checkpoint"
    from soundry.eval.fmt import fmt_metric

    value = (f" ({summary['best_metric']} = {fmt_metric(summary.get('best_value'), '.4g')})"
             if summary["best_checkpoint"] else "")
    data = summary.get("data") or {}
    skipped = (f"; data: {data['usable_files']} files used, {data['skipped_files']} skipped, "
               f"{data['replaced_items']} items replaced" if data else "")
    return (f"trained {summary['steps']} steps in {took}: run dir {summary['run_dir']}; "
            f"{label} {best}{value}{skipped}")
