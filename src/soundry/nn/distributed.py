"""Statistics over the global batch when training runs on several processes.

A layer that normalises by its batch (batch norm, ActNorm's data-dependent start, a running
standardisation) sees only its own process's share of the batch. Left alone, the processes
would normalise by different statistics and their running buffers would drift apart (the
engine's replica check stops such a run at its first checkpoint). These helpers sum the
moments over all processes, so a run on N processes with batch B each normalises exactly as
one process with batch N * B does, up to float summation order. On one process (or with no
process group) they are the plain local statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def distributed() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of training processes (1 without a process group)."""
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _SumOverProcesses(torch.autograd.Function):
    """y = the sum of x over processes; the gradient of x is the sum of y's gradients over
    processes (each process's loss depends on every process's x through y)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        y = x.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def global_moments(x: torch.Tensor, dims: tuple[int, ...]
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, biased variance, count) of x over `dims` and over every process's x.

    The other dimensions must have the same sizes on every process. Differentiable: the
    gradient of each process's loss reaches every process's input through the sums (the
    backward of the all-reduce sums the gradients), which, averaged over processes as the
    engine averages gradients, is the gradient of one process holding the whole batch.
    Shapes: mean and variance keep `dims` as size-1 dimensions.
    """
    count = 1
    for d in dims:
        count *= x.shape[d]
    if not distributed():
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        return mean, var, count
    total = torch.tensor([float(count)], device=x.device)
    dist.all_reduce(total)
    n = int(total.item())
    # two passes (the mean, then the squares about it): E[x^2] - E[x]^2 would cancel
    # catastrophically for features whose mean is large beside their spread
    mean = _SumOverProcesses.apply(x.sum(dim=dims, keepdim=True)) / n
    centred = x - mean
    var = _SumOverProcesses.apply((centred * centred).sum(dim=dims, keepdim=True)) / n
    return mean, var, n


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """Batch norm over [B, C, T] whose training statistics are those of the global batch
    (all processes'), as `torch.nn.SyncBatchNorm` does on GPUs, but on any device. On one
    process it is `torch.nn.BatchNorm1d` itself; the state dict is the same either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed()):
            return super().forward(x)
        if x.dim() != 3 or self.momentum is None or not self.track_running_stats:
            raise NotImplementedError("GlobalBatchNorm1d over processes takes [B, C, T] "
                                      "inputs, a momentum and running statistics")
        # float32 statistics and normalisation, as batch norm computes them under autocast
        xf = x.float()
        mean, var, n = global_moments(xf, (0, 2))
        with torch.no_grad():  # the running estimates, as batch norm keeps them (unbiased)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.reshape(-1), alpha=m)
            self.running_var.mul_(1 - m).add_(var.reshape(-1) * (n / max(n - 1, 1)), alpha=m)
            self.num_batches_tracked.add_(1)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.to(x.dtype)


__all__ = ["GlobalBatchNorm1d", "distributed", "global_moments", "rank", "world_size"]
