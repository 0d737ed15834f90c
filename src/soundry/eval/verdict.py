"""Did a codec learn? Output sanity checks and a verdict against an untrained baseline.

A run can finish with a falling loss and a model that outputs a constant at full scale,
silence, or a handful of codes. The verdict measures what the model produces on validation
audio and compares it with the same architecture untrained (same seed), so "learned" means
something a listener would agree with. Criteria (all must hold; the defaults are the
toy-data acceptance criteria of the demo and `benchmarks/codec_robustness.py`):

- the output is sane on every clip: peak < `max_peak` (0.99; not pinned at the rail),
  RMS > `min_rms` (1e-3; not silent) and std of the first difference > `min_diff_std`
  (1e-4; not a constant or DC signal);
- mean mel distance at most `max_mel_ratio` (0.5) x the untrained model's;
- codebook usage (fraction of codes occurring at least once on the validation audio) of at
  least `min_usage_mean` (0.25) averaged over levels, and no level under `min_usage_level`
  (0.10): tokens spread over 1-2% of a codebook carry too little for an LM to learn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Criteria:
    """Thresholds of the verdict (see the module docstring)."""

    max_peak: float = 0.99
    min_rms: float = 1e-3
    min_diff_std: float = 1e-4
    max_mel_ratio: float = 0.5
    min_usage_mean: float = 0.25
    min_usage_level: float = 0.10


def output_stats(audio: np.ndarray) -> dict[str, float]:
    """peak, rms and std of the first difference of one output clip [C, T] or [T]."""
    a = np.asarray(audio, dtype=np.float64).reshape(-1, np.asarray(audio).shape[-1])
    if a.size == 0:
        return {"peak": 0.0, "rms": 0.0, "diff_std": 0.0}
    finite = np.isfinite(a).all()
    if not finite:
        return {"peak": math.inf, "rms": math.nan, "diff_std": math.nan}
    diff = np.diff(a, axis=-1)
    return {
        "peak": float(np.abs(a).max()),
        "rms": float(np.sqrt(np.mean(a**2))),
        "diff_std": float(diff.std()) if diff.size else 0.0,
    }


def output_problems(stats: dict[str, float], criteria: Criteria = Criteria()) -> list[str]:
    """What is wrong with one clip's output, by its `output_stats` (empty: nothing)."""
    problems = []
    peak, rms, dstd = stats["peak"], stats["rms"], stats["diff_std"]
    if not all(math.isfinite(v) for v in (peak, rms, dstd)):
        return ["non-finite samples"]
    if peak >= criteria.max_peak:
        problems.append(f"saturated (peak {peak:.3f} >= {criteria.max_peak})")
    if rms <= criteria.min_rms:
        problems.append(f"silent (RMS {rms:.2e} <= {criteria.min_rms:g})")
    if dstd <= criteria.min_diff_std:
        problems.append(
            f"constant (std of first difference {dstd:.2e} <= {criteria.min_diff_std:g})"
        )
    return problems


@dataclass
class Verdict:
    """learned: every criterion holds. broken: the output itself is unusable (silent,
    constant, saturated, non-finite) or training diverged. reasons: one line per failed
    criterion; checks: one line per criterion with its figures."""

    learned: bool
    broken: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.learned:
            return "verdict: the model LEARNED (" + "; ".join(self.checks) + ")"
        kind = "is BROKEN" if self.broken else "did NOT learn"
        return f"verdict: the model {kind}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"learned": self.learned, "broken": self.broken, "reasons": self.reasons,
                "checks": self.checks}


def _finite(v: Any) -> bool:
    from soundry.eval.fmt import finite_or_none

    return finite_or_none(v) is not None


def codec_verdict(
    mel_trained: float | None,
    mel_untrained: float | None,
    usage: list[float],
    clip_problems: dict[str, list[str]],
    diverged: str | None = None,
    criteria: Criteria = Criteria(),
) -> Verdict:
    """The verdict from measured figures.

    mel_*: mean mel distance on the validation clips; usage: per-level codebook usage
    fractions; clip_problems: clip name -> `output_problems`; diverged: a message when
    training stopped on non-finite values (or None).
    """
    reasons, checks = [], []
    broken = False
    if diverged:
        reasons.append(f"training diverged: {diverged}")
        broken = True
    bad = {name: p for name, p in clip_problems.items() if p}
    if bad:
        broken = True
        first = next(iter(bad))
        reasons.append(
            f"output unusable on {len(bad)} of {len(clip_problems)} clips "
            f"(e.g. {first}: {', '.join(bad[first])})"
        )
    else:
        checks.append(f"output sane on all {len(clip_problems)} clips")
    if _finite(mel_trained) and _finite(mel_untrained):
        limit = criteria.max_mel_ratio * float(mel_untrained)  # type: ignore[arg-type]
        text = (f"mel distance {mel_trained:.3f} vs untrained {mel_untrained:.3f} "
                f"(must be <= {limit:.3f})")
        (checks if float(mel_trained) <= limit else reasons).append(text)  # type: ignore[arg-type]
    else:
        reasons.append("mel distance not measurable (n/a)")
    if usage:
        mean, low = float(np.mean(usage)), float(np.min(usage))
        text = (f"codebook usage {100 * mean:.0f}% mean, {100 * low:.0f}% lowest level "
                f"(must be >= {100 * criteria.min_usage_mean:.0f}% and "
                f">= {100 * criteria.min_usage_level:.0f}%)")
        ok = mean >= criteria.min_usage_mean and low >= criteria.min_usage_level
        (checks if ok else reasons).append(text)
    else:
        reasons.append("codebook usage not measured (no codes)")
    return Verdict(learned=not reasons, broken=broken, reasons=reasons, checks=checks)


@dataclass
class Scorecard:
    """A codec's figures on a list of clips: means plus per-clip output stats."""

    mel_distance: float | None
    si_sdr: float | None
    usage: list[float]
    clip_stats: dict[str, dict[str, float]]
    clip_problems: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)  # e.g. "si_sdr: -inf on 2 of 8 clips ..."

    def row(self) -> dict[str, Any]:
        return {"mel_distance": self.mel_distance, "si_sdr": self.si_sdr,
                "usage_mean": float(np.mean(self.usage)) if self.usage else None,
                "usage": self.usage}


def _mean_finite(values: list[float]) -> float | None:
    vals = [v for v in values if math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def score_outputs(
    clips: list[tuple[str, np.ndarray]],
    outputs: list[np.ndarray],
    sample_rate: int,
    codes: Any = None,
    codebook_size: int | None = None,
    criteria: Criteria = Criteria(),
) -> Scorecard:
    """Score outputs [C, T] against their reference clips (name, [C, T]).

    Means are over the finite per-clip values (None when there is none); SI-SDR of a
    silent or constant output is -inf and is left out of the mean, which the output checks
    report anyway.
    """
    from soundry.eval.metrics import codebook_usage, mel_distance, si_sdr

    mels, sdrs, stats, problems = [], [], {}, {}
    for (name, ref), out in zip(clips, outputs, strict=True):
        out = np.asarray(out, dtype=np.float32)[..., : ref.shape[-1]]
        mels.append(float(mel_distance(ref, out, sample_rate)))
        sdrs.append(float(si_sdr(ref, out)))
        stats[name] = output_stats(out)
        problems[name] = output_problems(stats[name], criteria)
    from soundry.eval.fmt import nonfinite_note

    usage: list[float] = []
    if codes is not None and codebook_size:
        usage = [float(u) for u in codebook_usage(codes, codebook_size)["usage"]]
    notes = [n for n in (nonfinite_note("mel_distance", mels), nonfinite_note("si_sdr", sdrs))
             if n]
    return Scorecard(_mean_finite(mels), _mean_finite(sdrs), usage, stats, problems, notes)


def score_codec(
    codec: Any, clips: list[tuple[str, np.ndarray]], criteria: Criteria = Criteria()
) -> Scorecard:
    """Encode and decode each clip [C, T] with `codec` (eval mode, all levels) and score it."""
    import torch

    codec.eval()
    device = next(codec.parameters()).device
    outputs, all_codes = [], []
    with torch.no_grad():
        for _, clip in clips:
            x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)).to(device)[None]
            codes = codec.encode(x)
            all_codes.append(codes.cpu())
            y = codec.decode_codes(codes)[..., : x.shape[-1]]
            outputs.append(y[0].float().cpu().numpy())
    codes = torch.cat([c.reshape(-1, c.shape[1], c.shape[2]) for c in all_codes], dim=-1)
    return score_outputs(clips, outputs, codec.sample_rate, codes, codec.codebook_size, criteria)
