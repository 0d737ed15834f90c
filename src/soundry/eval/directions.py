"""Which way is better, for every metric soundry logs or reports: one table.

A metric is "higher is better" when its name contains one of `HIGHER_IS_BETTER`'s fragments
(and is not a loss); values whose names contain a `NEUTRAL` fragment are settings or
bookkeeping, not scores. Everything else (distances, losses, errors) is lower-is-better.
"""

from __future__ import annotations

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
    "cosine",  # a distillation head's agreement with its teacher
)
# Logged values that are settings or bookkeeping rather than scores: no "best".
# ("_const": a reference score, e.g. the best constant predictor's distillation cosine.)
NEUTRAL = ("bitrate", "kbps", "lr", "time", "seconds", "minutes", "_const")


def higher_is_better(metric: str) -> bool:
    name = metric.lower().removeprefix("valid/")
    return not name.startswith("loss") and any(t in name for t in HIGHER_IS_BETTER)


def direction(metric: str) -> str | None:
    """'higher' or 'lower' (is better), or None for values that are settings, not scores."""
    name = metric.lower().removeprefix("valid/")
    if any(t in name for t in NEUTRAL):
        return None
    return "higher" if higher_is_better(name) else "lower"


def better_text(metric: str) -> str:
    d = direction(metric)
    return f" ({d} is better)" if d else ""


def arrow(metric: str) -> str:
    d = direction(metric)
    return {"higher": "↑", "lower": "↓"}.get(d or "", "")


def best_value(metric: str, values: list[float]) -> float | None:
    d = direction(metric)
    if d is None or not values:
        return None
    return max(values) if d == "higher" else min(values)
