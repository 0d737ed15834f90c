"""Monitors of token language models: stopping, and whether validation loss can be trusted."""

from __future__ import annotations

import math
from typing import Any

from soundry.health.core import Finding, Monitor


class EosUntrained(Monitor):
    """`eos_untrained`: an LM whose loss never has EOS as a target (it will never learn to
    stop), or whose predicted EOS probability at item ends stays near zero.

    Reads the per-step scalars the LM task logs: `eos/targets` (EOS cells counted by the
    loss in that step) and `eos/prob` (mean predicted EOS probability on them).
    """

    id = "eos_untrained"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.steps = 0
        self.targets = 0.0
        self.first_step: int | None = None
        self.prob: list[float] = []  # recent eos/prob values

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        t = values.get("eos/targets")
        if t is None:
            return
        if self.first_step is None:
            self.first_step = step
        self.steps += 1
        self.targets += float(t)
        p = values.get("eos/prob")
        if p is not None and math.isfinite(p) and t > 0:
            self.prob = (self.prob + [float(p)])[-32:]

    def check(self, step: int) -> list[Finding]:
        cfg = self.cfg
        if self.steps >= cfg.min_steps and self.targets == 0:
            return [self.finding(
                step, "error",
                f"in {self.steps} training steps the loss never had an EOS target: the LM "
                "cannot learn to stop and generations will run to the length limit (check "
                "that training windows reach item ends and that the loss mask keeps EOS)",
                key="no_targets", since=self.first_step, steps=self.steps)]
        if step >= cfg.prob_after and len(self.prob) >= 8:
            mean = sum(self.prob) / len(self.prob)
            if mean < cfg.min_prob:
                return [self.finding(
                    step, "warning",
                    f"the predicted EOS probability at item ends is still {mean:.2e} after "
                    f"{step} steps: the LM has not learned to stop",
                    key="low_prob", since=self.first_step, eos_prob=mean)]
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "targets": self.targets, "first_step": self.first_step,
                "prob": self.prob}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.targets = int(state.get("steps", 0)), float(state.get("targets", 0))
        self.first_step, self.prob = state.get("first_step"), list(state.get("prob", []))


class ValidVsGeneration(Monitor):
    """`valid_vs_generation`: validation loss rising while training loss falls, while the
    temperature-0 generations' diagnostics (coverage, entropy) still change. Says that eval
    loss is a poor guide here (common with small token datasets) and points to the demos."""

    id = "valid_vs_generation"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.train: list[float] = []  # recent training loss values
        self.history: list[dict[str, float]] = []  # per validation: step, valid, train, gen

    def on_scalars(self, step: int, values: dict[str, float]) -> None:
        v = values.get(self.cfg.train_key)
        if v is not None and math.isfinite(v):
            self.train = (self.train + [float(v)])[-32:]

    def on_valid(self, step: int, metrics: dict[str, float], audio: dict[str, Any],
                 sample_rate: int) -> None:
        cfg = self.cfg
        loss = metrics.get(cfg.valid_key)
        if loss is None or not math.isfinite(loss) or not self.train:
            return
        gen = {k: float(v) for k, v in metrics.items()
               if ("gen_coverage_t0/" in k or k.startswith("valid/gen_entropy_t0"))
               and v is not None and math.isfinite(v)}
        train_now = sorted(self.train)[len(self.train) // 2]
        self.history.append({"step": step, "valid": float(loss), "train": train_now,
                             **{f"gen:{k}": v for k, v in gen.items()}})
        self.history = self.history[-16:]
        h = self.history
        if len(h) < cfg.rises + 1:
            return
        best = min(r["valid"] for r in h[: -cfg.rises])
        recent = h[-cfg.rises:]
        rising = all(r["valid"] > best * (1 + cfg.margin) for r in recent)
        start = h[-cfg.rises - 1]
        train_fell = recent[-1]["train"] < start["train"] * (1 - cfg.margin)
        moved = [k for k in recent[-1] if k.startswith("gen:") and k in start
                 and abs(recent[-1][k] - start[k]) > cfg.moved * max(abs(start[k]), 1e-6)]
        if rising and train_fell and moved:
            self.pending.append(self.finding(
                step, "warning",
                f"validation loss has risen for {cfg.rises} validations "
                f"({best:.4g} -> {recent[-1]['valid']:.4g}) while training loss fell "
                f"({start['train']:.4g} -> {recent[-1]['train']:.4g}) and the temperature-0 "
                "generations still change: validation loss is a poor guide here; judge by "
                "listening to the temperature-0 demos, not by the best-loss checkpoint",
                key="diverging", since=start["step"], history=h[-cfg.rises - 1:],
                moved=[k[4:] for k in moved]))


    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train, self.history = list(state.get("train", [])), list(state.get("history", []))
