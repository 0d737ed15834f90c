"""`soundry report`: one self-contained HTML page for one run, or a comparison of several.

For one run: overview, config and provenance, curves (validation metrics with the matching
training loss, generator and discriminator losses, grad norms, learning rates), validation
metrics by step, and reference vs output players with mel spectrograms at several
validation steps.

For several runs: a config diff (nested keys flattened to dotted names; only keys whose
values differ), the same curves overlaid on shared axes (one colour and dash per run),
validation metrics side by side at the steps all runs validated, and the same validation
clip from every run next to each other for listening.

Either kind gets an Evaluation section when there are `soundry eval` summaries: those passed
with `evals` (`--eval DIR`) and any RUN/eval/summary.json or RUN/eval/*/summary.json (see
`soundry.eval.report_assets.page_eval`).

The page needs no network: charts are inline SVG drawn here, CSS and the small script are
inline, a Content-Security-Policy forbids remote loads, and media are embedded or copied
into a folder beside the HTML (see `soundry.eval.report_assets.media` for the rule).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from soundry import __version__
from soundry.errors import SoundryError
from soundry.eval.report_assets.keys import pick_evenly  # noqa: F401  (public API)
from soundry.eval.report_assets.media import MediaStore
from soundry.eval.report_assets.page_curves import CurveSections
from soundry.eval.report_assets.page_eval import (
    EvalSections,
    EvalSummary,
    discover_evals,
    read_eval,
)
from soundry.eval.report_assets.page_overview import OverviewSections
from soundry.eval.report_assets.page_tables import TableSections
from soundry.eval.report_assets.runs import Run, assign_labels, load_run
from soundry.eval.report_assets.script import JS
from soundry.eval.report_assets.style import CSS

CSP = (
    "default-src 'none'; img-src data: file: 'self'; media-src data: file: 'self'; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)


@dataclass
class ReportResult:
    """What `write_report` produced."""

    path: Path
    media_mode: str  # "embed" or "folder"
    media_folder: Path | None
    runs: list[str]
    players: int
    images: int
    media_bytes: int


def build_report(
    runs: Sequence[str | Path],
    out: str | Path = "report.html",
    *,
    media: str = "auto",
    listen_steps: int = 4,
    max_clips: int = 6,
    evals: Sequence[str | Path] = (),
) -> Path:
    """Write the report for `runs` to `out` and return its path (see `write_report`)."""
    return write_report(
        runs, out, media=media, listen_steps=listen_steps, max_clips=max_clips, evals=evals
    ).path


def write_report(
    runs: Sequence[str | Path],
    out: str | Path = "report.html",
    *,
    media: str = "auto",
    listen_steps: int = 4,
    max_clips: int = 6,
    evals: Sequence[str | Path] = (),
) -> ReportResult:
    """Write one HTML report for one run (a run report) or several (a comparison).

    media: "auto" | "embed" | "folder" (see `report_assets.media`).
    listen_steps: how many validation steps get audio players (spread evenly, last included).
    max_clips: at most this many validation clips per step.
    evals: `soundry eval` output folders (or their summary.json) for the Evaluation section,
      besides those found in the runs' eval/ folders; a missing or unreadable one raises a
      DataError.
    """
    if not runs:
        raise SoundryError("give at least one run directory")
    if listen_steps < 1 or max_clips < 1:
        raise SoundryError("--listen-steps and --max-clips must be at least 1")
    given = [read_eval(p) for p in evals]  # a bad --eval fails before any work
    loaded = [load_run(r) for r in runs]
    assign_labels(loaded)
    summaries = _collect_evals(loaded, given)
    out_path = Path(out)
    if out_path.suffix.lower() not in (".html", ".htm"):
        out_path = out_path / "report.html" if out_path.is_dir() else out_path.with_suffix(".html")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    page = _Page(loaded, MediaStore(), listen_steps, max_clips, summaries)
    html = page.render()
    html, mode, folder = page.store.finalize(html, out_path, media)
    html = html.replace(
        "@@media-mode@@",
        escape(
            "embedded in this file"
            if mode == "embed"
            else f"in the folder {folder.name}/ beside this file"
            if folder
            else mode
        ),
    )
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_path)
    return ReportResult(
        path=out_path,
        media_mode=mode,
        media_folder=folder,
        runs=[r.label for r in loaded],
        players=page.players,
        images=page.images,
        media_bytes=page.store.total_bytes(),
    )


def _collect_evals(runs: list[Run], given: list[EvalSummary]) -> list[EvalSummary]:
    """The summaries found in the runs' eval/ folders, then the given ones; each file once."""
    found: list[EvalSummary] = []
    seen: set[Path] = set()
    for ev in [s for r in runs for s in discover_evals(r)] + given:
        key = ev.path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(ev)
    return found


# ----------------------------------------------------------------------------- the page


class _Page(OverviewSections, CurveSections, TableSections, EvalSections):
    def __init__(
        self,
        runs: list[Run],
        store: MediaStore,
        listen_steps: int,
        max_clips: int,
        evals: Sequence[EvalSummary] = (),
    ):
        self.runs = runs
        self.evals = list(evals)
        self.store = store
        self.listen_steps = listen_steps
        self.max_clips = max_clips
        self.players = 0
        self.images = 0
        self._chart_ids = 0
        self.multi = len(runs) > 1

    # ---------------------------------------------------------------- skeleton
    def render(self) -> str:
        if self.multi:
            title = f"Comparison of {len(self.runs)} runs"
            sections = [
                ("health", "Health", self._health()),
                ("overview", "Overview", self._overview_multi()),
                ("config", "Config differences", self._config_multi()),
                ("curves", "Curves", self._curves()),
                ("metrics", "Validation metrics at matched steps", self._metrics_multi()),
                ("listen", "Listen side by side", self._listen_multi()),
            ]
        else:
            title = f"Run report: {self.runs[0].label}"
            sections = [
                ("health", "Health", self._health()),
                ("overview", "Overview", self._overview_single()),
                ("config", "Config and provenance", self._config_single()),
                ("curves", "Curves", self._curves()),
                ("metrics", "Validation metrics by step", self._metrics_single()),
                ("listen", "Listen", self._listen_single()),
            ]
        versus = self._versus_input()
        if versus:
            sections.insert(4, ("versus-input", "Output against the input", versus))
        evaluation = self._evaluation()
        if evaluation:  # after the in-run validation metrics, before listening
            sections.insert(len(sections) - 1, ("evaluation", "Evaluation", evaluation))
        toc = "".join(f'<li><a href="#{sid}">{escape(name)}</a></li>' for sid, name, _ in sections)
        body = "".join(
            f'<section id="{sid}" aria-labelledby="{sid}-h"><h2 id="{sid}-h">{escape(name)}</h2>'
            f"{content}</section>"
            for sid, name, content in sections
        )
        generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        runs_list = self._runs_legend()
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="generator" content="soundry">'
            f"<title>{escape(title)} · soundry</title><style>{CSS}</style></head><body>"
            '<a class="skip" href="#main">Skip to content</a>'
            f'<header class="page"><h1>{escape(title)}</h1>'
            f"<p>soundry {escape(__version__)} · generated {escape(generated)}</p>"
            f"{runs_list}"
            f'<nav class="toc" aria-label="Sections"><ul>{toc}</ul></nav></header>'
            f'<main id="main">{body}</main>'
            "<footer><p>Self-contained report: it works offline and loads nothing from the "
            "network. Media are @@media-mode@@.</p>"
            f"<p>Runs: {', '.join(f'<code>{escape(str(r.path))}</code>' for r in self.runs)}</p>"
            f"</footer><script>{JS}</script></body></html>\n"
        )

    # ---------------------------------------------------------------- health
