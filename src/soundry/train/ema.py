"""Exponential moving averages of network weights.

shadow <- beta * shadow + (1 - beta) * weight after every optimizer step (a plain copy up to
`start_step`). Floating-point buffers (e.g. BatchNorm running stats) are copied, not
averaged, and integer buffers are copied. The shadow is kept in float32 whatever the
weights' dtype, so a long average of small updates does not vanish in rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _shadow_copy(value: torch.Tensor) -> torch.Tensor:
    value = value.detach()
    return value.float().clone() if value.is_floating_point() else value.clone()


class EMA:
    """Shadow weights for a set of named networks."""

    def __init__(self, networks: dict[str, nn.Module], beta: float, start_step: int = 0) -> None:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"EMA beta must be in (0, 1), got {beta}")
        self.networks = networks
        self.beta = beta
        self.start_step = start_step
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            name: {k: _shadow_copy(v) for k, v in self._tensors(net).items()}
            for name, net in networks.items()
        }

    @staticmethod
    def _tensors(net: nn.Module) -> dict[str, torch.Tensor]:
        """Every parameter and buffer by state_dict name (keep_vars keeps the live tensors)."""
        return dict(net.state_dict(keep_vars=True))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in; `step` is the optimizer step just taken (1-based)."""
        copy = step <= self.start_step
        for name, net in self.networks.items():
            live = self._tensors(net)
            shadow = self.shadow[name]
            averaged_s, averaged_w = [], []
            for key, value in live.items():
                if copy or not (isinstance(value, nn.Parameter) and value.is_floating_point()):
                    shadow[key].copy_(value.detach())
                else:
                    averaged_s.append(shadow[key])
                    averaged_w.append(value.detach().float())
            if averaged_s:
                torch._foreach_lerp_(averaged_s, averaged_w, 1.0 - self.beta)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the networks hold the EMA weights; the live ones come back after."""
        backup = {
            name: {k: v.detach().clone() for k, v in self._tensors(net).items()}
            for name, net in self.networks.items()
        }
        try:
            self._copy_into(self.shadow)
            yield
        finally:
            self._copy_into(backup)

    @torch.no_grad()
    def _copy_into(self, source: dict[str, dict[str, torch.Tensor]]) -> None:
        for name, net in self.networks.items():
            for key, value in self._tensors(net).items():
                value.copy_(source[name][key])

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The shadow of network `name` (float32, state_dict names)."""
        return self.shadow[name]

    @torch.no_grad()
    def load_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow[name]) - set(state)
        if missing:
            raise KeyError(f"EMA state of '{name}' lacks {sorted(missing)[:5]}")
        for key, value in self.shadow[name].items():
            value.copy_(state[key])
