"""The report's Evaluation section: `soundry eval` summaries (a mixin of the page).

Where the summaries come from:

- `soundry report RUN --eval DIR` (repeatable): DIR/summary.json, the folder `soundry eval
  --out DIR` wrote (or the JSON file itself); a missing or unreadable one is a DataError,
  which the CLI prints as one line;
- every RUN/eval/summary.json and RUN/eval/*/summary.json inside a run directory, without
  a flag; an unreadable one is left out with a note among the run's problems.

One table per summary: a row per system (the model first, then the baselines in the order
`soundry eval` scored them), a column per metric, each cell the mean over files with the
bootstrap 95% CI of the mean as "[lo, hi]". The best mean of each column is highlighted,
its direction from `soundry.eval.directions`, except that a signed difference
(loudness_diff_lufs: output minus reference) is best closest to zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from soundry.errors import DataError
from soundry.eval.directions import arrow, best_value
from soundry.eval.fmt import NA, finite_or_none
from soundry.eval.report_assets.keys import _num
from soundry.eval.report_assets.runs import Run

# Columns in this order first; any other metric follows in the order the summary lists it.
EVAL_METRIC_ORDER = [
    "mel_distance",
    "stft_distance",
    "si_sdr",
    "l1",
    "pesq",
    "stoi",
    "visqol_speech",
    "visqol",
    "loudness_diff_lufs",
]
# Signed differences (output minus reference): the best mean is the one closest to zero.
SIGNED = ("loudness_diff",)


@dataclass
class EvalSummary:
    """One `soundry eval` summary.json and, when found inside a run, that run."""

    path: Path
    data: dict[str, Any]
    run: Run | None = None


def read_eval(path: str | Path) -> EvalSummary:
    """The summary of an `--eval` folder (or summary.json file); DataError saying why not."""
    given = Path(path)
    hint = "pass the folder `soundry eval --out DIR` wrote"
    if not given.exists():
        raise DataError(f"--eval: '{given}' does not exist ({hint})")
    file = given / "summary.json" if given.is_dir() else given
    if not file.is_file():
        raise DataError(f"--eval: '{given}' holds no summary.json ({hint})")
    data, why = _load(file)
    if data is None:
        raise DataError(f"--eval: '{file}' {why}")
    return EvalSummary(path=file, data=data)


def discover_evals(run: Run) -> list[EvalSummary]:
    """RUN/eval/summary.json and RUN/eval/*/summary.json; unreadable ones become problems."""
    folder = run.path / "eval"
    if not folder.is_dir():
        return []
    found = []
    for file in [folder / "summary.json", *sorted(folder.glob("*/summary.json"))]:
        if not file.is_file():
            continue
        data, why = _load(file)
        if data is None:
            run.problems.append(
                f"{file.relative_to(run.path).as_posix()} {why}; left out of the Evaluation "
                "section"
            )
            continue
        found.append(EvalSummary(path=file, data=data, run=run))
    return found


def _load(file: Path) -> tuple[dict[str, Any] | None, str]:
    """(summary, "") or (None, why it is not a usable `soundry eval` summary)."""
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc.__class__.__name__})"
    except json.JSONDecodeError:
        return None, "is not valid JSON"
    systems = data.get("systems") if isinstance(data, dict) else None
    if not isinstance(systems, dict) or not any(isinstance(v, dict) for v in systems.values()):
        return None, "is not a soundry eval summary (no 'systems' with scores)"
    return data, ""


def _signed(metric: str) -> bool:
    return any(t in metric.lower() for t in SIGNED)


def _best(metric: str, means: list[float | None]) -> float | None:
    """The best of the finite means (None when fewer than two systems have one)."""
    finite = [v for v in means if v is not None]
    if len(finite) < 2:
        return None
    if _signed(metric):
        return min(finite, key=abs)
    return best_value(metric, finite)


def _is_best(metric: str, value: float | None, best: float | None) -> bool:
    if value is None or best is None:
        return False
    return abs(value) == abs(best) if _signed(metric) else value == best


def eval_systems(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, statistics) per system: the model(s) first, then the rest in file order."""
    systems = [(str(n), v) for n, v in summary["systems"].items() if isinstance(v, dict)]
    return sorted(systems, key=lambda nv: nv[1].get("kind") != "model")  # stable


def eval_metrics(summary: dict[str, Any], systems: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Metrics some system has statistics for: EVAL_METRIC_ORDER first, then the rest."""
    listed = summary.get("metrics") if isinstance(summary.get("metrics"), list) else []
    names: list[str] = []
    for m in [*listed, *(k for _, v in systems for k in _stats_of(v))]:
        if isinstance(m, str) and m not in names and any(m in _stats_of(v) for _, v in systems):
            names.append(m)
    known = [m for m in EVAL_METRIC_ORDER if m in names]
    return known + [m for m in names if m not in known]


def _stats_of(system: dict[str, Any]) -> dict[str, Any]:
    stats = system.get("metrics")
    if not isinstance(stats, dict):
        return {}
    return {str(k): v for k, v in stats.items() if isinstance(v, dict)}


class EvalSections:
    """The report's Evaluation section (a mixin of the page)."""

    evals: list[EvalSummary]

    def _evaluation(self) -> str:
        if not self.evals:
            return ""
        return (
            '<p class="note">Scores of <code>soundry eval</code> on whole files (or their '
            "centred crops) at their own level: the mean over files, and below it the bootstrap "
            "95% confidence interval of the mean. Best mean of each column highlighted "
            "(↓ lower is better, ↑ higher is better, →0 closest to zero is best).</p>"
            + "".join(self._eval_table(ev) for ev in self.evals)
        )

    def _eval_caption(self, ev: EvalSummary, systems: list[tuple[str, dict[str, Any]]]) -> str:
        s = ev.data
        model = s.get("model") or next((n for n, v in systems if v.get("kind") == "model"), "")
        text = f"{model or 'unknown model'}"
        if s.get("data"):
            text += f" on {s['data']}"
        if s.get("target"):
            text += f" against {s['target']}"
        details = []
        files = s.get("files")
        if isinstance(files, int) and not isinstance(files, bool):
            details.append(f"{files} file{'s' if files != 1 else ''}")
        failed = s.get("failed_files")
        if isinstance(failed, list) and failed:
            details.append(f"{len(failed)} unreadable")
        crop = finite_or_none(s.get("crop_seconds"))
        if crop is not None:
            details.append(f"centred {crop:g} s crops")
        rate = finite_or_none(s.get("sample_rate"))
        if rate is not None:
            details.append(f"{rate:g} Hz")
        if details:
            text += f" ({', '.join(details)})"
        if ev.run is not None and self.multi:
            text = f"{ev.run.label}: {text}"
        return text

    def _eval_table(self, ev: EvalSummary) -> str:
        systems = eval_systems(ev.data)
        metrics = eval_metrics(ev.data, systems)
        means = {
            m: [finite_or_none(_stats_of(v).get(m, {}).get("mean")) for _, v in systems]
            for m in metrics
        }
        best = {m: _best(m, means[m]) for m in metrics}
        head = "".join(
            f'<th scope="col" class="num">{escape(m)} <span aria-hidden="true">'
            f"{'→0' if _signed(m) else arrow(m)}</span></th>"
            for m in metrics
        )
        rows = []
        for i, (name, system) in enumerate(systems):
            stats = _stats_of(system)
            cells = []
            for m in metrics:
                value = means[m][i]
                is_best = _is_best(m, value, best[m])
                kind = "num best" if is_best else "num"
                label = ' aria-label="best"' if is_best else ""
                cells.append(f'<td class="{kind}"{label}>{self._eval_cell(stats.get(m), system)}'
                             "</td>")
            about = [str(system.get("kind") or "")]
            kbps = finite_or_none(system.get("bitrate_kbps"))
            if kbps is not None:
                about.append(f"{_num(kbps)} kbps")
            detail = " · ".join(a for a in about if a)
            detail_html = f" <small>{escape(detail)}</small>" if detail else ""
            rows.append(
                f'<tr><th scope="row">{escape(name)}{detail_html}</th>{"".join(cells)}</tr>'
            )
        where = ev.path if ev.run is None else ev.path.relative_to(ev.run.path)
        source = f"<code>{escape(where.as_posix())}</code>"
        if ev.run is not None:
            source += f" in run {escape(ev.run.label)}"
        return (
            '<div class="table-wrap"><table class="eval-summary">'
            f"<caption>{escape(self._eval_caption(ev, systems))}</caption>"
            f'<thead><tr><th scope="col">system</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            f'<p class="note">From {source}.</p>{self._eval_notes(ev.data)}'
        )

    @staticmethod
    def _eval_cell(stats: dict[str, Any] | None, system: dict[str, Any]) -> str:
        if stats is None:
            return "—"  # not scored for this system
        mean = finite_or_none(stats.get("mean"))
        total = system.get("n")
        of = f" of {total}" if isinstance(total, int) else ""
        if mean is None:
            why = [f"{stats[k]}{of} {word}" for k, word in
                   (("n_infinite", "infinite"), ("n_failed", "failed"))
                   if isinstance(stats.get(k), int) and stats[k]]
            title = f' title="{escape(", ".join(why))}"' if why else ""
            return f"<span{title}>{NA}</span>"
        text = escape(_num(mean))
        n = stats.get("n")
        if isinstance(n, int) and isinstance(total, int) and n < total:
            text += f" <small>(n={n})</small>"
        ci = stats.get("ci95")
        if isinstance(ci, list) and len(ci) == 2:
            lo, hi = (finite_or_none(v) for v in ci)
            if lo is not None and hi is not None:
                text += f'<small class="ci">[{escape(_num(lo))}, {escape(_num(hi))}]</small>'
        return text

    @staticmethod
    def _eval_notes(summary: dict[str, Any]) -> str:
        given = summary.get("notes")
        notes = [str(n) for n in given] if isinstance(given, list) else []
        skipped = summary.get("skipped_metrics")
        if isinstance(skipped, dict):
            notes.extend(f"{k} not computed: {v}" for k, v in skipped.items())
        if not notes:
            return ""
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        return f"<details><summary>{len(notes)} note(s)</summary><ul>{items}</ul></details>"
