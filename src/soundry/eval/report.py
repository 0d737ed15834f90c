"""`soundry report`: one self-contained HTML page for one run, or a comparison of several.

For one run: overview, config and provenance, curves (validation metrics with the matching
training loss, generator and discriminator losses, grad norms, learning rates), validation
metrics by step, and reference vs output players with mel spectrograms at several
validation steps.

For several runs: a config diff (nested keys flattened to dotted names; only keys whose
values differ), the same curves overlaid on shared axes (one colour and dash per run),
validation metrics side by side at the steps all runs validated, and the same validation
clip from every run next to each other for listening.

The page needs no network: charts are inline SVG drawn here, CSS and the small script are
inline, a Content-Security-Policy forbids remote loads, and media are embedded or copied
into a folder beside the HTML (see `soundry.eval.report_assets.media` for the rule).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import soundfile as sf

from soundry import __version__
from soundry.config import flatten
from soundry.errors import SoundryError
from soundry.eval.fmt import NA
from soundry.eval.report_assets.charts import (
    LineChart,
    Series,
    color_for,
    dash_for,
    format_number,
    legend_html,
)
from soundry.eval.report_assets.media import MediaStore
from soundry.eval.report_assets.runs import Curve, Media, Run, ValidStep, assign_labels, load_run
from soundry.eval.report_assets.script import JS
from soundry.eval.report_assets.style import CSS

# Metric-name fragments for which a larger value is better (everything else: smaller).
HIGHER_IS_BETTER = (
    "si_sdr",
    "sisdr",
    "sdr",
    "snr",
    "pesq",
    "stoi",
    "visqol",
    "usage",
    "perplexity",
    "accuracy",
)
# Logged values that are settings or bookkeeping rather than scores: no "best".
NEUTRAL = ("bitrate", "kbps", "lr", "time", "seconds")
CSP = (
    "default-src 'none'; img-src data: file: 'self'; media-src data: file: 'self'; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'"
)
_MISSING = object()


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
) -> Path:
    """Write the report for `runs` to `out` and return its path (see `write_report`)."""
    return write_report(runs, out, media=media, listen_steps=listen_steps, max_clips=max_clips).path


def write_report(
    runs: Sequence[str | Path],
    out: str | Path = "report.html",
    *,
    media: str = "auto",
    listen_steps: int = 4,
    max_clips: int = 6,
) -> ReportResult:
    """Write one HTML report for one run (a run report) or several (a comparison).

    media: "auto" | "embed" | "folder" (see `report_assets.media`).
    listen_steps: how many validation steps get audio players (spread evenly, last included).
    max_clips: at most this many validation clips per step.
    """
    if not runs:
        raise SoundryError("give at least one run directory")
    if listen_steps < 1 or max_clips < 1:
        raise SoundryError("--listen-steps and --max-clips must be at least 1")
    loaded = [load_run(r) for r in runs]
    assign_labels(loaded)
    out_path = Path(out)
    if out_path.suffix.lower() not in (".html", ".htm"):
        out_path = out_path / "report.html" if out_path.is_dir() else out_path.with_suffix(".html")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    page = _Page(loaded, MediaStore(), listen_steps, max_clips)
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


# ----------------------------------------------------------------------------- helpers


def higher_is_better(metric: str) -> bool:
    name = metric.lower().removeprefix("valid/")
    return not name.startswith("loss") and any(t in name for t in HIGHER_IS_BETTER)


def direction(metric: str) -> str | None:
    """'higher' or 'lower' (is better), or None for values that are settings, not scores."""
    name = metric.lower().removeprefix("valid/")
    if any(t in name for t in NEUTRAL):
        return None
    return "higher" if higher_is_better(name) else "lower"


def _better_text(metric: str) -> str:
    d = direction(metric)
    return f" ({d} is better)" if d else ""


def _arrow(metric: str) -> str:
    d = direction(metric)
    return {"higher": "↑", "lower": "↓"}.get(d or "", "")


def _best(metric: str, values: list[float]) -> float | None:
    d = direction(metric)
    if d is None or not values:
        return None
    return max(values) if d == "higher" else min(values)


def pick_evenly(items: Sequence[Any], n: int) -> list[Any]:
    """Up to `n` items spread evenly over `items`, always including the last one."""
    items = list(items)
    if len(items) <= n:
        return items
    if n == 1:
        return [items[-1]]
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def is_discriminator_key(key: str) -> bool:
    """'loss/d', 'loss/d_real', 'loss/disc_adv', 'loss/adv_d' -> True."""
    name = key.lower().removeprefix("loss/")
    parts = name.replace("-", "_").replace(".", "_").replace("/", "_").split("_")
    return "d" in parts or "disc" in name or "discriminator" in name


# Which audio the in-run figures score; `soundry eval` figures of the same model differ.
_VALID_SCOPE = (
    "In-run validation scores fixed crops of data.valid_seconds, loudness-normalised as in "
    "training; soundry eval scores whole files at their own level."
)

# Validation metrics shown first, in this order (the rest follow alphabetically).
METRIC_ORDER = [
    "mel_distance",
    "stft_distance",
    "si_sdr",
    "l1",
    "loss",
    "usage",
    "perplexity",
    "dead",
    "bitrate_kbps",
]
_AT_LEVELS = re.compile(r"^(?P<base>.+)@(?P<n>\d+)$")
_PER_LEVEL = re.compile(r"^(?P<base>.+)/(?P<var>l\d+|level_?\d+|mean|min|max)$")


def metric_group(name: str) -> tuple[str, str]:
    """'mel_distance@2' -> ('mel_distance', '2 levels'); 'usage/l3' -> ('usage', 'l3');
    'loss/level_0' -> ('loss', 'level_0'); anything else -> (name, '')."""
    m = _AT_LEVELS.match(name)
    if m:
        return m["base"], f"{m['n']} levels"
    m = _PER_LEVEL.match(name)
    if m:
        return m["base"], m["var"]
    return name, ""


def is_primary(name: str) -> bool:
    """A headline metric: not one of several per-level or fewer-levels variants."""
    return metric_group(name)[1] in ("", "mean")


def _group_order(group: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(group) if group in METRIC_ORDER else len(METRIC_ORDER), group)


def _variant_label(group: str, variant: str, has_levels: bool) -> str:
    if not variant:
        return "all levels" if has_levels else group
    if re.fullmatch(r"l\d+", variant):
        return f"level {variant[1:]}"
    return variant.replace("_", " ")


def group_keys(keys: Sequence[str], prefix: str = "") -> dict[str, list[str]]:
    """Keys (with an optional prefix such as 'valid/') grouped by `metric_group`, groups in
    METRIC_ORDER, the primary key first within each group."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        group, _ = metric_group(key.removeprefix(prefix))
        groups.setdefault(group, []).append(key)
    ordered = dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0])))
    for members in ordered.values():
        members.sort(
            key=lambda k: (not is_primary(k.removeprefix(prefix)), _natural(k.removeprefix(prefix)))
        )
    return ordered


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _value_text(v: Any) -> str:
    if v is _MISSING:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)


def _num(v: float | None) -> str:
    """A value for a table cell: "—" when nothing was logged, "n/a" when not finite."""
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return NA
    return format_number(v) if abs(v) >= 1e4 or abs(v) < 1e-3 else f"{v:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    return None


def _last_value(curve: Curve) -> float | None:
    """The last finite value; NaN when every logged value was not finite; None if empty."""
    for v in reversed(curve.values):
        if math.isfinite(v):
            return v
    return float("nan") if curve.values else None


def _valid_name(key: str) -> str:
    return key.removeprefix("valid/")


# ----------------------------------------------------------------------------- the page


class _Page:
    def __init__(self, runs: list[Run], store: MediaStore, listen_steps: int, max_clips: int):
        self.runs = runs
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
    def _health(self) -> str:
        """Each run's training-health findings (health.jsonl), errors first, with the curve
        or the validation clip that shows each."""
        parts = []
        for run in self.runs:
            label = f"{run.label}: " if self.multi else ""
            if not run.health:
                parts.append(f'<p class="note">{escape(label)}no monitor found a problem '
                             "(soundry doctor re-checks a run offline).</p>")
                continue
            errors = sum(f.get("severity") == "error" for f in run.health)
            items = []
            for f in run.health:
                sev = str(f.get("severity", "warning"))
                since = f.get("since")
                when = f"step {f.get('step')}" + (f", since step {since}" if since is not None
                                                  else "")
                shown = self._health_evidence(run, f)
                items.append(
                    f'<li class="finding {escape(sev)}"><strong>{escape(sev.upper())}</strong> '
                    f"<code>{escape(str(f.get('monitor')))}</code> ({escape(when)}): "
                    f"{escape(str(f.get('message', '')))}{shown}</li>")
            parts.append(
                f'<div role="alert"><h3>{escape(label)}{errors} error(s), '
                f"{len(run.health) - errors} warning(s)</h3><ul>{''.join(items)}</ul></div>")
        return "".join(parts)

    def _health_evidence(self, run: Run, finding: dict[str, Any]) -> str:
        key, _, aspect = str(finding.get("key", "")).partition(":")
        candidates = {  # the logged curve that shows each kind of finding
            "grad_spike": [f"clip_fraction/{key}" if aspect else f"grad_norm_max/{key}",
                           f"grad_norm/{key}"],
            "discriminator_dominance": ["loss/d"],
            "eos_untrained": ["eos/prob", "eos/targets"],
            "valid_vs_generation": ["loss/lm"],
        }.get(str(finding.get("monitor")), [key])
        for name in candidates:
            if name in run.train:
                c = run.train[name]
                return self._chart(name, [Series(run.label, c.steps, c.values,
                                                 color=color_for(0), smooth=False)])
        clips = (finding.get("evidence") or {}).get("clips")
        if isinstance(clips, dict):
            step = finding.get("step")
            vstep = next((v for v in run.valid_steps if v.step == step), None)
            if vstep is not None:
                name = next(iter(clips))
                return self._player(vstep.items.get(name), name, f"step {step}")
        return ""

    def _runs_legend(self) -> str:
        items = []
        for i, run in enumerate(self.runs):
            swatch = ""
            if self.multi:
                dash = f' stroke-dasharray="{dash_for(i)}"' if dash_for(i) else ""
                swatch = (
                    '<svg class="swatch" viewBox="0 0 22 10" aria-hidden="true">'
                    f'<line x1="0" x2="22" y1="5" y2="5" stroke="{color_for(i)}" '
                    f'stroke-width="3"{dash}/></svg>'
                )
            items.append(
                f'<li title="{escape(str(run.path), quote=True)}">{swatch}'
                f"<strong>{escape(run.label)}</strong></li>"
            )
        return f'<ul class="runs" aria-label="Runs">{"".join(items)}</ul>'

    # ---------------------------------------------------------------- overview
    def _headline_keys(self, run: Run | None = None, limit: int = 6) -> list[str]:
        runs = [run] if run else self.runs
        keys: list[str] = []
        for r in runs:
            keys.extend(k for k in r.valid if k not in keys)
        primary = [k for k in keys if is_primary(_valid_name(k))]
        ordered = [k for members in group_keys(primary, "valid/").values() for k in members]
        return ordered[:limit]

    @staticmethod
    def _facts(run: Run) -> list[tuple[str, str]]:
        facts = []
        if run.status:
            facts.append(("status", run.status.replace("_", " ")))
        facts.append(
            ("last training step", _num(run.last_step) if run.last_step is not None else "—")
        )
        facts.append(("validations", str(len({s for c in run.valid.values() for s in c.steps}))))
        facts.append(("wall time", _duration(run.wall_seconds)))
        rate = (run.summary or {}).get("steps_per_second")
        if isinstance(rate, int | float):
            facts.append(("steps per second", _num(float(rate))))
        skips = run.train.get("nonfinite_skips")
        if skips is not None:
            finite = [v for v in skips.values if math.isfinite(v)]
            facts.append(("non-finite steps skipped", _num(max(finite, default=0.0))))
        return facts

    def _overview_single(self) -> str:
        run = self.runs[0]
        cards = self._facts(run)
        best = self._best_checkpoint(run)
        if best:
            cards.append(("best checkpoint", best))
        for key in self._headline_keys(run, limit=8):
            cards.append((f"{_valid_name(key)} (last)", _num(_last_value(run.valid[key]))))
        html = (
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="k">{escape(k)}</div>'
                f'<div class="v">{escape(v)}</div></div>'
                for k, v in cards
            )
            + "</div>"
        )
        return html + self._problems([run])

    def _overview_multi(self) -> str:
        valid_keys = self._headline_keys()
        fact_names: list[str] = []
        facts = [dict(self._facts(r)) for r in self.runs]
        for f in facts:
            fact_names.extend(k for k in f if k not in fact_names)
        head = "".join(f'<th scope="col">{escape(h)}</th>' for h in fact_names)
        head += '<th scope="col">best checkpoint</th>'
        head += "".join(
            f'<th scope="col" class="num">{escape(_valid_name(k))} (last)</th>' for k in valid_keys
        )
        rows = []
        for run, f in zip(self.runs, facts, strict=True):
            row = f'<th scope="row">{escape(run.label)}</th>'
            row += "".join(f"<td>{escape(f.get(name, '—'))}</td>" for name in fact_names)
            row += f"<td>{escape(self._best_checkpoint(run) or '—')}</td>"
            for k in valid_keys:
                c = run.valid.get(k)
                row += f'<td class="num">{escape(_num(_last_value(c)) if c else "—")}</td>'
            rows.append(f"<tr>{row}</tr>")
        table = (
            '<div class="table-wrap"><table class="overview"><caption>Runs at a glance</caption>'
            f'<thead><tr><th scope="col">run</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )
        return table + self._problems(self.runs)

    @staticmethod
    def _best_checkpoint(run: Run) -> str | None:
        idx = run.checkpoints or {}
        best = idx.get("best")
        if not best:
            return None
        metric, value = idx.get("best_metric"), idx.get("best_value")
        text = str(best)
        if metric:
            shown = _num(float(value)) if isinstance(value, int | float) else NA
            text += f" ({_valid_name(str(metric))} {shown})"
        return text

    @staticmethod
    def _problems(runs: list[Run]) -> str:
        items = [f"{r.label}: {p}" for r in runs for p in r.problems]
        if not items:
            return ""
        lis = "".join(f"<li>{escape(i)}</li>" for i in items)
        return f'<div role="note"><h3>Notes</h3><ul>{lis}</ul></div>'

    # ---------------------------------------------------------------- config
    def _config_single(self) -> str:
        run = self.runs[0]
        parts = []
        if run.provenance:
            flat = flatten(run.provenance)
            main = {k: v for k, v in flat.items() if not k.startswith("packages.")}
            packages = {
                k.removeprefix("packages."): v for k, v in flat.items() if k.startswith("packages.")
            }
            parts.append(self._kv_table("Provenance", main))
            if packages:
                parts.append(
                    f"<details><summary>Package versions ({len(packages)})</summary>"
                    f"{self._kv_table('Package versions', packages)}</details>"
                )
        else:
            parts.append('<p class="empty-note">No provenance.json in this run.</p>')
        if run.config_text:
            parts.append(
                "<details open><summary>Resolved config (config.yaml)</summary>"
                f"<pre><code>{escape(run.config_text)}</code></pre></details>"
            )
        else:
            parts.append('<p class="empty-note">No config.yaml in this run.</p>')
        return "".join(parts)

    def _kv_table(self, caption: str, values: dict[str, Any]) -> str:
        rows = "".join(
            f'<tr><th scope="row"><code>{escape(k)}</code></th>'
            f"<td><code>{escape(self._prov_text(v))}</code></td></tr>"
            for k, v in values.items()
        )
        return (
            f'<div class="table-wrap"><table class="kv"><caption>{escape(caption)}</caption>'
            f"<tbody>{rows}</tbody></table></div>"
        )

    @staticmethod
    def _prov_text(v: Any) -> str:
        if v is _MISSING:
            return "—"
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return " ".join(v)  # a command line
        return _value_text(v)

    def config_diff(self) -> list[tuple[str, list[Any]]]:
        """(dotted key, value per run) for every key whose values differ between runs."""
        flat = [flatten(r.config) for r in self.runs]
        keys: list[str] = []
        for f in flat:
            keys.extend(k for k in f if k not in keys)
        diff = []
        for key in keys:
            values = [f.get(key, _MISSING) for f in flat]
            if any(v is _MISSING for v in values) or any(v != values[0] for v in values[1:]):
                diff.append((key, values))
        return diff

    def _config_multi(self) -> str:
        heads = "".join(f'<th scope="col">{escape(r.label)}</th>' for r in self.runs)
        diff = self.config_diff()
        if diff:
            rows = "".join(
                f'<tr class="diff"><th scope="row"><code>{escape(key)}</code></th>'
                + "".join(f"<td><code>{escape(_value_text(v))}</code></td>" for v in values)
                + "</tr>"
                for key, values in diff
            )
            n_same = len({k for r in self.runs for k in flatten(r.config)}) - len(diff)
            table = (
                '<div class="table-wrap"><table class="config-diff">'
                f"<caption>{len(diff)} key(s) differ; {n_same} are the same in every run "
                "(— means not set)</caption>"
                f'<thead><tr><th scope="col">key</th>{heads}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        else:
            table = '<p class="config-same">The configs are identical.</p>'
        prov = self._provenance_multi(heads)
        full = "".join(
            f"<details><summary>Full config of {escape(r.label)}</summary>"
            f"<pre><code>{escape(r.config_text or '(no config.yaml)')}</code></pre></details>"
            for r in self.runs
        )
        return table + prov + full

    def _provenance_multi(self, heads: str) -> str:
        flat = [flatten(r.provenance) for r in self.runs]
        keys: list[str] = []
        for f in flat:
            keys.extend(k for k in f if k not in keys)
        if not keys:
            return ""
        rows = []
        n_diff = 0
        for key in keys:
            values = [f.get(key, _MISSING) for f in flat]
            differs = any(v != values[0] for v in values[1:])
            n_diff += differs
            cls = ' class="diff"' if differs else ""
            rows.append(
                f'<tr{cls}><th scope="row"><code>{escape(key)}</code></th>'
                + "".join(f"<td><code>{escape(self._prov_text(v))}</code></td>" for v in values)
                + "</tr>"
            )
        return (
            f"<details><summary>Provenance ({n_diff} differing entries highlighted)</summary>"
            '<div class="table-wrap"><table class="provenance"><caption>Provenance</caption>'
            f'<thead><tr><th scope="col">key</th>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div></details>"
        )

    # ---------------------------------------------------------------- curves
    def _chart(
        self, title: str, series: list[Series], y_label: str = "", log_y: bool | None = None
    ) -> str:
        self._chart_ids += 1
        chart = LineChart(
            title, series, y_label=y_label, log_y=log_y, chart_id=f"chart{self._chart_ids}"
        )
        legend = legend_html(chart.series) if len(chart.series) > 1 or self.multi else ""
        return (
            f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>'
            f"{chart.svg()}{legend}</figure>"
        )

    @staticmethod
    def _group(html: list[str], title: str, note: str = "") -> str:
        if not html:
            return ""
        note_html = f'<p class="note">{escape(note)}</p>' if note else ""
        return f'<h3>{escape(title)}</h3>{note_html}<div class="charts grid">{"".join(html)}</div>'

    def _keys(self, which: str) -> list[str]:
        keys: list[str] = []
        for r in self.runs:
            keys.extend(k for k in sorted(getattr(r, which)) if k not in keys)
        return keys

    def _train_groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {
            "gen": [],
            "disc": [],
            "grad": [],
            "lr": [],
            "perf": [],
            "other": [],
        }
        for key in self._keys("train"):
            if key.startswith("grad_norm"):
                groups["grad"].append(key)
            elif key.startswith("lr/"):
                groups["lr"].append(key)
            elif key.startswith("perf/"):
                groups["perf"].append(key)
            elif key.startswith("loss/"):
                groups["disc" if is_discriminator_key(key) else "gen"].append(key)
            elif not key.startswith("nonfinite_skips"):
                groups["other"].append(key)
        return groups

    def _curves(self) -> str:
        out = [self._valid_curves()]
        groups = self._train_groups()
        balance = self._balance_chart(groups["gen"], groups["disc"])
        out.append(self._group(balance + self._train_charts(groups["gen"]), "Generator losses"))
        out.append(self._group(self._train_charts(groups["disc"]), "Discriminator losses"))
        for gkey, title, note in (
            ("grad", "Gradient norms", "Before clipping, per optimizer."),
            ("lr", "Learning rates", ""),
            ("perf", "Throughput", ""),
        ):
            keys = groups[gkey]
            if not keys:
                continue
            if self.multi:
                out.append(self._group([self._chart(k, self._per_run(k)) for k in keys], title))
            else:
                run = self.runs[0]
                series = [
                    Series(
                        k,
                        run.train[k].steps,
                        run.train[k].values,
                        color=color_for(i),
                        dash=dash_for(i),
                        smooth=gkey == "grad",
                    )
                    for i, k in enumerate(keys)
                ]
                out.append(self._group([self._chart(title, series)], title, note))
        out.append(self._group(self._train_charts(groups["other"]), "Other training values"))
        html = "".join(out)
        return html or (
            '<p class="empty-note">No metrics were logged (metrics.jsonl missing or empty).</p>'
        )

    def _valid_curves(self) -> str:
        charts = []
        for group, members in group_keys(self._keys("valid"), "valid/").items():
            title = f"{group}{_better_text(group)}"
            if self.multi:
                primary = [k for k in members if is_primary(_valid_name(k))]
                for key in primary or members:
                    name = _valid_name(key)
                    label = title if key == members[0] and primary else name
                    charts.append(self._chart(label, self._per_run(key, valid=True)))
                continue
            run = self.runs[0]
            has_levels = any("levels" in metric_group(_valid_name(k))[1] for k in members)
            series = []
            for i, key in enumerate(members):
                name = _valid_name(key)
                c = run.valid[key]
                label = _variant_label(group, metric_group(name)[1], has_levels)
                if len(members) == 1:
                    label = f"valid {name}"
                series.append(
                    Series(
                        label, c.steps, c.values, color=color_for(i), dash=dash_for(i), style="both"
                    )
                )
            train_key = self._matching_train_key(group)
            if train_key:
                c = run.train[train_key]
                series.append(
                    Series(
                        f"train {train_key}",
                        c.steps,
                        c.values,
                        color=color_for(len(members)),
                        smooth=True,
                    )
                )
            charts.append(self._chart(title, series))
        note = (
            "One colour and dash pattern per run; per-level variants are charted one by one."
            if self.multi
            else "Variants with fewer codebook levels and per-level values share a chart."
        )
        return self._group(charts, "Validation metrics", note)

    def _matching_train_key(self, group: str) -> str | None:
        """The training loss with the same name as a validation metric, if any."""
        run = self.runs[0]
        for cand in (group, f"loss/{group}", group.removeprefix("loss/")):
            if cand in run.train:
                return cand
        return None

    def _train_charts(self, keys: list[str]) -> list[str]:
        charts = []
        for group, members in group_keys(keys).items():
            if self.multi:
                charts.extend(self._chart(k, self._per_run(k)) for k in members)
                continue
            run = self.runs[0]
            if len(members) == 1:
                c = run.train[members[0]]
                charts.append(
                    self._chart(members[0], [Series(members[0], c.steps, c.values, smooth=True)])
                )
                continue
            series = [
                Series(
                    _variant_label(group, metric_group(k)[1], False),
                    run.train[k].steps,
                    run.train[k].values,
                    color=color_for(i),
                    dash=dash_for(i),
                    smooth=True,
                )
                for i, k in enumerate(members)
            ]
            charts.append(self._chart(f"{group} per level", series))
        return charts

    def _balance_chart(self, gen: list[str], disc: list[str]) -> list[str]:
        """Generator adversarial loss against the discriminator's, on one chart (one run)."""
        if self.multi or not disc:
            return []
        adv = [k for k in gen if any(t in k.lower() for t in ("adv", "gan"))]
        if not adv:
            adv = [k for k in gen if k.lower() in ("loss/g", "loss/gen", "loss/generator")]
        if not adv:
            return []
        run = self.runs[0]
        series = [
            Series(
                k,
                run.train[k].steps,
                run.train[k].values,
                color=color_for(i),
                dash=dash_for(i),
                smooth=True,
            )
            for i, k in enumerate(adv + disc)
        ]
        return [self._chart("Generator vs discriminator", series)]

    def _per_run(self, key: str, valid: bool = False) -> list[Series]:
        out = []
        for i, run in enumerate(self.runs):
            c = (run.valid if valid else run.train).get(key)
            if c is None:
                continue
            out.append(
                Series(
                    run.label,
                    c.steps,
                    c.values,
                    color=color_for(i),
                    dash=dash_for(i),
                    style="both" if valid else "line",
                    smooth=not valid,
                )
            )
        return out

    # ---------------------------------------------------------------- metric tables
    def _ordered_valid_keys(self) -> tuple[list[str], list[str]]:
        """(headline keys, all other keys) of the runs' validation metrics, in display order."""
        ordered = [
            k for members in group_keys(self._keys("valid"), "valid/").values() for k in members
        ]
        primary = [k for k in ordered if is_primary(_valid_name(k))]
        return primary, [k for k in ordered if k not in primary]

    def _metrics_single(self) -> str:
        run = self.runs[0]
        primary, rest = self._ordered_valid_keys()
        if not primary and not rest:
            return '<p class="empty-note">No validation metrics were logged.</p>'
        html = self._steps_table(
            run,
            primary or rest,
            "valid-metrics",
            "Validation metrics (↓ lower is better, ↑ higher is better; "
            "best value of each column highlighted). " + _VALID_SCOPE,
        )
        if primary and rest:
            html += (
                f"<details><summary>All {len(primary) + len(rest)} validation values "
                "(fewer levels, per level)</summary>"
                + self._steps_table(
                    run, primary + rest, "valid-metrics-all", "Every validation value by step"
                )
                + "</details>"
            )
        return html

    @staticmethod
    def _steps_table(run: Run, keys: list[str], cls: str, caption: str) -> str:
        table: dict[int, dict[str, float]] = {}
        best = {}
        for key in keys:
            c = run.valid[key]
            for s, v in zip(c.steps, c.values, strict=True):
                table.setdefault(s, {})[key] = v
            vals = [v for v in c.values if math.isfinite(v)]
            if vals:
                best[key] = _best(key, vals)
        head = "".join(
            f'<th scope="col" class="num">{escape(_valid_name(k))}'
            f' <span aria-hidden="true">{_arrow(k)}</span></th>'
            for k in keys
        )
        rows = []
        for step in sorted(table):
            cells = []
            for k in keys:
                v = table[step].get(k)
                is_best = v is not None and math.isfinite(v) and v == best.get(k)
                kind = "num best" if is_best else "num"
                label = ' aria-label="best"' if is_best else ""
                cells.append(f'<td class="{kind}"{label}>{escape(_num(v))}</td>')
            rows.append(f'<tr><th scope="row" class="num">{step}</th>{"".join(cells)}</tr>')
        return (
            f'<div class="table-wrap" style="max-height:32rem"><table class="{cls}">'
            f"<caption>{escape(caption)}</caption>"
            f'<thead><tr><th scope="col" class="num">step</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    def _metrics_multi(self) -> str:
        primary, rest = self._ordered_valid_keys()
        if not primary and not rest:
            return '<p class="empty-note">No validation metrics were logged.</p>'
        html = (
            f'<p class="note">Best value at each step highlighted. {_VALID_SCOPE}</p>'
            f'<div class="grid">{"".join(self._side_by_side(k) for k in primary or rest)}</div>'
        )
        if primary and rest:
            html += (
                f"<details><summary>{len(rest)} more validation values (fewer levels, per "
                f'level)</summary><div class="grid">'
                f"{''.join(self._side_by_side(k) for k in rest)}</div></details>"
            )
        return html

    def _side_by_side(self, key: str) -> str:
        heads = "".join(f'<th scope="col" class="num">{escape(r.label)}</th>' for r in self.runs)
        per_run = []
        for r in self.runs:
            c = r.valid.get(key)
            per_run.append(dict(zip(c.steps, c.values, strict=True)) if c else {})
        common = set.intersection(*(set(d) for d in per_run)) if per_run else set()
        matched = bool(common)
        steps = sorted(common) if matched else sorted(set().union(*per_run))
        rows = []
        for step in steps:
            vals = [d.get(step) for d in per_run]
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            best = _best(key, finite)
            cells = []
            for v in vals:
                is_best = len(finite) > 1 and v is not None and v == best
                kind = "num best" if is_best else "num"
                label = ' aria-label="best"' if is_best else ""
                cells.append(f'<td class="{kind}"{label}>{escape(_num(v))}</td>')
            rows.append(f'<tr><th scope="row" class="num">{step}</th>{"".join(cells)}</tr>')
        name = _valid_name(key)
        note = "" if matched else " — no step validated by every run; all steps shown"
        return (
            '<div class="table-wrap" style="max-height:26rem"><table class="side-by-side">'
            f"<caption>{escape(name)}{escape(_better_text(key))}{escape(note)}</caption>"
            f'<thead><tr><th scope="col" class="num">step</th>{heads}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    # ---------------------------------------------------------------- listening
    def _player(self, media: Media | None, label: str, detail: str) -> str:
        """A labelled audio player with its spectrogram (either may be absent)."""
        if media is None or (media.wav is None and media.png is None):
            return (
                f'<div class="player"><div class="label">{escape(label)}</div>'
                '<p class="empty-note">missing</p></div>'
            )
        parts = []
        dur_text = ""
        if media.wav is not None:
            token, dur = self.store.add_audio(media.wav)
            dur_text = f" <small>{dur:.2f} s</small>"
            aria = escape(f"{label}, {detail}", quote=True)
            parts.append(
                f'<audio controls preload="metadata" src="{token}" aria-label="{aria}" '
                f'data-duration="{dur:.6f}"></audio>'
            )
            self.players += 1
        if media.png is not None:
            token, data = self.store.add_image(media.png)
            size = _png_size(data)
            wh = f' width="{size[0]}" height="{size[1]}"' if size else ""
            alt = escape(f"Mel spectrogram: {label}, {detail}", quote=True)
            parts.append(f'<img src="{token}" alt="{alt}"{wh}>')
            self.images += 1
        head = f'<div class="label">{escape(label)}{dur_text}</div>'
        return f'<div class="player">{head}{"".join(parts)}</div>'

    def _listen_single(self) -> str:
        run = self.runs[0]
        steps = pick_evenly(run.audio_steps(), self.listen_steps)
        if not steps:
            return '<p class="empty-note">This run saved no validation audio.</p>'
        bases: list[str] = []
        singles: list[str] = []
        for s in steps:
            bases.extend(b for b in s.pairs() if b not in bases)
            singles.extend(n for n in s.singles() if n not in singles)
        blocks = []
        for base in bases[: self.max_clips]:
            pairs = [(s, s.pairs().get(base, (None, None))) for s in steps]
            refs = [(s, ref) for s, (ref, _) in pairs if ref is not None]
            cells = []
            if refs and _same_audio([ref for _, ref in refs]):
                # The same reference at every step: show it once.
                cells.append(self._player(refs[-1][1], "reference", base))
            else:
                cells.extend(
                    self._player(ref, f"reference at step {s.step}", base) for s, ref in refs
                )
            cells.extend(
                self._player(out, f"output at step {s.step}", base) for s, (_, out) in pairs
            )
            blocks.append(_clip_block(base, cells, "h3"))
        for name in singles[: self.max_clips]:
            cells = [self._player(s.singles().get(name), f"step {s.step}", name) for s in steps]
            blocks.append(_clip_block(name, cells, "h3"))
        shown = ", ".join(str(s.step) for s in steps)
        return (
            f'<p class="note">Validation steps shown: {escape(shown)} '
            f"(of {len(run.audio_steps())} with audio). Playing one player pauses the others."
            f"</p>{''.join(blocks)}"
        )

    def _listen_multi(self) -> str:
        per_run_steps = [{s.step: s for s in r.audio_steps()} for r in self.runs]
        if not any(per_run_steps):
            return '<p class="empty-note">None of these runs saved validation audio.</p>'
        common = sorted(set.intersection(*(set(d) for d in per_run_steps)))
        groups: list[tuple[str, list[ValidStep | None]]]
        if common:
            chosen = pick_evenly(common, self.listen_steps)
            note = (
                f"Steps validated with audio by every run: {len(common)}; shown: "
                f"{', '.join(map(str, chosen))}."
            )
            groups = [(f"Step {step}", [d[step] for d in per_run_steps]) for step in chosen]
        else:
            note = (
                "No validation step has audio from every run; the last step of each run is "
                "shown instead."
            )
            groups = [
                ("Last validation of each run", [d[max(d)] if d else None for d in per_run_steps])
            ]
        blocks = []
        for title, vsteps in groups:
            blocks.append(f"<h3>{escape(title)}</h3>")
            blocks.extend(self._clips_across_runs(vsteps))
        return (
            f'<p class="note">{escape(note)} Playing one player pauses the others.</p>'
            + "".join(blocks)
        )

    def _clips_across_runs(self, vsteps: list[ValidStep | None]) -> list[str]:
        bases: list[str] = []
        singles: list[str] = []
        for vs in vsteps:
            if vs is not None:
                bases.extend(b for b in vs.pairs() if b not in bases)
                singles.extend(n for n in vs.singles() if n not in singles)
        labelled = list(zip(self.runs, vsteps, strict=True))
        blocks = []
        for base in bases[: self.max_clips]:
            pairs = [vs.pairs().get(base, (None, None)) if vs else (None, None) for vs in vsteps]
            refs = [
                (run, ref)
                for (run, _), (ref, _) in zip(labelled, pairs, strict=True)
                if ref is not None
            ]
            cells = []
            if refs and _same_audio([ref for _, ref in refs]):
                cells.append(self._player(refs[0][1], "reference", base))
            else:
                cells.extend(
                    self._player(ref, f"reference ({run.label})", base) for run, ref in refs
                )
            for (run, vs), (_, out) in zip(labelled, pairs, strict=True):
                step = f" at step {vs.step}" if vs else ""
                cells.append(self._player(out, f"{run.label}{step}", base))
            blocks.append(_clip_block(base, cells, "h4"))
        for name in singles[: self.max_clips]:
            cells = []
            for run, vs in labelled:
                media = vs.singles().get(name) if vs else None
                step = f" at step {vs.step}" if vs else ""
                cells.append(self._player(media, f"{run.label}{step}", name))
            blocks.append(_clip_block(name, cells, "h4"))
        return blocks


def _clip_block(title: str, cells: list[str], heading: str) -> str:
    return (
        f'<div class="clip"><{heading}>{escape(title)}</{heading}>'
        f'<div class="clip-row">{"".join(cells)}</div></div>'
    )


def _same_audio(items: list[Media]) -> bool:
    """True when every item has a WAV and all hold the same samples at the same rate.

    Decoded samples are compared, not file bytes: float WAVs carry a timestamped PEAK chunk.
    """
    digests = set()
    for m in items:
        if m.wav is None:
            return False
        try:
            audio, sr = sf.read(str(m.wav), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError):
            return False
        digests.add((sr, audio.shape, hashlib.sha1(audio.tobytes()).hexdigest()))
    return len(digests) == 1
