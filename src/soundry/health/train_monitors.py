"""Monitors of the optimisation itself: losses, gradient norms, the adversarial balance.

Online they see every step's values; `soundry doctor` feeds them the log intervals' means
from metrics.jsonl instead (and each interval's largest grad norm), so windows count
points, not steps.
"""

from __future__ import annotations

import math
from typing import Any

from soundry.health.core import Finding, Monitor, Series

#: losses that rise by design during adversarial training (not judged for a sustained rise)
ADVERSARIAL_TERMS = ("loss/d", "loss/adversarial", "loss/feature_matching")


class _Spikes:
    """The worst jump of one series above its running median since the last check.

    A jump's ratio is 1 + (value - median) / scale, scale = max(|median|, spread): for a
    positive series that varies little against its level this is value / median; for one
    that changes sign or is noisy around zero (a flow's NLL per sound: median 0.1, values
    +-50 from batch to batch) the jump is measured against the noise, not against a median
    that happens to sit near zero.
    """

    def __init__(self) -> None:
        self.worst: dict[str, tuple[float, int, float, float]] = {}  # key -> ratio, step, v, med

    def see(self, key: str, step: int, value: float, median: float, factor: float,
            min_delta: float = 0.0, spread: float = 0.0) -> None:
        scale = max(abs(median), spread) if math.isfinite(spread) else abs(median)
        if not (math.isfinite(value) and math.isfinite(median)) or scale <= 0:
            return
        ratio = 1.0 + (value - median) / scale
        if ratio >= factor and value - median >= min_delta:
            if key not in self.worst or ratio > self.worst[key][0]:
                self.worst[key] = (ratio, step, value, median)

    def take(self) -> dict[str, tuple[float, int, float, float]]:
        out, self.worst = self.worst, {}
        return out


class LossSpike(Monitor):
    """`loss_spike`: a logged loss (keys `loss/...`) far above its running median, or a
    sustained rise of one that should fall."""

    id = "loss_spike"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.series: dict[str, Series] = {}
        self.spikes = _Spikes()

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        cfg = self.cfg
        for key, value in values.items():
            if not key.startswith("loss") or value is None:
                continue
            s = self.series.setdefault(key, Series(2 * cfg.window))
            if len(s) >= cfg.min_points:
                self.spikes.see(key, step, float(value), s.median(last=cfg.window), cfg.factor,
                                cfg.min_delta, s.spread(last=cfg.window))
            s.add(step, float(value))

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        out = []
        for key, (ratio, at, value, median) in self.spikes.take().items():
            severity = "error" if ratio >= cfg.error_factor else "warning"
            out.append(self.finding(
                step, severity,
                f"{key} jumped to {value:.4g} at step {at}, {ratio:.0f}x its running median "
                f"({median:.4g}; or its spread, when larger). A loss that jumps like this "
                "usually precedes a divergence: lower the learning rate, raise warm-up, or "
                "check the data at that step",
                key=key, since=at, value=value, median=median, ratio=ratio,
                curve=self.series[key].tail(12)))
        q = max(2, cfg.window // 4)
        for key, s in self.series.items():
            if key in ADVERSARIAL_TERMS or len(s) < cfg.window + q:
                continue
            recent, before = s.median(last=q), s.median(last=cfg.window, skip_last=q)
            if before > 0 and recent > cfg.rise_factor * before and recent - before >= \
                    cfg.min_delta:
                out.append(self.finding(
                    step, "warning",
                    f"{key} has risen for a while: median {recent:.4g} over its last {q} "
                    f"values against {before:.4g} before ({recent / before:.1f}x)",
                    key=f"{key}:rise", since=list(s.values)[-q][0], recent=recent,
                    before=before, curve=s.tail(12)))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"series": {k: s.state() for k, s in self.series.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.series = {}
        for key, points in state.get("series", {}).items():
            self.series[key] = Series(2 * self.cfg.window)
            self.series[key].load(points)


class GradSpike(Monitor):
    """`grad_spike`: an optimizer's grad norm (`grad_norm/<name>`) far above its running
    median, or clipping active on most steps (`clipped/<name>` per step, or the logged
    `clip_fraction/<name>` per interval)."""

    id = "grad_spike"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.series: dict[str, Series] = {}
        self.clips: dict[str, Series] = {}
        self.spikes = _Spikes()

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        cfg = self.cfg
        for key, value in values.items():
            if value is None:
                continue
            if key.startswith(("grad_norm/", "grad_norm_max/")):
                name = key.split("/", 1)[1]
                s = self.series.setdefault(name, Series(cfg.window))
                if len(s) >= cfg.min_points:
                    self.spikes.see(name, step, float(value), s.median(), cfg.factor)
                if key.startswith("grad_norm/"):  # the interval's max is not a baseline
                    s.add(step, float(value))
            elif key.startswith(("clipped/", "clip_fraction/")):
                name = key.split("/", 1)[1]
                self.clips.setdefault(name, Series(cfg.window)).add(step, float(value))

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        out = []
        for name, (ratio, at, value, median) in self.spikes.take().items():
            severity = "error" if ratio >= cfg.error_factor else "warning"
            out.append(self.finding(
                step, severity,
                f"grad norm of '{name}' reached {value:.4g} at step {at}, {ratio:.0f}x its "
                f"running median ({median:.4g}): the update is unstable (lower the learning "
                "rate, clip tighter, or look for a loss spike at the same step)",
                key=name, since=at, value=value, median=median, ratio=ratio,
                curve=self.series[name].tail(12)))
        for name, s in self.clips.items():
            if len(s) < cfg.min_points:
                continue
            share = sum(v for _, v in s.values) / len(s)
            if share > cfg.clip_share:
                out.append(self.finding(
                    step, "warning",
                    f"gradients of '{name}' were clipped on {share:.0%} of recent steps: "
                    "clipping is doing the optimizer's job (the clip threshold is too low for "
                    "this loss scale, or the learning rate too high)",
                    key=f"{name}:clipping", since=s.values[0][0], share=share))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"series": {k: s.state() for k, s in self.series.items()},
                "clips": {k: s.state() for k, s in self.clips.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.series, self.clips = {}, {}
        for attr, store in (("series", self.series), ("clips", self.clips)):
            for key, points in state.get(attr, {}).items():
                store[key] = Series(self.cfg.window)
                store[key].load(points)


class DiscriminatorDominance(Monitor):
    """`discriminator_dominance`: the discriminator wins outright (its loss near zero while
    the generator's adversarial loss climbs) or never learns (its loss stays where it
    started)."""

    id = "discriminator_dominance"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.d = Series(cfg.window)
        self.g = Series(cfg.window)
        self.d_first: list[float] = []
        self.g_first: list[float] = []
        self.d_start: int | None = None
        self.updates = 0
        self.streak = 0

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        cfg = self.cfg
        d = values.get(cfg.d_loss)
        if d is not None and math.isfinite(d):
            self.d.add(step, d)
            self.updates += 1
            if self.d_start is None:
                self.d_start = step
            if len(self.d_first) < cfg.window:
                self.d_first.append(float(d))
        g = next((values[k] for k in cfg.g_loss if values.get(k) is not None), None)
        if g is not None and math.isfinite(g):
            self.g.add(step, g)
            if len(self.g_first) < cfg.window:
                self.g_first.append(float(g))

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        if len(self.d_first) < cfg.window or len(self.d) < cfg.window:
            return []
        import numpy as np

        d0, d_now = float(np.median(self.d_first)), self.d.median()
        out = []
        dominant = False
        if len(self.g_first) >= cfg.window and len(self.g) >= cfg.window:
            g0, g_now = float(np.median(self.g_first)), self.g.median()
            dominant = d0 > 0 and d_now < cfg.d_floor * d0 and g0 > 0 and g_now > cfg.g_rise * g0
            self.streak = self.streak + 1 if dominant else 0
            if self.streak >= cfg.patience:
                out.append(self.finding(
                    step, "warning",
                    f"the discriminator dominates: its loss fell to {d_now:.3g} "
                    f"({d_now / d0:.0%} of its start, {d0:.3g}) while the generator's "
                    f"adversarial loss rose to {g_now:.3g} ({g_now / g0:.1f}x). The generator "
                    "gets no useful adversarial gradient; lower the discriminator's lr or "
                    "raise its warm-up",
                    key="dominates", since=self.d_start, d_loss=d_now, d_start=d0,
                    g_loss=g_now, g_start=g0, d_curve=self.d.tail(12), g_curve=self.g.tail(12)))
        if not dominant and self.updates >= cfg.min_steps and d0 > 0 and d_now >= cfg.stuck * d0:
            out.append(self.finding(
                step, "warning",
                f"the discriminator has not learned in {self.updates} updates: its loss is "
                f"{d_now:.3g}, {d_now / d0:.0%} of where it started ({d0:.3g}). Check its "
                "learning rate and that its parameters are not frozen",
                key="never_learns", since=self.d_start, d_loss=d_now, d_start=d0))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"d": self.d.state(), "g": self.g.state(), "d_first": self.d_first,
                "g_first": self.g_first, "d_start": self.d_start, "updates": self.updates,
                "streak": self.streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d.load(state.get("d", []))
        self.g.load(state.get("g", []))
        self.d_first, self.g_first = list(state.get("d_first", [])), list(state.get("g_first", []))
        self.d_start, self.updates = state.get("d_start"), int(state.get("updates", 0))
        self.streak = int(state.get("streak", 0))
