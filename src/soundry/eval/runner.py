"""`soundry eval`: score a codec (and classical baselines) on a folder of audio.

Every file (or a fixed crop of it) is read at the model's sample rate and channel count
(a mismatch is resampled / converted with a logged notice), passed through every system
(the model at the chosen number of levels, then each ffmpeg baseline), and scored against
the reference. Outputs in `--out`:

- `per_file.csv`: one row per (system, file) with every metric;
- `summary.json`: per system and metric the mean, median and a bootstrap 95% confidence
  interval of the mean (percentile method, seeded, so reruns agree), plus the settings.
  Strict JSON: a statistic that is not finite is null, and `notes` (a list of sentences, at
  the top level and per system) says which metric was not finite on how many clips and why.

A "system" is any function `[C, T] float32 audio -> [C, T] audio` at the evaluation rate,
so the model and the baselines are scored by the same code.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundry import __version__
from soundry.audio.codecs import BaselineSpec, check_encoders, roundtrip
from soundry.errors import DataError, SoundryError
from soundry.eval.directions import higher_is_better
from soundry.eval.extra_metrics import EXTRA_METRICS, availability, compute_extra, take_failures
from soundry.eval.fmt import clean_json, dumps_json, fmt_metric, nonfinite_note

log = logging.getLogger("soundry.eval")

System = Callable[[np.ndarray], np.ndarray]

CORE_METRICS = ("mel_distance", "stft_distance", "si_sdr", "l1")


@dataclass
class SystemSpec:
    """A system to score: its name, kind ('model' or 'baseline'), bitrate, and function."""

    name: str
    kind: str
    fn: System
    bitrate_kbps: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalItem:
    """One reference clip: [C, T] float32 at the evaluation rate, and where it came from."""

    name: str
    path: Path
    audio: np.ndarray
    offset_seconds: float
    seconds: float


# ----------------------------------------------------------------------------- data


def list_files(data: str | Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Usable audio files of a folder / manifest (via `soundry.data.scan`) or one file."""
    from soundry.audio.io import AUDIO_EXTENSIONS
    from soundry.data.scan import scan

    path = Path(data)
    if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS:
        return [path], []
    index = scan(path)
    index.require_usable()
    for skipped in index.skipped:
        log.warning("skipped %s: %s", skipped["path"], skipped["reason"])
    return [Path(item.path) for item in index.items], list(index.skipped)


def load_item(
    path: Path, root: Path, sample_rate: int, channels: int, crop_seconds: float | None
) -> EvalItem:
    """Read a file (or its centred crop of `crop_seconds`) at the evaluation rate/channels."""
    from soundry.audio.io import audio_info, convert_channels, read_audio

    info = audio_info(path)
    offset, frames = 0, -1
    if crop_seconds is not None:
        want = int(round(crop_seconds * info.sample_rate))
        if want < info.frames:
            # A centred crop: deterministic, and clear of leading/trailing silence.
            offset, frames = (info.frames - want) // 2, want
    audio, _ = read_audio(path, offset=offset, frames=frames, sample_rate=sample_rate)
    audio = convert_channels(audio, channels)
    if audio.shape[-1] == 0:
        raise DataError(f"'{path}' holds no audio")
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = path.name
    return EvalItem(
        name=name,
        path=path,
        audio=audio,
        offset_seconds=offset / info.sample_rate,
        seconds=audio.shape[-1] / sample_rate,
    )


def note_conversions(files: Sequence[Path], sample_rate: int, channels: int) -> None:
    """One logged notice per differing file rate / channel count (never silent, never spam)."""
    from soundry.audio.io import audio_info

    rates: dict[int, int] = {}
    chans: dict[int, int] = {}
    for f in files:
        info = audio_info(f)
        if info.sample_rate != sample_rate:
            rates[info.sample_rate] = rates.get(info.sample_rate, 0) + 1
        if info.channels != channels:
            chans[info.channels] = chans.get(info.channels, 0) + 1
    for sr, n in sorted(rates.items()):
        log.warning("%d file(s) at %d Hz are resampled to the model's %d Hz", n, sr, sample_rate)
    for c, n in sorted(chans.items()):
        log.warning("%d file(s) with %d channel(s) are converted to the model's %d", n, c, channels)


# ----------------------------------------------------------------------------- metrics


def core_metrics(reference: np.ndarray, output: np.ndarray, sample_rate: int) -> dict[str, float]:
    """mel_distance, stft_distance, si_sdr and l1 of one clip (soundry.eval.metrics).

    Values stay as computed: SI-SDR is +inf for a bit-exact output, NaN for a silent reference.
    """
    from soundry.eval import metrics

    return {
        "mel_distance": float(metrics.mel_distance(reference, output, sample_rate)),
        "stft_distance": float(metrics.stft_distance(reference, output)),
        "si_sdr": float(metrics.si_sdr(reference, output)),
        "l1": float(metrics.l1(reference, output)),
    }


def resolve_extra_metrics(requested: str) -> tuple[list[str], dict[str, str]]:
    """'auto' (every installed one), 'none', or a comma list -> (names, skipped reasons).

    Naming a metric whose package is missing raises MissingDependencyError.
    """
    avail = availability()
    if requested == "none":
        return [], {}
    if requested == "auto":
        names = [n for n, reason in avail.items() if reason is None]
        skipped = {n: reason for n, reason in avail.items() if reason is not None}
        return names, skipped
    names = [n.strip() for n in requested.split(",") if n.strip()]
    for n in names:
        if n not in EXTRA_METRICS:
            raise SoundryError(
                f"unknown metric '{n}' (extra metrics: {', '.join(EXTRA_METRICS)}, or auto/none)"
            )
        if avail[n] is not None:
            from soundry.errors import MissingDependencyError

            metric = EXTRA_METRICS[n]
            raise MissingDependencyError(metric.package, "eval", metric.purpose)
    return names, {}


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: Sequence[float], seed: int = 0, resamples: int = 2000, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (NaNs dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def describe(values: Sequence[float], seed: int, resamples: int) -> dict[str, Any]:
    """mean, median, ci95 [lo, hi], n, n_failed (NaN values) and n_infinite.

    An infinite value (SI-SDR of a bit-exact output) makes the statistics infinite too; they
    are written to JSON as null, with `n_infinite` saying why.
    """
    kept = [v for v in values if not math.isnan(v)]
    out: dict[str, Any] = {
        "mean": None,
        "median": None,
        "ci95": [None, None],
        "n": len(kept),
        "n_failed": len(values) - len(kept),
        "n_infinite": sum(math.isinf(v) for v in kept),
    }
    if kept:
        with np.errstate(invalid="ignore"):
            lo, hi = bootstrap_ci(kept, seed, resamples)
            out.update(
                mean=_finite_or_none(float(np.mean(kept))),
                median=_finite_or_none(float(np.median(kept))),
                ci95=[_finite_or_none(lo), _finite_or_none(hi)],
            )
    return out


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- running


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    out_dir: Path


def evaluate(
    systems: list[SystemSpec],
    files: Sequence[Path],
    *,
    root: Path,
    sample_rate: int,
    channels: int,
    out_dir: str | Path,
    crop_seconds: float | None = None,
    extra_metrics: Sequence[str] = (),
    skipped_metrics: dict[str, str] | None = None,
    seed: int = 0,
    resamples: int = 2000,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    inputs: dict[Path, Path] | None = None,
) -> EvalResult:
    """Run every system on every file, score, and write per_file.csv and summary.json.

    `files` are the references. `inputs` (audio-to-audio systems) maps a reference to the
    file the systems get instead (its degraded version, read with the same crop and cut to
    the reference's length); without it every system gets the reference itself."""
    if not files:
        raise DataError("no audio files to evaluate")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise SoundryError(f"system names must be unique, got {names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    note_conversions(files, sample_rate, channels)
    metric_names = [*CORE_METRICS, *extra_metrics]
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    t0 = time.time()
    take_failures()  # forget failures of earlier calls
    with _progress(progress) as bar:
        task = bar.add_task("evaluating", total=len(files) * len(systems), status="")
        for path in files:
            try:
                item = load_item(path, root, sample_rate, channels, crop_seconds)
            except DataError as exc:
                log.warning("skipped %s: %s", path, exc)
                failed.append({"path": str(path), "reason": str(exc)})
                bar.advance(task, len(systems))
                continue
            given = item.audio
            if inputs is not None:
                try:
                    given = _match(load_item(inputs[path], root, sample_rate, channels,
                                             crop_seconds).audio, item.audio)
                except DataError as exc:
                    log.warning("skipped %s: its input %s: %s", path, inputs[path], exc)
                    failed.append({"path": str(inputs[path]), "reason": str(exc)})
                    bar.advance(task, len(systems))
                    continue
            for system in systems:
                bar.update(task, description=f"{system.name}: {_short(item.name, 24)}")
                output = _match(system.fn(given), item.audio)
                scores = core_metrics(item.audio, output, sample_rate)
                scores.update(compute_extra(list(extra_metrics), item.audio, output, sample_rate))
                rows.append(
                    {
                        "system": system.name,
                        "file": item.name,
                        "offset_seconds": round(item.offset_seconds, 6),
                        "seconds": round(item.seconds, 6),
                        **scores,
                    }
                )
                bar.update(task, advance=1, status=f"mel {fmt_metric(scores['mel_distance'])}")
    if not rows:
        raise DataError("no file could be evaluated (see the warnings above)")
    failure_reasons: dict[str, str] = {}
    for metric, reasons in take_failures().items():
        total = sum(reasons.values())
        common = "; ".join(f"{r} ({n}x)" for r, n in reasons.most_common(3))
        log.warning("%s could not score %d of %d clip(s): %s", metric, total, len(rows), common)
        failure_reasons[metric] = f"the scorer failed: {common}"

    summary = {
        "soundry_version": __version__,
        **(settings or {}),
        "sample_rate": sample_rate,
        "channels": channels,
        "crop_seconds": crop_seconds,
        "files": len({r["file"] for r in rows}),
        "failed_files": failed,
        "metrics": metric_names,
        "higher_is_better": [m for m in metric_names if higher_is_better(m)],
        "skipped_metrics": dict(skipped_metrics or {}),
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "confidence": 0.95,
            "method": "percentile",
        },
        "seconds_taken": round(time.time() - t0, 3),
        "notes": [],
        "systems": {},
    }
    for system in systems:
        mine = [r for r in rows if r["system"] == system.name]
        notes = metric_notes(mine, metric_names, failure_reasons)
        summary["systems"][system.name] = {
            "kind": system.kind,
            "bitrate_kbps": system.bitrate_kbps,
            **system.info,
            "n": len(mine),
            "metrics": {m: describe([r[m] for r in mine], seed, resamples) for m in metric_names},
            "notes": notes,
        }
        summary["notes"].extend(f"{system.name}: {note}" for note in notes)
    for note in summary["notes"]:
        log.warning("%s", note)
    summary = clean_json(summary)  # what summary.json holds: null where not finite
    write_outputs(out_dir, rows, summary, metric_names)
    return EvalResult(rows=rows, summary=summary, out_dir=out_dir)


def metric_notes(
    rows: Sequence[dict[str, Any]],
    metric_names: Sequence[str],
    failure_reasons: dict[str, str] | None = None,
) -> list[str]:
    """One sentence per metric with values that are not finite on some clips (see fmt)."""
    notes = []
    for m in metric_names:
        reasons = {"nan": failure_reasons[m]} if failure_reasons and m in failure_reasons else None
        note = nonfinite_note(m, [r.get(m) for r in rows], "clips", reasons)
        if note:
            notes.append(note)
    return notes


def write_outputs(
    out_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], metric_names: Sequence[str]
) -> None:
    fields = ["system", "file", "offset_seconds", "seconds", *metric_names]
    with (out_dir / "per_file.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k]) for k in fields}
            )
    (out_dir / "summary.json").write_text(dumps_json(summary, indent=2) + "\n")


def _match(output: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Output trimmed or zero-padded to the reference's length (codecs pad to a hop)."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 3 and output.shape[0] == 1:
        output = output[0]
    if output.ndim == 1:
        output = output[None]
    if output.shape[0] != reference.shape[0]:
        raise SoundryError(
            f"a system returned {output.shape[0]} channel(s) for {reference.shape[0]}-channel input"
        )
    n = reference.shape[-1]
    if output.shape[-1] >= n:
        return output[:, :n]
    return np.pad(output, ((0, 0), (0, n - output.shape[-1])))


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.2f}/s", style="cyan")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
    )


# ----------------------------------------------------------------------------- systems


def baseline_systems(specs: Sequence[BaselineSpec], sample_rate: int) -> list[SystemSpec]:
    """SystemSpecs for ffmpeg baselines (see `check_encoders` to fail early)."""
    return [
        SystemSpec(
            name=spec.name,
            kind="baseline",
            fn=lambda audio, spec=spec: roundtrip(audio, sample_rate, spec),
            bitrate_kbps=spec.kbps,
            info={"codec": spec.codec},
        )
        for spec in specs
    ]


def model_system(model: Any, levels: int | None, name: str) -> SystemSpec:
    """A SystemSpec reconstructing through the codec's codes at `levels` levels (all: None).

    Long files go through `reconstruct_chunked`, so memory does not grow with file length.
    """
    import torch

    from soundry.models.chunked import reconstruct_chunked

    n_levels = int(model.n_codebooks) if levels is None else int(levels)
    if not 1 <= n_levels <= int(model.n_codebooks):
        raise SoundryError(f"--levels must be between 1 and {model.n_codebooks}, got {levels}")

    def run(audio: np.ndarray) -> np.ndarray:
        out = reconstruct_chunked(model, torch.from_numpy(audio), n_levels=n_levels)
        return out.float().cpu().numpy()

    return SystemSpec(
        name=name,
        kind="model",
        fn=run,
        bitrate_kbps=float(model.bitrate_kbps(n_levels)),
        info={
            "levels": n_levels,
            "codebook_size": int(model.codebook_size),
            "frame_rate": float(model.frame_rate),
        },
    )


# ----------------------------------------------------------------------------- the command


def run_eval(
    model_dir: str | Path,
    data: str | Path,
    *,
    out: str | Path,
    levels: int | None = None,
    baselines: Sequence[BaselineSpec] = (),
    crop_seconds: float | None = None,
    extra: str = "auto",
    seed: int = 0,
    resamples: int = 2000,
    limit: int | None = None,
    progress: bool = True,
    target: str | Path | None = None,
) -> EvalResult:
    """Everything `soundry eval` does short of printing: load, check, evaluate, write.
    A transform export scores `data` (degraded inputs) against `target` (clean files)."""
    from soundry.models.codec_io import load_codec
    from soundry.models.export import export_kind

    if export_kind(model_dir) == "transform":
        if levels is not None or baselines:
            raise SoundryError("--levels and --baseline are codec options; a transform model "
                               "is compared with its unprocessed input (always included)")
        if target is None:
            raise SoundryError("a transform model needs --target TARGETS: the clean files "
                               "its inputs are scored against")
        return run_transform_eval(model_dir, data, target, out=out, crop_seconds=crop_seconds,
                                  extra=extra, seed=seed, resamples=resamples, limit=limit,
                                  progress=progress)
    if target is not None:
        raise SoundryError("--target is for transform models (degraded input -> clean "
                           "target); a codec is scored against its own input")

    if crop_seconds is not None and crop_seconds <= 0:
        raise SoundryError("--crop-seconds must be positive")
    extra_names, skipped = resolve_extra_metrics(extra)
    for name, reason in skipped.items():
        log.info("metric %s skipped: %s", name, reason)
    check_encoders(list(baselines))  # before any work: a missing ffmpeg is a clear error
    model = load_codec(model_dir)
    sr, ch = int(model.sample_rate), int(getattr(model, "channels", 1))
    files, scan_skipped = list_files(data)
    if limit is not None:
        files = files[:limit]
    model_name = Path(model_dir).resolve().name or "model"
    systems = [model_system(model, levels, model_name)]
    base_specs = baseline_systems(baselines, sr)
    taken = {model_name}
    for spec in base_specs:
        if spec.name in taken:
            spec.name = f"{spec.name} (baseline)"
        taken.add(spec.name)
    systems.extend(base_specs)
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    return evaluate(
        systems,
        files,
        root=root,
        sample_rate=sr,
        channels=ch,
        out_dir=out,
        crop_seconds=crop_seconds,
        extra_metrics=extra_names,
        skipped_metrics=skipped,
        seed=seed,
        resamples=resamples,
        progress=progress,
        settings={
            "model": str(model_dir),
            "data": str(data),
            "levels": systems[0].info["levels"],
            "skipped_files": scan_skipped,
        },
    )


def run_transform_eval(
    model_dir: str | Path,
    data: str | Path,
    target: str | Path,
    *,
    out: str | Path,
    crop_seconds: float | None = None,
    extra: str = "auto",
    seed: int = 0,
    resamples: int = 2000,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score a transform export on paired folders (inputs `data`, clean `target`, matched by
    relative path without extension) beside the unprocessed input as a baseline row."""
    import torch

    from soundry.data.scan import scan_pairs
    from soundry.models.export import load_export
    from soundry.models.transform import enhance_chunked

    if crop_seconds is not None and crop_seconds <= 0:
        raise SoundryError("--crop-seconds must be positive")
    extra_names, skipped = resolve_extra_metrics(extra)
    model = load_export(model_dir)
    sr, ch = int(model.sample_rate), int(model.channels)
    index = scan_pairs(data, target, cache=False)
    for item in index.skipped:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    if not index.items:
        raise DataError(f"no (input, target) pair in {data} and {target} (files are matched "
                        "by relative path without extension)")
    pairs = {Path(it.target): Path(it.path) for it in index.items}
    files = list(pairs)[:limit] if limit is not None else list(pairs)
    name = Path(model_dir).resolve().name or "model"

    def run(audio: np.ndarray) -> np.ndarray:
        return enhance_chunked(model, torch.from_numpy(audio)).numpy()

    systems = [SystemSpec(name=name, kind="model", fn=run),
               SystemSpec(name="input (unprocessed)", kind="baseline", fn=lambda a: a)]
    root = Path(target) if Path(target).is_dir() else Path(target).parent
    return evaluate(systems, files, root=root, sample_rate=sr, channels=ch, out_dir=out,
                    crop_seconds=crop_seconds, extra_metrics=extra_names,
                    skipped_metrics=skipped, seed=seed, resamples=resamples,
                    progress=progress, inputs=pairs,
                    settings={"model": str(model_dir), "data": str(data),
                              "target": str(target), "skipped_files": list(index.skipped)})


def format_table(summary: dict[str, Any]) -> Any:
    """A rich Table: one row per metric, one column per system; mean over [95% CI]."""
    from rich.markup import escape
    from rich.table import Table

    higher = set(summary.get("higher_is_better", []))
    table = Table(
        title=f"{summary['files']} file(s) at {summary['sample_rate']} Hz: mean and "
        "bootstrap 95% CI of the mean",
        title_justify="left",
        show_lines=True,
    )
    table.add_column("metric", style="bold")
    for name, sys_summary in summary["systems"].items():
        kbps = sys_summary.get("bitrate_kbps")
        rate = f"\n[dim]{fmt_metric(kbps, '.2f')} kbps[/]" if kbps is not None else ""
        table.add_column(f"{escape(str(name))}{rate}", justify="right")
    for m in summary["metrics"]:
        cells = [f"{m} {'↑' if m in higher else '↓'}"]
        for sys_summary in summary["systems"].values():
            d = sys_summary.get("metrics", {}).get(m) or {}
            n, total = d.get("n") or 0, sys_summary.get("n") or 0
            if d.get("mean") is None:
                why = []
                if d.get("n_infinite"):
                    why.append(f"{d['n_infinite']} of {total} infinite")
                if d.get("n_failed"):
                    why.append(f"{d['n_failed']} of {total} failed")
                cells.append("n/a" + (f"\n[dim]{', '.join(why)}[/]" if why else ""))
                continue
            lo, hi = (list(d.get("ci95") or []) + [None, None])[:2]
            scored = f" [dim](n={n})[/]" if n < total else ""
            ci = escape(f"[{_fmt(lo)}, {_fmt(hi)}]")  # "[n/a, ...]" would read as markup
            cells.append(f"{_fmt(d['mean'])}{scored}\n[dim]{ci}[/]")
        table.add_row(*cells)
    return table


def _fmt(v: Any) -> str:
    """3 decimals, or 3 significant digits for large / small values; n/a if not finite."""
    spec = ".3f"
    if isinstance(v, int | float) and math.isfinite(v) and (abs(v) >= 100 or abs(v) < 0.01):
        spec = ".3g"
    return fmt_metric(v, spec)
