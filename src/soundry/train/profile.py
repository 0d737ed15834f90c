"""`soundry profile`: where a training step's time goes, and how close it runs to the
machine's arithmetic peak.

The recipe trains through the real engine in a temporary run directory (validation,
checkpoints and health checks pushed past the end) for `warmup` steps, then `steps` timed
steps under a `SectionTimer` (`soundry.train.sections`): exclusive wall time of each marked
part of a step (data, generator forward, discriminator, losses, backward and optimizer per
network, EMA, health, logging; `task` is whatever a task did outside those, `other` the
engine's own remainder). One further step runs under `torch.utils.flop_counter` to count
the FLOPs of matrix products and convolutions (forward and backward); dividing by the
measured step time and by the peak this machine reaches on a large fp32 matmul and on a
1-D convolution (`measure_peaks`) gives the fraction of peak the step achieves.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from soundry.train.sections import SectionTimer


def measure_peaks(threads: int | None = None, seconds: float = 0.5) -> dict[str, float]:
    """GFLOP/s of a 1024^3 fp32 matmul and of a 64-channel, kernel-7 fp32 conv1d over
    [16, 64, 16000], best of repeated runs for about `seconds` each, with `threads` intra-op
    threads (None: the current count, which is restored afterwards either way)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _peaks(seconds)
    finally:
        torch.set_num_threads(before)


def _peaks(seconds: float) -> dict[str, float]:
    out = {}
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, w = torch.randn(16, 64, 16000), torch.randn(64, 64, 7)

    def best(fn: Any, flops: float) -> float:
        fn()
        rates, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            t0 = time.perf_counter()
            fn()
            rates.append(flops / max(time.perf_counter() - t0, 1e-9) / 1e9)
        return max(rates)

    out["matmul_gflops"] = best(lambda: a @ b, 2 * 1024**3)
    out["conv_gflops"] = best(lambda: torch.nn.functional.conv1d(x, w, padding=3),
                              2 * 16 * 64 * 64 * 7 * 16000)
    return out


def count_step_flops(engine: Any, batch: Any) -> float:
    """FLOPs of one training step of `engine` on `batch` (matmuls and convolutions, forward
    and backward), by running one more step under torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        engine.updater.begin(0)
        engine.task.train_step(batch, engine.step + 1, engine.updater)
        engine.updater.finish()
    return float(counter.get_total_flops())


def one_phase(recipe: Any, phase: str | None) -> tuple[Any, str | None]:
    """`recipe` with its schedule cut to the phase named `phase` (None: the first), lasting
    the whole profile, and that phase's name; a recipe without a schedule is returned as
    it is (name None). A schedule's phases last steps or fractions of a run that a profile's
    few steps do not reproduce, so the profile times one phase's step, by name."""
    from soundry.errors import ConfigError

    # a transform recipe with gan: false trains one reconstruction phase, not its schedule
    effective = getattr(recipe, "effective_schedule", None)
    schedule = effective() if callable(effective) else getattr(recipe, "schedule", None)
    phases = getattr(schedule, "phases", None)
    if not phases:
        if phase is not None:
            raise ConfigError(f"--phase {phase}: a {recipe.task} recipe has no schedule phases")
        return recipe, None
    names = [p.name for p in phases]
    if phase is not None and phase not in names:
        raise ConfigError(f"--phase {phase}: the recipe's phases are {', '.join(names)}")
    chosen = phases[names.index(phase) if phase is not None else 0]
    alone = chosen.model_copy(update={"steps": None, "until": None, "ramp_steps": 0})
    return recipe.model_copy(update={"schedule": schedule.model_copy(
        update={"phases": [alone]})}), chosen.name


def profile_recipe(recipe: Any, steps: int = 20, warmup: int = 5,
                   peaks: dict[str, float] | None = None,
                   phase: str | None = None) -> dict[str, Any]:
    """Profile `recipe` (see the module docstring) in its schedule's phase named `phase`
    (None: the first); returns the figures as a dict."""
    from accelerate.utils import send_to_device

    from soundry.train.engine import Engine
    from soundry.train.tasks import TASKS

    recipe, phase_name = one_phase(recipe, phase)
    total = warmup + steps
    train = recipe.train.model_copy(update={
        "max_steps": total, "valid_every": 10**9, "checkpoint_every": 10**9,
        "log_every": max(1, steps), "progress": False, "tensorboard": False,
        "valid_at_start": False, "budget_minutes": None, "valid_at_minutes": [],
    })
    recipe = recipe.model_copy(update={"train": train})
    if hasattr(recipe, "health"):
        recipe = recipe.model_copy(update={"health": recipe.health.model_copy(
            update={"check_every": 10**9})})
    timer = SectionTimer()
    marks: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="soundry-profile-") as tmp:
        from soundry.train.task import TaskContext

        ctx = TaskContext(run_dir=Path(tmp), seed=recipe.seed, max_steps=total)
        task = TASKS.get(recipe.task)(recipe, ctx)
        engine = Engine(task, recipe, Path(tmp) / "run")

        def hook(step: int) -> None:
            if step == warmup:
                timer.reset()
                marks["t0"] = time.perf_counter()
                timer.__enter__()
            elif step == total:
                marks["t1"] = time.perf_counter()
                timer.__exit__()

        engine.step_hooks.append(hook)
        with contextlib.redirect_stdout(io.StringIO()):  # the temporary run's summary line
            engine.fit()
        seconds = marks["t1"] - marks["t0"]
        # one more step, counted: the loader and networks are still there
        flops = count_step_flops(engine, send_to_device(next(iter(engine.loader)),
                                                        engine.device))
        if hasattr(engine.loader, "close"):
            engine.loader.close()

    per_step = seconds / steps
    sections = {k: v / steps for k, v in sorted(timer.totals.items(), key=lambda kv: -kv[1])}
    sections["other"] = max(0.0, per_step - sum(sections.values()))
    peaks = peaks if peaks is not None else measure_peaks(recipe.train.threads)
    achieved = flops / per_step / 1e9
    return {
        "task": recipe.task,
        "phase": phase_name,
        "steps": steps,
        "warmup": warmup,
        "step_seconds": per_step,
        "sections_seconds": sections,
        "sections_share": {k: v / per_step for k, v in sections.items()},
        "flops_per_step": flops,
        "achieved_gflops": achieved,
        "peak_gflops": peaks,
        "fraction_of_matmul_peak": achieved / peaks["matmul_gflops"],
        "fraction_of_conv_peak": achieved / peaks["conv_gflops"],
        "threads": recipe.train.threads or torch.get_num_threads(),
        "device": str(engine.device),
    }


def format_profile(result: dict[str, Any]) -> str:
    """The profile as a plain-text table."""
    phase = f" ({result['phase']} phase)" if result.get("phase") else ""
    lines = [f"{result['task']} step{phase}: {1000 * result['step_seconds']:.1f} ms "
             f"(mean of {result['steps']} steps after {result['warmup']} warm-up, "
             f"{result['threads']} threads, {result['device']})", ""]
    lines.append(f"{'section':<28}{'ms/step':>10}{'share':>9}")
    for name, sec in result["sections_seconds"].items():
        lines.append(f"{name:<28}{1000 * sec:>10.1f}{100 * result['sections_share'][name]:>8.1f}%")
    peaks = result["peak_gflops"]
    gflop = result["flops_per_step"] / 1e9
    lines += ["", f"FLOPs per step (matmul + conv, fwd + bwd): {gflop:.2f} G",
              f"achieved: {result['achieved_gflops']:.1f} GFLOP/s; measured peaks: matmul "
              f"{peaks['matmul_gflops']:.1f}, conv1d {peaks['conv_gflops']:.1f} GFLOP/s "
              f"({100 * result['fraction_of_matmul_peak']:.1f}% / "
              f"{100 * result['fraction_of_conv_peak']:.1f}%)"]
    return "\n".join(lines)


def profile_json(result: dict[str, Any]) -> str:
    return json.dumps({"profile": True, **result})


__all__ = ["format_profile", "measure_peaks", "profile_json", "profile_recipe"]
