"""Time one full codec GAN training step (D update then G update, all losses).

    python benchmarks/train_step.py --recipe recipes/codec/dac-16k.yaml --batch-size 2 \
        --segment-seconds 0.384 [--precision fp32|bf16] [--compile] [--steps 5]

Prints one JSON line: s_per_step (median over timed steps, after warm-up) and the setup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


class _Updater:
    """The engine's update semantics without its bookkeeping: backward, clip, step."""

    def __init__(self, specs: list) -> None:
        self.specs = {s.name: s for s in specs}

    def update(self, name: str, loss: torch.Tensor) -> bool:
        spec = self.specs[name]
        spec.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in spec.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, spec.clip or float("inf"))
        spec.optimizer.step()
        return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default="recipes/codec/dac-16k.yaml")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--segment-seconds", type=float, default=0.384)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument(
        "--samples", type=int, default=0, help="exact segment length (overrides seconds)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from soundry.train.recipes import load_recipe
    from soundry.train.task import TaskContext
    from soundry.train.tasks import TASKS

    recipe = load_recipe(args.recipe, ["schedule.phases=[{name: gan}]"])
    task = TASKS.get("codec")(recipe, TaskContext())
    compiled = []
    if args.compile:  # what train.compile does: the task's networks and losses
        from soundry.train.compiling import compile_task

        compiled = compile_task(task, torch.device("cpu"))
    updater = _Updater(task.optimizers())
    sr = recipe.model.sample_rate
    # Not snapped to the hop: the codec pads internally, as DAC's own step does.
    n = args.samples or int(round(args.segment_seconds * sr))
    gen = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(args.batch_size, recipe.model.channels, n, generator=gen)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            task.train_step({"audio": x}, 10**6, updater)

    warm = []
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        step()
        warm.append(time.perf_counter() - t0)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "benchmark": "codec_train_step",
                "recipe": args.recipe,
                "batch_size": args.batch_size,
                "segment_samples": n,
                "precision": args.precision,
                "compile": args.compile,
                "threads": torch.get_num_threads(),
                "s_per_step": round(statistics.median(times), 4),
                "s_per_step_min": round(min(times), 4),
                "compiled": compiled,
                # the warm-up steps' time beyond steady steps: compilation, allocator warm-up
                "warmup_extra_s": round(sum(warm) - len(warm) * statistics.median(times), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
