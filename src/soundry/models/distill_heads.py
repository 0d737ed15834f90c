"""Projection heads from a codec's quantized levels to a teacher's feature space.

A head maps the sum of the chosen levels' quantized outputs [B, D, F] to [B, H, F] frame by
frame (pointwise convolutions): `linear`, or `mlp` = Linear-GELU-Linear (the default: in a
published run a linear head left a WavLM cosine distance of 0.69, so the head, not level 0,
was the bottleneck).
"""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """[B, in_dim, F] -> [B, out_dim, F]."""

    def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp",
                 hidden: int | None = None) -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Conv1d(in_dim, out_dim, 1)
        elif kind == "mlp":
            width = hidden or out_dim
            self.net = nn.Sequential(nn.Conv1d(in_dim, width, 1), nn.GELU(),
                                     nn.Conv1d(width, out_dim, 1))
        else:
            raise ValueError(f"head kind must be 'linear' or 'mlp', got {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def level_sum(level_outputs: list[torch.Tensor], levels: list[int]) -> torch.Tensor:
    """The sum of the chosen levels' quantized outputs, each [B, D, F]."""
    out = level_outputs[levels[0]]
    for i in levels[1:]:
        out = out + level_outputs[i]
    return out
