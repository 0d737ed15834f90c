"""Monitors of what the model produces at validation: its audio and its codes."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from soundry.health.core import Monitor

_USAGE = re.compile(r"^(?:valid/)?usage/l(\d+)$")


def clip_stats(audio: Any) -> dict[str, float]:
    """rms, peak, share of samples at |x| >= 0.99 ('pinned'), std of the first difference."""
    a = np.asarray(audio, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all():
        return {"rms": math.nan, "peak": math.inf, "pinned": 1.0, "diff_std": math.nan}
    mag = np.abs(a)
    return {"rms": float(np.sqrt(np.mean(a * a))), "peak": float(mag.max()),
            "pinned": float(np.mean(mag >= 0.99)), "diff_std": float(np.diff(a).std())
            if a.size > 1 else 0.0}


class OutputSaturation(Monitor):
    """`output_saturation`: validation outputs pinned at the rail, constant (DC), silent, or
    far from their reference's level.

    Reference/output pairs are the validation audio named `*_ref` / `*_out`; other clips
    (LM generations) have no reference and are judged for saturation and constancy only.
    The validation at step 0 (an untrained model) is not judged.
    """

    id = "output_saturation"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.first_bad: int | None = None

    def _problems(self, out: dict[str, float], ref: dict[str, float] | None) -> list[str]:
        cfg = self.cfg
        if not math.isfinite(out["rms"]):
            return ["non-finite samples"]
        problems = []
        if out["pinned"] > cfg.pinned_fraction or out["peak"] >= 1.0 and out["pinned"] > 0.5:
            problems.append(f"pinned at full scale ({out['pinned']:.0%} of samples at the rail)")
        if out["diff_std"] <= cfg.min_diff_std:
            problems.append(f"constant / DC (first-difference std {out['diff_std']:.1e})")
        ref_audible = ref is not None and ref["rms"] > 10 * cfg.silent_rms
        if out["rms"] <= cfg.silent_rms and (ref is None or ref_audible):
            problems.append(f"silent (RMS {out['rms']:.1e})")
        return problems

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        if step <= 0 or not audio:
            return
        cfg = self.cfg
        bad: dict[str, list[str]] = {}
        level: dict[str, float] = {}
        stats: dict[str, dict[str, float]] = {}
        standalone_silent = []
        for name, clip in audio.items():
            if name.endswith("_ref"):
                continue
            out = clip_stats(clip)
            ref = None
            if name.endswith("_out") and name[:-4] + "_ref" in audio:
                ref = clip_stats(audio[name[:-4] + "_ref"])
            stats[name] = out
            problems = self._problems(out, ref)
            if ref is None and any(p.startswith("silent") for p in problems):
                standalone_silent.append(name)
                problems = [p for p in problems if not p.startswith("silent")]
            if problems:
                bad[name] = problems
            elif ref is not None and ref["rms"] > 10 * cfg.silent_rms and out["rms"] > 0:
                db = 20 * math.log10(out["rms"] / ref["rms"])
                if abs(db) > cfg.level_db:
                    level[name] = db
        judged = len(stats)
        if not judged:
            return
        if standalone_silent and len(standalone_silent) == sum(
                1 for n in stats if not n.endswith("_out")):
            bad.update({n: ["silent"] for n in standalone_silent})
        evidence = {n: {k: round(v, 5) if math.isfinite(v) else None for k, v in s.items()}
                    for n, s in list(stats.items())[:8]}
        if bad:
            if self.first_bad is None:
                self.first_bad = step
            share = len(bad) / judged
            severity = "error" if share >= cfg.error_share else "warning"
            first = next(iter(bad.items()))
            self.pending.append(self.finding(
                step, severity,
                f"{len(bad)} of {judged} validation outputs are broken at step {step}: "
                f"{first[0]} is {', '.join(first[1])}. The loss can still look fine; listen "
                "to the validation audio",
                key="broken_output", since=self.first_bad, clips=bad, share=share,
                stats=evidence))
        if level:
            name, db = max(level.items(), key=lambda kv: abs(kv[1]))
            self.pending.append(self.finding(
                step, "warning",
                f"validation output level is far from its reference on {len(level)} of "
                f"{judged} clips (worst: {name}, {db:+.1f} dB)",
                key="level", level_db=level, stats=evidence))


    def state_dict(self) -> dict[str, Any]:
        return {"first_bad": self.first_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_bad = state.get("first_bad")


class CodebookCollapse(Monitor):
    """`codebook_collapse`: per-level codebook usage at validation too low, or falling.

    Usage (`valid/usage/l<k>`: share of a level's codes that occur on the validation audio)
    is judged against what the validation could show: with F frames and N codes at most
    min(1, F / N) of the codebook can occur (`valid/code_frames`, `valid/codebook_size`).
    """

    id = "codebook_collapse"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.best_mean = 0.0
        self.first_low: int | None = None

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        cfg = self.cfg
        levels = {int(m.group(1)): float(v) for k, v in metrics.items()
                  if (m := _USAGE.match(k)) and v is not None and math.isfinite(v)}
        if not levels:
            return
        frames = metrics.get("valid/code_frames") or metrics.get("code_frames")
        size = metrics.get("valid/codebook_size") or metrics.get("codebook_size")
        possible = min(1.0, frames / size) if frames and size else 1.0
        usage = {k: v / possible for k, v in sorted(levels.items())}
        mean = float(np.mean(list(usage.values())))
        prev_best = self.best_mean
        self.best_mean = max(self.best_mean, mean)
        if step < cfg.after_step:
            return
        low = {k: v for k, v in usage.items() if v < cfg.min_level_usage
               or (size and frames and frames >= 4 * cfg.min_codes
                   and levels[k] * size < cfg.min_codes)}
        evidence = {"usage": [round(levels[k], 4) for k in sorted(levels)],
                    "possible": round(possible, 4), "mean": round(mean, 4)}
        if low:
            self.first_low = self.first_low if self.first_low is not None else step
            k, v = min(low.items(), key=lambda kv: kv[1])
            used = f", {round(levels[k] * size)} distinct codes" if size else ""
            self.pending.append(self.finding(
                step, "error",
                f"codebook collapse: {len(low)} of {len(usage)} levels use almost none of their "
                f"codes (level {k}: {levels[k]:.1%} of the codebook{used}; thresholds: "
                f"{cfg.min_level_usage:.0%} of what the validation can show, {cfg.min_codes} "
                "codes). Tokens this uniform carry little; an LM cannot learn from them (check "
                "the quantizer's init/restarts, its learning rate, or use FSQ)",
                key="level", since=self.first_low, **evidence))
        elif mean < cfg.min_mean_usage:
            self.pending.append(self.finding(
                step, "warning",
                f"codebook usage is low: {mean:.1%} of codes on average over {len(usage)} "
                "levels", key="mean", **evidence))
        elif prev_best > 0 and mean < cfg.drop * prev_best:
            self.pending.append(self.finding(
                step, "warning",
                f"codebook usage fell sharply: {mean:.1%} now against {prev_best:.1%} at best",
                key="drop", best=prev_best, **evidence))


    def state_dict(self) -> dict[str, Any]:
        return {"best_mean": self.best_mean, "first_low": self.first_low}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_mean = float(state.get("best_mean", 0.0))
        self.first_low = state.get("first_low")


class PosteriorCollapse(Monitor):
    """`posterior_collapse`: a VAE whose latent carries nothing about its input.

    Reads `valid/active_units` (dimensions whose posterior mean varies over the validation
    sounds with variance above 0.01, Burda et al. 2016) and `valid/latent_dim`. No active
    unit after `after_step` is an error (the decoder ignores the latent: every sound comes
    out alike, and sampling the prior is sampling noise); fewer than `min_active_share` of
    the dimensions is a warning.
    """

    id = "posterior_collapse"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.first_dead: int | None = None

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        active = metrics.get("valid/active_units", metrics.get("active_units"))
        dims = metrics.get("valid/latent_dim", metrics.get("latent_dim"))
        if active is None or not dims or not math.isfinite(active):
            return
        if step < self.cfg.after_step:
            return
        evidence = {"active_units": int(active), "latent_dim": int(dims),
                    "kl_total": metrics.get("valid/kl/total")}
        if active == 0:
            self.first_dead = self.first_dead if self.first_dead is not None else step
            self.pending.append(self.finding(
                step, "error",
                f"posterior collapse: none of the {int(dims)} latent dimensions is active "
                "(their posterior means do not vary over the validation sounds); the decoder "
                "ignores the latent. Lower the KL weight (losses.kl.weight), lengthen its "
                "warm-up or set losses.kl.free_bits",
                key="collapse", since=self.first_dead, **evidence))
        elif active < self.cfg.min_active_share * dims:
            self.pending.append(self.finding(
                step, "warning",
                f"only {int(active)} of {int(dims)} latent dimensions are active",
                key="few", **evidence))

    def state_dict(self) -> dict[str, Any]:
        return {"first_dead": self.first_dead}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.first_dead = state.get("first_dead")
