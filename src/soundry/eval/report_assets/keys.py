"""How the report names, groups and formats logged keys and values."""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

from soundry.eval.fmt import NA
from soundry.eval.report_assets.charts import (
    format_number,
)
from soundry.eval.report_assets.runs import Curve

_MISSING = object()

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
