"""An engine's checkpoint: what it saves at a checkpoint step and restores on resume.

The checkpoint files themselves (atomic writes, index, pruning) are
`soundry.train.checkpoint`'s; these functions decide what goes into them. `self` is the
`soundry.train.engine.Engine` (its networks, optimizer specs, EMA, updater, log
accumulator, health runner, task and loader).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from soundry.errors import SoundryError
from soundry.train.checkpoint import all_finite, capture_rng, restore_rng
from soundry.train.fsdp import (
    full_optimizer_state,
    full_state,
    load_full_optimizer_state,
    load_full_state,
)
from soundry.train.optim import load_keeping_recipe

log = logging.getLogger("soundry.train")


def save_checkpoint(self: Any, step: int) -> Path:
    """Write the engine's checkpoint of `step` (weights, EMA, optimizers, engine, task and
    per-rank state); refuses non-finite weights so the last checkpoint stays a good one."""
    if not all_finite(self.networks):
        last = self.ckpt.latest()
        raise SoundryError(
            f"step {step}: network weights are not finite; not saving them. The last good "
            f"checkpoint is {last or 'none'}. Lower the learning rate or enable clipping."
        )
    scalers = self.updater.scalers
    optimizers = {
        s.name: {"optimizer": _optimizer_state(self, s),
                 "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
                 "scaler": scalers[s.name].state_dict() if s.name in scalers else None}
        for s in self.specs
    }
    state = {
        "engine": {
            "skipped": dict(self.updater.skipped),
            "overflows": dict(self.updater.overflows),
            "consecutive_skips": self.consecutive_skips,
            "best": [self.ckpt.best, self.ckpt.best_metric, self.ckpt.best_value],
            "log": self.acc.state_dict(),
            "last_valid": self.last_valid,
            "health": self.health.state_dict(),
            "clock": self.clock.state_dict(),
        },
        "task": self.task.extra_state(),
        "networks": list(self.networks),
        "optimizers": [s.name for s in self.specs],
        "ema": list(self.ema.networks) if self.ema else [],
        "sharded": list(self.sharded),
    }
    rank_state = {"rng": capture_rng(), "loader": self.loader.state_dict()}
    ema_state = ({n: self.ema.state_dict(n) for n in self.ema.networks}
                 if self.ema is not None else {})
    # a sharded network's full weights are gathered to the main process (every process
    # takes part); the others are saved from the module itself
    networks = {name: full_state(net) if name in self.sharded else net
                for name, net in self.networks.items()}
    path = self.ckpt.save(step, networks, ema_state, optimizers, state, rank_state)
    self.last_checkpoint = path
    self.health.save_state(step)
    return path

def restore_checkpoint(self: Any, path: Path) -> None:
    """Load everything `save_checkpoint` wrote back into the engine, so the run goes on as
    if it had never stopped; optimizer hyperparameters come from the (resumed) recipe."""
    state = self.ckpt.read_state(path)
    if set(state["networks"]) != set(self.networks):
        raise SoundryError(f"checkpoint {path} holds networks {state['networks']}, the "
                           f"task builds {list(self.networks)}")
    if sorted(state.get("sharded", [])) != sorted(self.sharded):
        raise SoundryError(
            f"checkpoint {path} was written with sharded networks {state.get('sharded', [])} "
            f"(train.fsdp), this run shards {self.sharded}: resume with the same train.fsdp "
            "and more than one process, or start a new run with --init-from")
    for name, net in self.networks.items():
        weights = self.ckpt.read_network(path, name)
        if name in self.sharded:
            load_full_state(net, weights)
        else:
            net.load_state_dict(weights)
    if self.ema is not None:
        for name in self.ema.networks:
            if name in state["ema"]:
                self.ema.load_state_dict(name, self.ckpt.read_network(path, name, ema=True))
            else:  # EMA switched on for a resumed run: start it from the weights
                self.ema.load_state_dict(name, {k: v.detach().float() for k, v in
                                                self.networks[name].state_dict().items()})
    missing = [s.name for s in self.specs if s.name not in state["optimizers"]]
    if missing:
        raise SoundryError(f"checkpoint {path} has no state for optimizer(s) "
                           f"{', '.join(missing)}; it holds {', '.join(state['optimizers'])}")
    for spec in self.specs:
        saved = self.ckpt.read_optimizer(path, spec.name)
        net = _sharded_network(self, spec)
        load = None if net is None else (
            lambda st, net=net, opt=spec.optimizer: load_full_optimizer_state(net, opt, st))
        changed = load_keeping_recipe(spec.optimizer, spec.scheduler, saved["optimizer"],
                                      saved["scheduler"], load)
        for line in changed:
            log.info("optimizer %s: the recipe changes %s on resume", spec.name, line)
        scaler = self.updater.scalers.get(spec.name)
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
    engine = state["engine"]
    self.updater.skipped.update(engine["skipped"])
    self.updater.overflows.update(engine.get("overflows", {}))
    self.consecutive_skips = engine["consecutive_skips"]
    best, metric, value = engine["best"]
    if best is not None:
        self.ckpt.set_best(best, metric, value)
    self.acc.load_state_dict(engine["log"])
    self.last_valid = engine["last_valid"]
    self._health_state = engine.get("health")
    self.clock.load_state_dict(engine.get("clock", {}))
    self.task.load_extra_state(state["task"])
    rank_state = self.ckpt.read_rank_state(path)
    self.loader.load_state_dict(rank_state["loader"])
    restore_rng(rank_state["rng"])
    self.step = int(state["step"])
    self.last_checkpoint = path
    log.info("resumed from %s (step %d)", path, self.step)


def _sharded_network(self: Any, spec: Any) -> Any:
    """The sharded network an optimizer spec trains, or None when it trains none."""
    names = [n for n in (spec.networks or []) if n in self.sharded]
    if not names:
        return None
    if len(spec.networks) != 1:
        raise SoundryError(f"optimizer {spec.name} spans networks {spec.networks}, of which "
                           f"{names} are sharded: a sharded network needs an optimizer of "
                           "its own")
    return self.networks[names[0]]


def _optimizer_state(self: Any, spec: Any) -> dict[str, Any]:
    """The optimizer's state dict; for a sharded network's optimizer the full state,
    keyed by parameter name, gathered to the main process (collective)."""
    net = _sharded_network(self, spec)
    return spec.optimizer.state_dict() if net is None else full_optimizer_state(
        net, spec.optimizer)
