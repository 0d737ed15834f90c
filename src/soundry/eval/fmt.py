"""Printing and saving metric values that may be missing or not finite.

A metric can legitimately be NaN or infinite: SI-SDR is +inf for a bit-exact output,
-inf for a silent (all-zero) one and NaN for a silent reference; an optional metric can fail
on a clip. metrics.jsonl and every JSON soundry writes hold `null` there (JSON has no NaN or
Infinity), so readers see None. None of these may crash a command or a report:

- `fmt_metric(value, spec)`: the value formatted with `spec`, or "n/a" for None, NaN, inf
  or anything that is not a number;
- `finite_or_none(value)`: a float, or None when missing / not finite;
- `clean_json(obj)`: a copy of a JSON-like structure with every non-finite float (numpy
  scalars too) replaced by None, so `json.dumps(..., allow_nan=False)` cannot fail;
- `dumps_json(obj)`: `json.dumps` of `clean_json(obj)`, strict JSON;
- `nonfinite_note(metric, values, unit)`: one sentence for a `notes` list saying how many
  values were not finite and the usual reason, e.g. "si_sdr: -inf on 3 of 8 clips (output
  silent or uncorrelated with the reference)", or None when all are finite
  (`note_from_counts` does the same from counts per kind, `kind_of` classifies one value).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

NA = "n/a"


def finite_or_none(value: Any) -> float | None:
    """`value` as a float when it is a finite number (bool excluded), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_metric(value: Any, spec: str = ".3f", na: str = NA) -> str:
    """`format(value, spec)` for a finite number; `na` ("n/a") for None, NaN, inf, text."""
    v = finite_or_none(value)
    if v is None:
        return na
    try:
        return format(v, spec)
    except ValueError:  # a spec meant for another type ("d" on a float, ...)
        return format(v, ".4g")


def clean_json(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold: non-finite floats become None.

    dicts, lists and tuples are walked; numpy scalars and 0-d arrays become Python numbers;
    other values are kept as they are.
    """
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):  # np.float64 too (a float subclass)
        return float(obj) if math.isfinite(obj) else None
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        try:
            return clean_json(item())
        except (TypeError, ValueError):
            return obj
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of `obj` (non-finite floats written as null)."""
    return json.dumps(clean_json(obj), allow_nan=False, **kwargs)


# Why a metric is usually not finite, by metric and kind of value.
_REASONS: dict[tuple[str, str], str] = {
    ("si_sdr", "-inf"): "output silent or uncorrelated with the reference",
    ("si_sdr", "inf"): "output identical to the reference",
    ("si_sdr", "nan"): "reference silent, so the ratio is undefined",
    ("si_sdr", "null"): (
        "not finite when logged: -inf for a silent or uncorrelated output, "
        "nan for a silent reference"
    ),
}
_DEFAULT_REASONS = {
    "-inf": "diverged or divided by zero",
    "inf": "diverged or divided by zero",
    "nan": "undefined or not computed: NaN samples, a failed scorer or too little signal",
    "null": "not finite when it was written",
}


def kind_of(value: Any) -> str | None:
    """None for a finite number; else 'inf', '-inf', 'nan' (NaN or not a number) or 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "nan"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "nan"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return None


def nonfinite_note(
    metric: str, values: Iterable[Any], unit: str = "clips", reasons: dict[str, str] | None = None
) -> str | None:
    """"metric: -inf on 3 of 8 clips (why); nan on 1 of 8 clips (why)", or None if all finite.

    `reasons` (kind -> text, kinds 'inf', '-inf', 'nan', 'null') override the usual reasons.
    """
    counts: dict[str, int] = {}
    total = 0
    for v in values:
        total += 1
        kind = kind_of(v)
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return note_from_counts(metric, counts, total, unit, reasons)


def note_from_counts(
    metric: str,
    counts: dict[str, int],
    total: int,
    unit: str = "clips",
    reasons: dict[str, str] | None = None,
) -> str | None:
    """`nonfinite_note` from counts per kind ('inf', '-inf', 'nan', 'null') of `total`."""
    base = metric.rsplit("/", 1)[-1]
    parts = []
    for kind in ("-inf", "inf", "nan", "null"):
        n = counts.get(kind, 0)
        if not n:
            continue
        why = (reasons or {}).get(kind) or _REASONS.get((base, kind)) or _DEFAULT_REASONS[kind]
        parts.append(f"{kind} on {n} of {total} {unit} ({why})")
    return f"{metric}: " + "; ".join(parts) if parts else None
