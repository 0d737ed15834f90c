"""Reading a run directory (the layout the training engine writes) for a report.

    RUN/config.yaml        fully resolved recipe
    RUN/provenance.json    version, git commit, command line, packages, hardware
    RUN/metrics.jsonl      {"step", "kind": "train"|"valid", "time", <metric>: float, ...}
    RUN/valid/step_XXXXXXXX/<clip>.wav and <clip>.png (pairs end in _ref / _out)
    RUN/checkpoints/index.json, RUN/summary.json

Every part is optional except that a run needs at least a config or a metrics log: a run
that crashed early still gets a report of what it wrote.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from soundry.errors import SoundryError
from soundry.eval.fmt import kind_of, note_from_counts

STEP_DIR = re.compile(r"^step_(\d+)$")
RESERVED = {"step", "kind", "time", "epoch"}
MAX_NONFINITE_NOTES = 8  # one note per metric up to this many, then one summary line


@dataclass
class Curve:
    """One logged scalar: steps and values in log order (NaN where a value was not finite)."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@dataclass
class Media:
    """One validation item: a clip name (e.g. 'clip00_out') with its audio and/or image."""

    name: str
    wav: Path | None = None
    png: Path | None = None


@dataclass
class ValidStep:
    """The audio a validation at `step` wrote, grouped into ref/out pairs and single items."""

    step: int
    path: Path
    items: dict[str, Media] = field(default_factory=dict)

    def pairs(self) -> dict[str, tuple[Media | None, Media | None]]:
        """clip base name -> (reference, output) for items named '<base>_ref' / '<base>_out'."""
        out: dict[str, tuple[Media | None, Media | None]] = {}
        for name, media in self.items.items():
            for suffix, slot in (("_ref", 0), ("_out", 1)):
                if name.endswith(suffix):
                    base = name[: -len(suffix)]
                    pair = list(out.get(base, (None, None)))
                    pair[slot] = media
                    out[base] = (pair[0], pair[1])
        return dict(sorted(out.items()))

    def inputs(self) -> dict[str, Media]:
        """clip base name -> the model's input ('<base>_in') for a clip that also has a
        ref/out pair: the (input, output, target) triples of an audio-to-audio run."""
        bases = self.pairs()
        return {n[: -len("_in")]: m for n, m in sorted(self.items.items())
                if n.endswith("_in") and n[: -len("_in")] in bases}

    def singles(self) -> dict[str, Media]:
        """Items that are not part of a pair or triple (e.g. generations)."""
        triple = {f"{b}_in" for b in self.inputs()}
        return {n: m for n, m in sorted(self.items.items())
                if not n.endswith(("_ref", "_out")) and n not in triple}


@dataclass
class Run:
    """Everything a report shows about one run directory."""

    path: Path
    label: str
    config: dict[str, Any]
    config_text: str
    provenance: dict[str, Any]
    train: dict[str, Curve]
    valid: dict[str, Curve]
    valid_steps: list[ValidStep]
    summary: dict[str, Any] | None = None
    checkpoints: dict[str, Any] | None = None
    first_time: float | None = None
    last_time: float | None = None
    last_step: int | None = None
    problems: list[str] = field(default_factory=list)
    #: training-health findings recorded in health.jsonl (`soundry.health`), as dicts
    health: list[dict[str, Any]] = field(default_factory=list)
    #: classical codecs scored on the run's validation clips (RUN/valid/baselines.json):
    #: name -> {metric: value}
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float | None:
        """Training + validation + checkpoint time from summary.json, else the log's span."""
        s = self.summary or {}
        parts = [s.get(k) for k in ("train_seconds", "valid_seconds", "checkpoint_seconds")]
        if isinstance(parts[0], int | float):
            return float(sum(p for p in parts if isinstance(p, int | float)))
        if self.first_time is None or self.last_time is None:
            return None
        return max(0.0, self.last_time - self.first_time)

    @property
    def status(self) -> str | None:
        """How the run ended ('completed', 'stopped_nonfinite', ...), from summary.json."""
        value = (self.summary or {}).get("status")
        return str(value) if value else None

    def audio_steps(self) -> list[ValidStep]:
        return [s for s in self.valid_steps if any(m.wav for m in s.items.values())]


def load_run(path: str | Path) -> Run:
    """Read a run directory; a path that is not one raises a SoundryError saying why."""
    root = Path(path)
    if not root.is_dir():
        raise SoundryError(f"run directory '{root}' does not exist")
    has_config = (root / "config.yaml").is_file()
    has_metrics = (root / "metrics.jsonl").is_file()
    if not (has_config or has_metrics):
        raise SoundryError(
            f"'{root}' is not a run directory: it has neither config.yaml nor metrics.jsonl "
            "(pass the folder `soundry train` wrote)"
        )
    problems: list[str] = []
    config: dict[str, Any] = {}
    config_text = ""
    if has_config:
        config_text = (root / "config.yaml").read_text(errors="replace")
        try:
            loaded = yaml.safe_load(config_text)
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            problems.append(f"config.yaml is not valid YAML ({exc.__class__.__name__})")
    provenance = _read_json(root / "provenance.json", problems) or {}
    run = Run(
        path=root,
        label="",
        config=config,
        config_text=config_text,
        provenance=provenance if isinstance(provenance, dict) else {},
        train={},
        valid={},
        valid_steps=_read_valid_steps(root / "valid"),
        summary=_read_json(root / "summary.json", problems),
        checkpoints=_read_json(root / "checkpoints" / "index.json", problems),
        problems=problems,
    )
    if has_metrics:
        _read_metrics(root / "metrics.jsonl", run)
    baselines = _read_json(root / "valid" / "baselines.json", problems)
    if isinstance(baselines, dict) and isinstance(baselines.get("baselines"), dict):
        run.baselines = {str(name): {k: float(v) for k, v in values.items()
                                     if isinstance(v, int | float)}
                         for name, values in baselines["baselines"].items()
                         if isinstance(values, dict)}
    from soundry.health.doctor import merge
    from soundry.health.runner import read_findings

    run.health = [f.to_dict() for f in merge(read_findings(root))]
    return run


def assign_labels(runs: list[Run]) -> None:
    """Short distinct labels: the recipe's `name` when unique, else the folder names."""
    names = [str(r.config.get("name") or "") for r in runs]
    if all(names) and len(set(names)) == len(names):
        labels = names
    else:
        labels = [r.path.name or str(r.path) for r in runs]
        if len(set(labels)) != len(labels):
            labels = [f"{r.path.parent.name}/{r.path.name}" for r in runs]
        if len(set(labels)) != len(labels):
            labels = [f"run {i + 1} ({lab})" for i, lab in enumerate(labels)]
    for run, label in zip(runs, labels, strict=True):
        run.label = label


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        problems.append(f"{path.name} is not valid JSON")
        return None


def _read_metrics(path: Path, run: Run) -> None:
    bad = 0
    # key -> (counts of non-finite kinds, values logged): for the report's notes
    nonfinite: dict[str, dict[str, int]] = {}
    logged: dict[str, int] = {}
    with path.open(errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. the last line of a run killed mid-write
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int | float):
                bad += 1
                continue
            step = int(rec["step"])
            kind = rec.get("kind")
            t = rec.get("time")
            if isinstance(t, int | float) and not isinstance(t, bool):
                run.first_time = t if run.first_time is None else min(run.first_time, t)
                run.last_time = t if run.last_time is None else max(run.last_time, t)
            if kind != "valid":
                run.last_step = step if run.last_step is None else max(run.last_step, step)
            for key, value in rec.items():
                if key in RESERVED or isinstance(value, bool):
                    continue
                if value is not None and not isinstance(value, int | float):
                    continue
                logged[key] = logged.get(key, 0) + 1
                kind = kind_of(value)  # the engine writes non-finite values as null
                if kind is not None:
                    counts = nonfinite.setdefault(key, {})
                    counts[kind] = counts.get(kind, 0) + 1
                    value = float("nan")
                value = float(value)
                is_valid = kind == "valid" or key.startswith("valid/")
                target = run.valid if is_valid else run.train
                curve = target.setdefault(key, Curve())
                curve.steps.append(step)
                curve.values.append(value)
    if bad:
        run.problems.append(f"metrics.jsonl: {bad} unreadable line(s) skipped")
    keys = sorted(nonfinite, key=lambda k: (not k.startswith("valid/"), k))  # valid first
    for key in keys[:MAX_NONFINITE_NOTES]:
        note = note_from_counts(key, nonfinite[key], logged[key], "logged steps")
        run.problems.append(f"metrics.jsonl: {note}; shown as n/a, left out of the curves")
    rest = keys[MAX_NONFINITE_NOTES:]
    if rest:
        run.problems.append(
            f"metrics.jsonl: {len(rest)} more metric(s) not finite at some steps "
            f"({', '.join(rest[:6])}{', ...' if len(rest) > 6 else ''}); shown as n/a"
        )
    for curves in (run.train, run.valid):
        for key, curve in curves.items():
            curves[key] = _by_step(curve)


def _by_step(curve: Curve) -> Curve:
    """Points sorted by step; of several values logged at one step the last one counts."""
    last: dict[int, float] = {}
    for step, value in zip(curve.steps, curve.values, strict=True):
        last[step] = value
    steps = sorted(last)
    return Curve(steps=steps, values=[last[s] for s in steps])


def _read_valid_steps(folder: Path) -> list[ValidStep]:
    if not folder.is_dir():
        return []
    steps = []
    for sub in folder.iterdir():
        m = STEP_DIR.match(sub.name)
        if not (m and sub.is_dir()):
            continue
        vs = ValidStep(step=int(m.group(1)), path=sub)
        for f in sorted(sub.iterdir()):
            suffix = f.suffix.lower()
            if suffix not in (".wav", ".png"):
                continue
            media = vs.items.setdefault(f.stem, Media(name=f.stem))
            if suffix == ".wav":
                media.wav = f
            else:
                media.png = f
        steps.append(vs)
    return sorted(steps, key=lambda s: s.step)
