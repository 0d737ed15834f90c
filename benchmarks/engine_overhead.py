"""How much time the training engine adds to a step, over the task's own compute.

The same toy step (a conv denoising autoencoder + a conv discriminator on 1 s of 16 kHz
audio, discriminator update then generator update, the recipe's Muon / AdamW optimizers)
is timed twice:

  bare    a hand-written loop: next batch, task.train_step with an updater that only does
          zero_grad / backward / optimizer.step / scheduler.step;
  engine  `run_training` with the engine's defaults (grad norms, NaN checks, log
          accumulators, metrics.jsonl every 10 steps, TensorBoard, progress bar, EMA off);
          its summary's train_seconds excludes validation and checkpoint writing.

Rounds alternate bare / engine and the fastest round of each counts. Prints one JSON line.

    python benchmarks/engine_overhead.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from soundry.config import load_recipe
from soundry.train.engine import run_training, seed_everything
from soundry.train.task import TaskContext
from soundry.train.tasks.toy import ToyTask

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml"


def overrides(steps: int) -> list[str]:
    return [
        "data.sample_rate=16000", "data.segment_seconds=1.0", "data.batch_size=2",
        "model.channels=16", "model.layers=3", "model.kernel_size=7", "model.dropout=0.0",
        "model.disc_channels=8", "toy.items_per_epoch=64", "train.ema=null",
        f"train.max_steps={steps}", "train.log_every=10", f"train.valid_every={10 * steps}",
        f"train.checkpoint_every={10 * steps}", "train.best_metric=null",
    ]


class BareUpdater:
    """Backward and step, nothing else."""

    def __init__(self, specs: list[Any]) -> None:
        self.specs = {s.name: s for s in specs}

    def update(self, name: str, loss: torch.Tensor) -> bool:
        spec = self.specs[name]
        spec.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        spec.optimizer.step()
        spec.scheduler.step()
        return True


def bare(steps: int) -> float:
    recipe = load_recipe(RECIPE, overrides(steps))
    seed_everything(recipe.seed)
    task = ToyTask(recipe, TaskContext())
    nets = task.networks()
    for net in nets.values():
        net.train()
    updater = BareUpdater(task.optimizers())
    batches = iter(task.train_loader())
    start = time.perf_counter()
    for step in range(1, steps + 1):
        task.train_step(next(batches), step, updater)
    return time.perf_counter() - start


def engine(steps: int) -> float:
    recipe = load_recipe(RECIPE, overrides(steps))
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_training(recipe, Path(tmp) / "run")
    return summary["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bare(3)  # warm-up: allocator, oneDNN kernels, imports
    bare_times, engine_times = [], []
    for _ in range(args.rounds):
        bare_times.append(bare(args.steps))
        engine_times.append(engine(args.steps))
    b, e = min(bare_times), min(engine_times)
    print(json.dumps({
        "benchmark": "engine_overhead",
        "steps": args.steps,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "bare_ms_per_step": round(1000 * b / args.steps, 2),
        "engine_ms_per_step": round(1000 * e / args.steps, 2),
        "overhead_pct": round(100 * (e - b) / b, 2),
        "bare_rounds_s": [round(t, 3) for t in bare_times],
        "engine_rounds_s": [round(t, 3) for t in engine_times],
    }))


if __name__ == "__main__":
    main()
