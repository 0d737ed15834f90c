"""How much time the training engine adds to a step, over the task's own compute.

The same toy step (a conv denoising autoencoder + a conv discriminator on 1 s of 16 kHz
audio, discriminator update then generator update, the recipe's Muon / AdamW optimizers)
is timed twice:

  bare    a hand-written loop: next batch, task.train_step with an updater that only does
          zero_grad / backward / optimizer.step / scheduler.step;
  engine  `run_training` with the engine's defaults (grad norms and clipping, NaN checks,
          log accumulators, metrics.jsonl, TensorBoard, progress bar; EMA off, no
          validation or checkpoint inside the timed steps).

Both run `chunk` (5) steps first and are then timed in chunks of 5 steps: the engine's
chunks are the intervals of its metrics.jsonl lines after the first (log_every = 5, from
perf/steps_per_s), so one-time costs (first TensorBoard write, first progress render,
kernel selection) are left out of both. Rounds alternate which of bare / engine goes
first; the median chunk over all rounds counts, which shrugs off bursts of load from other
processes.

The engine's fixed cost per step is also measured directly (`fixed_overhead_ms_per_step`):
the same comparison on a task whose step is a tiny linear layer, where nearly all the time
is the engine's own. The training-health monitors are part of the engine; the time they
take (timed by the engine itself, `summary.json` health_seconds) is reported as
`health_pct_of_step`. Prints one JSON line.

    python benchmarks/engine_overhead.py [--steps 20] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from soundry.train.config import AdamWConfig
from soundry.train.engine import Engine, seed_everything
from soundry.train.logging import read_metrics
from soundry.train.optim import build_spec
from soundry.train.recipes import load_recipe
from soundry.train.task import OptimizerSpec, Task, TaskContext
from soundry.train.tasks.toy import ToyTask

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy.yaml"


def overrides(total_steps: int, log_every: int) -> list[str]:
    return [
        "data.sample_rate=16000", "data.segment_seconds=1.0", "data.batch_size=4",
        "model.channels=32", "model.layers=3", "model.kernel_size=7", "model.dropout=0.0",
        "model.disc_channels=16", "toy.items_per_epoch=64", "train.ema=null",
        f"train.max_steps={total_steps}", f"train.log_every={log_every}",
        f"train.valid_every={10 * total_steps}", f"train.checkpoint_every={10 * total_steps}",
        "train.best_metric=null",
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
        if spec.scheduler is not None:
            spec.scheduler.step()
        return True


def bare_seconds(task_cls: type[Task], recipe: Any, warmup: int, steps: int) -> list[float]:
    """Seconds per chunk of `warmup` steps of a hand-written loop, after `warmup` steps."""
    seed_everything(recipe.seed)
    task = task_cls(recipe, TaskContext())
    for net in task.networks().values():
        net.train()
    updater = BareUpdater(task.optimizers())
    batches = iter(task.train_loader())
    for step in range(1, warmup + 1):
        task.train_step(next(batches), step, updater)
    chunks = []
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + steps + 1):
        task.train_step(next(batches), step, updater)
        if (step - warmup) % warmup == 0:
            now = time.perf_counter()
            chunks.append(now - start)
            start = now
    return chunks


HEALTH: list[float] = []  # share of each engine run's step time spent in the monitors


def engine_seconds(task_cls: type[Task], recipe: Any, warmup: int) -> list[float]:
    """Seconds per log interval (`warmup` steps) of the engine, after the first."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        summary = Engine(task_cls(recipe, TaskContext()), recipe, run).fit()
        lines = [r for r in read_metrics(run / "metrics.jsonl")
                 if r["kind"] == "train" and r["step"] > warmup]
    if summary["train_seconds"] > 0:
        HEALTH.append(summary["health_seconds"] / summary["train_seconds"])
    return [warmup / r["perf/steps_per_s"] for r in lines]


class TinyTask(Task):
    """A step that costs almost nothing: what remains is the engine's own work."""

    def __init__(self, recipe: Any, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        self.net = torch.nn.Linear(8, 1)
        self.batches = [torch.randn(4, 8) for _ in range(4)]

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> list[OptimizerSpec]:
        return [build_spec("net", AdamWConfig(clip=1.0), {"net": self.net})]

    def train_loader(self) -> Any:
        return _CycleLoader(self.batches)

    def train_step(self, batch: Any, step: int, updater: Any) -> dict[str, Any]:
        loss = self.net(batch).pow(2).mean()
        updater.update("net", loss)
        return {"loss/mse": loss.detach()}


class _CycleLoader:
    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.i = batches, 0

    def __iter__(self) -> Any:
        while True:
            self.i += 1
            yield self.batches[self.i % len(self.batches)]

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = state["i"]


def compare(task_cls: type[Task], chunk: int, steps: int, rounds: int
            ) -> tuple[float, float]:
    """Median seconds per step: (bare, engine)."""
    recipe = load_recipe(RECIPE, overrides(chunk + steps, chunk))
    bare: list[float] = []
    engine: list[float] = []
    for i in range(rounds):  # alternate which goes first
        if i % 2:
            engine += engine_seconds(task_cls, recipe, chunk)
        bare += bare_seconds(task_cls, recipe, chunk, steps)
        if not i % 2:
            engine += engine_seconds(task_cls, recipe, chunk)
    return statistics.median(bare) / chunk, statistics.median(engine) / chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (a multiple of 5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chunk = 5
    steps = max(chunk, args.steps // chunk * chunk)
    b, e = compare(ToyTask, chunk, steps, args.rounds)
    health_share = statistics.median(HEALTH)
    tiny_b, tiny_e = compare(TinyTask, 50, 400, args.rounds)
    print(json.dumps({
        "benchmark": "engine_overhead",
        "steps": steps,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "bare_ms_per_step": round(1000 * b, 2),
        "engine_ms_per_step": round(1000 * e, 2),
        "overhead_pct": round(100 * (e - b) / b, 2),
        "fixed_overhead_ms_per_step": round(1000 * (tiny_e - tiny_b), 3),
        # the engine's own cost as a share of the toy step: steadier than overhead_pct
        "fixed_overhead_pct": round(100 * (tiny_e - tiny_b) / b, 2),
        # time inside the training-health monitors (timed by the engine) per toy step
        "health_pct_of_step": round(100 * health_share, 3),
        "health_ms_per_step": round(1000 * health_share * e, 3),
    }))


if __name__ == "__main__":
    main()
