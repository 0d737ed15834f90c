"""What happens inside one training step besides the task's own code: the `Updater` the
engine hands to `Task.train_step` (backward, gradient accumulation, the all-reduce across
processes, grad norm, clipping, the NaN guard's skip decision, the optimizer and scheduler
steps) and the device-side accumulator of logged values."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from soundry.registry import did_you_mean
from soundry.train.fsdp import local
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec

# ----------------------------------------------------------------------------- accumulators


class LogAccumulator:
    """Sums of logged values over one log interval, kept on the device (no sync per step).

    Non-finite values are left out of the means; the NaN guard counts them instead.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, Any] = {}
        self.maxima: dict[str, float] = {}

    def add(self, key: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            v = value.detach().float()
            if v.numel() != 1:
                v = v.mean()
            v = v.reshape(())
            finite = torch.isfinite(v).float()
            v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
            if key in self.sums:
                self.sums[key] = self.sums[key] + v
                self.counts[key] = self.counts[key] + finite
            else:
                self.sums[key], self.counts[key] = v, finite
        else:
            v = float(value)
            if not np.isfinite(v):
                return
            self.sums[key] = self.sums.get(key, 0.0) + v
            self.counts[key] = self.counts.get(key, 0.0) + 1.0

    def add_max(self, key: str, value: float) -> None:
        if np.isfinite(value):
            self.maxima[key] = max(self.maxima.get(key, -np.inf), value)

    def means(self) -> dict[str, float | None]:
        """Interval means (None when every value was non-finite) and maxima; one sync."""
        on_device = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        totals = {k: (float(v), float(self.counts[k])) for k, v in self.sums.items()
                  if k not in on_device}
        if on_device:
            flat = torch.stack([self.sums[k].to(self.device) for k in on_device]
                               + [self.counts[k].to(self.device) for k in on_device]).tolist()
            for i, k in enumerate(on_device):
                totals[k] = (flat[i], flat[len(on_device) + i])
        out: dict[str, float | None] = {
            k: (total / count if count > 0 else None) for k, (total, count) in totals.items()
        }
        out.update(self.maxima)
        return out

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.maxima.clear()

    def state_dict(self) -> dict[str, Any]:
        def plain(d: dict[str, Any]) -> dict[str, list[Any]]:
            return {k: [float(v), isinstance(v, torch.Tensor)] for k, v in d.items()}

        return {"sums": plain(self.sums), "counts": plain(self.counts),
                "maxima": dict(self.maxima)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def back(d: dict[str, list[Any]]) -> dict[str, Any]:
            return {k: (torch.tensor(v, dtype=torch.float32, device=self.device) if is_tensor
                        else v) for k, (v, is_tensor) in d.items()}

        self.sums, self.counts = back(state["sums"]), back(state["counts"])
        self.maxima = dict(state["maxima"])


# ----------------------------------------------------------------------------- updater


class StepUpdater:
    """The `Updater` the engine hands to `Task.train_step`."""

    def __init__(self, specs: list[OptimizerSpec], grad_accum: int, accelerator: Any,
                 acc: LogAccumulator, fp16: bool = False) -> None:
        self.specs = {s.name: s for s in specs}
        self.params = {
            s.name: [p for g in s.optimizer.param_groups for p in g["params"]] for s in specs
        }
        self.grad_accum = grad_accum
        self.accelerator = accelerator
        self.acc = acc
        self.world_size = accelerator.num_processes
        self.micro = 0
        self._zeroed: set[str] = set()
        self._pending: set[str] = set()
        self._loss_ok: dict[str, torch.Tensor] = {}
        self._called: set[str] = set()
        self.skipped: dict[str, int] = {s.name: 0 for s in specs}
        self.skipped_this_step = False
        # this step's grad norm and clipping flag per optimizer (host floats, for health)
        self.step_values: dict[str, float] = {}
        # fp16: dynamic loss scaling, one scaler per optimizer (a GAN's generator and
        # discriminator losses have different scales); overflowing steps are skipped and
        # counted apart from non-finite losses (they are expected while the scale settles)
        self.scalers: dict[str, torch.amp.GradScaler] = (
            {s.name: torch.amp.GradScaler(accelerator.device.type) for s in specs}
            if fp16 else {})
        self.overflows: dict[str, int] = {s.name: 0 for s in specs}

    def begin(self, micro: int) -> None:
        self.micro = micro
        self._called.clear()
        if micro == 0:
            self._zeroed.clear()
            self.skipped_this_step = False
            self.step_values = {}

    def update(self, name: str, loss: torch.Tensor) -> bool:
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"updater.update: no optimizer '{name}'{did_you_mean(name, self.specs)}"
                           f" (optimizers: {', '.join(self.specs)})")
        if loss.ndim != 0:
            raise ValueError(f"updater.update('{name}'): loss must be a scalar, got "
                             f"shape {tuple(loss.shape)}")
        if name in self._called:
            raise RuntimeError(f"updater.update('{name}') called twice in one train_step; sum "
                               "the losses of one optimizer and update once")
        self._called.add(name)
        if name not in self._zeroed:
            # drop gradients another optimizer's backward left on these parameters
            spec.optimizer.zero_grad(set_to_none=True)
            self._zeroed.add(name)
            self._loss_ok.pop(name, None)
        finite = torch.isfinite(loss.detach())
        self._loss_ok[name] = finite if name not in self._loss_ok else self._loss_ok[name] & finite
        if loss.requires_grad:
            scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
            if name in self.scalers:
                scaled = self.scalers[name].scale(scaled)
            with section(f"backward/{name}"):
                self.accelerator.backward(scaled)
        self._pending.add(name)
        if self.micro == self.grad_accum - 1:
            with section(f"optimizer/{name}"):
                return self._boundary(spec)
        return False

    def finish(self) -> None:
        """Step optimizers whose loss was given in earlier micro-batches but not the last."""
        for name in list(self._pending):
            with section(f"optimizer/{name}"):
                self._boundary(self.specs[name])

    def _boundary(self, spec: OptimizerSpec) -> bool:
        params = self.params[spec.name]
        loss_ok = self._loss_ok.pop(spec.name)
        if self.world_size > 1:  # every process must take the same decision
            loss_ok = self._all_reduce(params, loss_ok)
        scaler = self.scalers.get(spec.name)
        if scaler is not None and any(p.grad is not None for p in params):
            scaler.unscale_(spec.optimizer)  # after the all-reduce: the same on every process
        grads = [p.grad for p in params if p.grad is not None]
        sharded = any(isinstance(g, DTensor) for g in grads)
        if sharded:
            norm = self._sharded_norm(grads)
        elif grads:
            norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False)
        else:
            norm = torch.zeros((), device=self.accelerator.device)
        ok = torch.isfinite(norm) & loss_ok
        norm_value, ok_value = torch.stack([norm.float(), ok.float()]).tolist()  # one sync
        stepped = bool(ok_value)
        if stepped:
            clipped = spec.clip is not None and bool(grads) and norm_value > spec.clip
            if spec.clip is not None and grads and sharded:
                coef = (spec.clip / (norm + 1e-6)).clamp(max=1.0)  # as clip_grads_with_norm_
                for g in grads:
                    local(g).mul_(coef)
            elif spec.clip is not None and grads:
                torch.nn.utils.clip_grads_with_norm_(params, spec.clip, norm)
            if scaler is not None and grads:
                scaler.step(spec.optimizer)  # gradients are finite: this steps
                scaler.update()
                self.acc.add(f"amp_overflow/{spec.name}", 0.0)
            else:
                spec.optimizer.step()
            if spec.scheduler is not None:
                spec.scheduler.step()
            self.acc.add(f"grad_norm/{spec.name}", norm_value)
            self.acc.add_max(f"grad_norm_max/{spec.name}", norm_value)
            if spec.clip is not None:  # share of this interval's steps that were clipped
                self.acc.add(f"clip_fraction/{spec.name}", float(clipped))
            self.step_values[f"grad_norm/{spec.name}"] = norm_value
            self.step_values[f"clipped/{spec.name}"] = float(clipped)
        elif scaler is not None and grads and bool(loss_ok):
            # a finite loss with non-finite scaled gradients: the loss scale overflowed
            scaler.update()  # lowers the scale
            self.overflows[spec.name] += 1
            self.acc.add(f"amp_overflow/{spec.name}", 1.0)
        else:
            self.skipped[spec.name] += 1
            self.skipped_this_step = True
        if scaler is not None:
            scale = float(scaler.get_scale())
            self.step_values[f"loss_scale/{spec.name}"] = scale
            self.acc.add(f"loss_scale/{spec.name}", scale)
        spec.optimizer.zero_grad(set_to_none=True)
        self._pending.discard(spec.name)
        return stepped

    @staticmethod
    def _sharded_norm(grads: list[torch.Tensor]) -> torch.Tensor:
        """The L2 norm of gradients some of which are sharded (FSDP DTensors): the squares
        of the local shards summed over processes, plus the replicated gradients' once."""
        import torch.distributed as dist

        shards = [local(g).float().pow(2).sum() for g in grads if isinstance(g, DTensor)]
        whole = [g.float().pow(2).sum() for g in grads if not isinstance(g, DTensor)]
        total = torch.stack(shards).sum()
        dist.all_reduce(total)
        if whole:
            total = total + torch.stack(whole).sum()
        return total.sqrt()

    def _all_reduce(self, params: list[nn.Parameter], loss_ok: torch.Tensor) -> torch.Tensor:
        """Average gradients over processes in one flat all-reduce; returns whether every
        process's loss was finite. Sharded (FSDP) gradients are left out: the backward pass
        has already reduce-scattered and averaged them."""
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        trainable = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
        for p in trainable:
            if p.grad is None:  # every process must reduce the same flat layout
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in trainable]
        bad_loss = (~loss_ok).float().reshape(1)
        flat = _flatten_dense_tensors([*(g.float() for g in grads), bad_loss])
        dist.all_reduce(flat)
        reduced = _unflatten_dense_tensors(flat, [*grads, bad_loss])
        for g, r in zip(grads, reduced[:-1], strict=True):
            g.copy_(r / self.world_size)
        return reduced[-1].reshape(()) == 0
