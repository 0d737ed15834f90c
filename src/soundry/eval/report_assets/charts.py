"""Line charts as inline SVG, generated in Python (no plotting library, no network).

A chart is a list of `Series` drawn on shared axes. The SVG carries its axis transform in
`data-*` attributes so the report's small script can turn the pointer position back into
step and value for a tooltip; without the script the chart is still complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

# Okabe-Ito (black swapped for a grey that also reads on a dark page): distinguishable with
# the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#8C8C8C", "#F0E442"]
# Dash patterns so lines differ by more than colour.
DASHES = ["", "6 3", "2 3", "8 3 2 3", "4 4", "1 2", "10 4", "3 6"]

MAX_POINTS = 600  # per drawn line; more points than pixels only add bytes


@dataclass
class Series:
    """One line: x (steps) and y (values) of equal length; NaN/inf values are gaps.

    `style` is "line", "markers" or "both"; `smooth` draws the raw values faintly under an
    exponential moving average (for noisy training curves).
    """

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = PALETTE[0]
    dash: str = ""
    style: str = "line"
    smooth: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def color_for(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash_for(i: int) -> str:
    return DASHES[i % len(DASHES)]


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]; whole numbers only when
    `integer` (training steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, round(step)) if step >= 1 else 1.0
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return ticks


def format_number(v: float) -> str:
    """Short human form: 12k, 0.0031, 1.5e-06 ("n/a" for None, NaN or inf)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9 or a < 1e-3:
        return f"{v:.2g}"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.4g}"


def ema(values: Sequence[float], points: int) -> list[float]:
    """Exponential moving average with a window of about 2% of the points (NaN-aware)."""
    alpha = min(1.0, 2.0 / (max(points, 1) * 0.02 + 1))
    out: list[float] = []
    state: float | None = None
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        state = v if state is None else state + alpha * (v - state)
        out.append(state)
    return out


def decimate(x: Sequence[float], y: Sequence[float], limit: int = MAX_POINTS):
    """At most ~`limit` points keeping each bucket's min and max, so spikes stay visible."""
    n = len(x)
    if n <= limit:
        return list(x), list(y)
    buckets = limit // 2
    xs: list[float] = []
    ys: list[float] = []
    for b in range(buckets):
        lo, hi = b * n // buckets, (b + 1) * n // buckets
        idx = [i for i in range(lo, hi) if math.isfinite(y[i])]
        if not idx:
            continue
        imin = min(idx, key=lambda i: y[i])
        imax = max(idx, key=lambda i: y[i])
        for i in sorted({imin, imax}):
            xs.append(x[i])
            ys.append(y[i])
    return xs, ys


class LineChart:
    """Axes, ticks and lines for a set of series; `svg()` renders the markup."""

    def __init__(
        self,
        title: str,
        series: list[Series],
        *,
        x_label: str = "step",
        x_integer: bool = True,
        y_label: str = "",
        log_y: bool | None = None,
        width: int = 460,
        height: int = 250,
        chart_id: str = "",
    ) -> None:
        self.title = title
        self.series = [s for s in series if any(_finite(v) for v in s.y)]
        self.x_label = x_label
        self.x_integer = x_integer
        self.y_label = y_label
        self.width = width
        self.height = height
        self.chart_id = chart_id
        self.margin = (14, 14, 40, 58)  # top, right, bottom, left
        ys = [v for s in self.series for v in s.y if _finite(v)]
        xs = [v for s in self.series for v, w in zip(s.x, s.y, strict=False) if _finite(w)]
        if log_y is None:
            log_y = bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 300
        self.log_y = bool(log_y) and bool(ys) and min(ys) > 0
        self.x_lo, self.x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if self.x_hi == self.x_lo:
            self.x_lo, self.x_hi = self.x_lo - 1, self.x_hi + 1
        if ys:
            lo, hi = min(ys), max(ys)
            if self.log_y:
                lo, hi = math.log10(lo), math.log10(hi)
            if hi == lo:
                pad = abs(lo) * 0.1 or 1.0
                lo, hi = lo - pad, hi + pad
            else:
                pad = (hi - lo) * 0.06
                lo, hi = lo - pad, hi + pad
            self.y_lo, self.y_hi = lo, hi
        else:
            self.y_lo, self.y_hi = 0.0, 1.0

    # ---------------------------------------------------------------- transforms
    def _px(self, x: float) -> float:
        top, right, bottom, left = self.margin
        span = self.width - left - right
        return left + (x - self.x_lo) / (self.x_hi - self.x_lo) * span

    def _py(self, y: float) -> float:
        top, right, bottom, left = self.margin
        span = self.height - top - bottom
        v = math.log10(y) if self.log_y else y
        return top + (1 - (v - self.y_lo) / (self.y_hi - self.y_lo)) * span

    # ---------------------------------------------------------------- rendering
    def svg(self) -> str:
        w, h = self.width, self.height
        top, right, bottom, left = self.margin
        desc = self._description()
        attrs = (
            f'viewBox="0 0 {w} {h}" role="img" class="chart" '
            f'data-x0="{self.x_lo!r}" data-x1="{self.x_hi!r}" '
            f'data-y0="{self.y_lo!r}" data-y1="{self.y_hi!r}" data-log="{int(self.log_y)}" '
            f'data-left="{left}" data-right="{w - right}" '
            f'data-top="{top}" data-bottom="{h - bottom}"'
        )
        tid = f"{self.chart_id}-t" if self.chart_id else ""
        did = f"{self.chart_id}-d" if self.chart_id else ""
        if tid:
            attrs += f' aria-labelledby="{tid} {did}"'
        parts = [f"<svg {attrs}>"]
        parts.append(
            f'<title id="{tid}">{escape(self.title)}</title>'
            if tid
            else f"<title>{escape(self.title)}</title>"
        )
        parts.append(
            f'<desc id="{did}">{escape(desc)}</desc>' if did else f"<desc>{escape(desc)}</desc>"
        )
        parts.append(
            f'<rect class="plot-bg" x="{left}" y="{top}" width="{w - left - right}" '
            f'height="{h - top - bottom}"/>'
        )
        parts.extend(self._grid())
        if not self.series:
            parts.append(
                f'<text class="empty" x="{w / 2}" y="{h / 2}" text-anchor="middle">no data</text>'
            )
        for s in self.series:
            parts.extend(self._draw(s))
        parts.append(
            f'<line class="cursor" x1="0" x2="0" y1="{top}" y2="{h - bottom}" visibility="hidden"/>'
        )
        parts.append("</svg>")
        return "".join(parts)

    def _grid(self) -> list[str]:
        w, h = self.width, self.height
        top, right, bottom, left = self.margin
        out = []
        for t in nice_ticks(self.x_lo, self.x_hi, 5, integer=self.x_integer):
            px = self._px(t)
            out.append(
                f'<line class="gridline" x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{h - bottom}"/>'
            )
            out.append(
                f'<text class="tick" x="{px:.1f}" y="{h - bottom + 15}" text-anchor="middle">'
                f"{escape(format_number(t))}</text>"
            )
        if self.log_y:
            lo, hi = math.floor(self.y_lo), math.ceil(self.y_hi)
            decades = [d for d in range(lo, hi + 1) if self.y_lo <= d <= self.y_hi]
            if len(decades) < 2:  # too narrow for decade ticks: label intermediate 2x and 5x too
                decades = [
                    math.log10(m * 10**d)
                    for d in range(lo - 1, hi + 1)
                    for m in (1, 2, 5)
                    if self.y_lo <= math.log10(m * 10**d) <= self.y_hi
                ]
            y_ticks = [10**d for d in decades]
        else:
            y_ticks = nice_ticks(self.y_lo, self.y_hi, 5)
        for t in y_ticks:
            py = self._py(t)
            out.append(
                f'<line class="gridline" x1="{left}" x2="{w - right}" y1="{py:.1f}" y2="{py:.1f}"/>'
            )
            out.append(
                f'<text class="tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">'
                f"{escape(format_number(t))}</text>"
            )
        out.append(
            f'<text class="axis-label" x="{(left + w - right) / 2}" y="{h - 6}" '
            f'text-anchor="middle">{escape(self.x_label)}</text>'
        )
        if self.y_label or self.log_y:
            label = self.y_label + (" (log scale)" if self.log_y else "")
            cy = (top + h - bottom) / 2
            out.append(
                f'<text class="axis-label" x="12" y="{cy}" text-anchor="middle" '
                f'transform="rotate(-90 12 {cy})">{escape(label.strip())}</text>'
            )
        return out

    def _points(self, xs: Sequence[float], ys: Sequence[float]) -> list[list[tuple[float, float]]]:
        """Pixel polylines, split at gaps (non-finite values)."""
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in zip(xs, ys, strict=False):
            if _finite(y) and (not self.log_y or y > 0):
                runs[-1].append((self._px(x), self._py(y)))
            elif runs[-1]:
                runs.append([])
        return [r for r in runs if r]

    def _draw(self, s: Series) -> list[str]:
        out = []
        name = escape(s.name, quote=True)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        x, y = list(s.x), [float(v) for v in s.y]
        if s.smooth and len(x) > 20:
            rx, ry = decimate(x, y)
            for run in self._points(rx, ry):
                out.append(f'<polyline class="raw" points="{_fmt(run)}" stroke="{s.color}"{dash}/>')
            y = ema(y, len(y))
        dx, dy = decimate(x, y)
        # The hoverable data line (values the tooltip reads back).
        if s.style in ("line", "both"):
            for run in self._points(dx, dy):
                out.append(
                    f'<polyline class="line" data-name="{name}" points="{_fmt(run)}" '
                    f'stroke="{s.color}"{dash}/>'
                )
        if s.style in ("markers", "both"):
            pts = [p for run in self._points(dx, dy) for p in run]
            out.append(f'<g class="markers" data-name="{name}" fill="{s.color}">')
            out.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3"/>' for px, py in pts)
            out.append("</g>")
        return out

    def _description(self) -> str:
        bits = []
        for s in self.series:
            vals = [(x, v) for x, v in zip(s.x, s.y, strict=False) if _finite(v)]
            if not vals:
                continue
            last_x, last_v = vals[-1]
            best = min(v for _, v in vals)
            bits.append(
                f"{s.name}: {len(vals)} points, last {format_number(last_v)} at step "
                f"{format_number(last_x)}, minimum {format_number(best)}"
            )
        what = "Log-scale line chart" if self.log_y else "Line chart"
        return f"{what} of {self.title} against {self.x_label}. " + "; ".join(bits)


def legend_html(series: list[Series]) -> str:
    """An HTML legend (text, so it is readable by screen readers and scales with the page)."""
    items = []
    for s in series:
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        if s.style == "markers":
            swatch = f'<circle cx="11" cy="5" r="3.5" fill="{s.color}"/>'
        else:
            swatch = (
                f'<line x1="0" x2="22" y1="5" y2="5" stroke="{s.color}" stroke-width="2.5"{dash}/>'
            )
        items.append(
            f'<li><svg class="swatch" viewBox="0 0 22 10" aria-hidden="true">{swatch}</svg>'
            f"{escape(s.name)}</li>"
        )
    return f'<ul class="legend">{"".join(items)}</ul>'


def _finite(v: float) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _fmt(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
