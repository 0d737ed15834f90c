"""Real NVP normalizing flows over vectors, and the Gaussian densities they build on.

A flow is an invertible map of vectors [B, D] with an exact log-determinant::

    y, log_det = flow(x, context)        # log_det [B] = log |det dy/dx|
    x, log_det_inv = flow.inverse(y, context)   # log_det_inv = -log_det at the same point

Layers (Dinh et al. 2017, "Density estimation using Real NVP"):

- `AffineCoupling`: with a binary mask m, y = m x + (1 - m)(x exp(s) + t), where (s, t) come
  from an MLP of m x (and an optional context vector). s is bounded for stability: through
  `scale_limit * tanh(raw / scale_limit)` ("tanh"), or log(softplus(raw) + 1e-3) shifted
  so 0 maps to 1 ("softplus"). The MLP's last layer starts at zero: every coupling starts
  as the identity, so a fresh flow changes nothing.
- `ActNorm` (Glow): per-dimension affine map, initialised from the first training batch to
  zero mean and unit variance.
- `Permutation`: a fixed, seeded shuffle of the dimensions (log-det 0).
- `RunningStandardize`: per-dimension (x - mean) / std with the mean and std tracked by a
  bias-corrected moving average of training batches, not learned. A density fitted to
  moving targets (a VAE's latents while its encoder trains) keeps their scale this way: an
  ActNorm set from the first batch and then learned by gradient stays ~100x too sharp when
  the latents spread out, and its NLL of the moved latents explodes.

`RealNVP` stacks couplings with alternating masks (even / odd dimensions), each optionally
preceded by ActNorm and followed by a permutation (`mixing: permute`). `FlowPrior` is a
learned density: a RealNVP maps z to N(0, I) noise (`log_prob`), its inverse samples.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from soundry.nn.distributed import global_moments

LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------- densities


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) of vectors [B, D] -> [B] (nats)."""
    return -0.5 * (z * z + LOG_2PI).sum(dim=-1)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(std^2)) of vectors [B, D] -> [B] (nats)."""
    u = (z - mean) / std
    return -0.5 * (u * u + LOG_2PI).sum(dim=-1) - torch.log(std).sum(dim=-1)


def gaussian_kl_per_dim(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) per dimension [B, D] (nats), in closed form:
    0.5 (mean^2 + std^2 - 1) - log std."""
    return 0.5 * (mean * mean + std * std - 1.0) - torch.log(std)


# ----------------------------------------------------------------------------- layers


class AffineCoupling(nn.Module):
    """One Real NVP affine coupling: dims where `mask` is 1 pass through and condition the
    affine map of the others. x [B, D] (+ context [B, Dc]) -> (y [B, D], log_det [B])."""

    def __init__(
        self,
        mask: torch.Tensor,
        hidden: int,
        context_dim: int = 0,
        scale: Literal["tanh", "softplus"] = "tanh",
        scale_limit: float = 2.0,
    ) -> None:
        super().__init__()
        dim = int(mask.numel())
        self.register_buffer("mask", mask.float().reshape(1, dim))
        self.scale = scale
        self.scale_limit = float(scale_limit)
        self.net = nn.Sequential(
            nn.Linear(dim + context_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * dim),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)  # identity at the start (s = 0, t = 0)
        nn.init.zeros_(last.bias)

    def _scale_shift(self, x: torch.Tensor, context: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        inp = x * self.mask
        if context is not None:
            inp = torch.cat([inp, context], dim=-1)
        raw, shift = self.net(inp).chunk(2, dim=-1)
        if self.scale == "tanh":
            log_s = self.scale_limit * torch.tanh(raw / self.scale_limit)
        else:  # softplus(raw + c) + eps with c chosen so raw = 0 gives scale 1
            log_s = torch.log(F.softplus(raw + _SOFTPLUS_ONE) + 1e-3)
        keep = 1.0 - self.mask
        return log_s * keep, shift * keep

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, shift = self._scale_shift(x, context)
        return x * torch.exp(log_s) + shift, log_s.sum(dim=-1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        # the masked dims of y equal those of x, so (s, t) are recomputed exactly
        log_s, shift = self._scale_shift(y, context)
        return (y - shift) * torch.exp(-log_s), -log_s.sum(dim=-1)


# softplus(c) + 1e-3 = 1  <=>  c = log(exp(1 - 1e-3) - 1)
_SOFTPLUS_ONE = math.log(math.expm1(1.0 - 1e-3))


class ActNorm(nn.Module):
    """y = (x - bias) * exp(-log_std) per dimension, initialised from the first training
    batch so that y has zero mean and unit variance there (Kingma & Dhariwal 2018)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, dim))
        self.log_std = nn.Parameter(torch.zeros(1, dim))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        # the global batch's statistics, so every process starts from the same values
        mean, var, n = global_moments(x, (0,))
        if n < 2:
            return  # one item says nothing about spread
        self.bias.copy_(mean)
        self.log_std.copy_(0.5 * torch.log((var * (n / (n - 1))).clamp(min=1e-6)))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._init_from(x.detach())
        y = (x - self.bias) * torch.exp(-self.log_std)
        return y, (-self.log_std).sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return y * torch.exp(self.log_std) + self.bias, self.log_std.sum().expand(y.shape[0])


class RunningStandardize(nn.Module):
    """y = (x - mean) / std per dimension, mean and std [D] from a moving average of the
    training batches' statistics (`momentum` per batch, bias-corrected as in Adam, so the
    first batches count fully); frozen in eval mode. Not a parameter: the gradient never
    sharpens it. log-det = -sum(log std)."""

    def __init__(self, dim: int, momentum: float = 0.02, min_std: float = 1e-3) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(()))  # sum of the averaging weights

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        mean, var, n = global_moments(x.float(), (0,))  # the global batch's, on every process
        if n < 2:
            return
        m = self.momentum
        new_weight = self.weight * (1 - m) + m
        # bias-corrected: the running sums over the weight seen so far
        keep = self.weight * (1 - m) / new_weight
        self.mean.mul_(keep).add_(mean[0], alpha=float(1 - keep))
        self.var.mul_(keep).add_(var[0] * (n / (n - 1)), alpha=float(1 - keep))
        self.weight.copy_(new_weight)

    def _std(self) -> torch.Tensor:
        return self.var.sqrt().clamp(min=self.min_std)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and torch.is_grad_enabled():
            self._track(x.detach())
        std = self._std()
        return (x - self.mean) / std, (-std.log().sum()).expand(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        std = self._std()
        return y * std + self.mean, std.log().sum().expand(y.shape[0])


class Permutation(nn.Module):
    """A fixed shuffle of the dimensions, seeded (log-det 0)."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(dim, generator=gen)
        self.register_buffer("perm", perm)
        self.register_buffer("inv", torch.argsort(perm))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return y[:, self.inv], y.new_zeros(y.shape[0])


class RealNVP(nn.Module):
    """`layers` affine couplings over D dims (masks alternate between even and odd dims);
    with `actnorm` an ActNorm before each, with `mixing="permute"` a seeded permutation after
    each. `context_dim` > 0 conditions every coupling on a context vector.
    Zero layers is the identity (log-det 0)."""

    def __init__(
        self,
        dim: int,
        layers: int,
        hidden: int = 256,
        context_dim: int = 0,
        scale: Literal["tanh", "softplus"] = "tanh",
        actnorm: bool = True,
        mixing: Literal["alternate", "permute"] = "alternate",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 2 and layers:
            raise ValueError("a coupling flow needs at least 2 dimensions")
        self.dim = dim
        self.context_dim = context_dim
        steps: list[nn.Module] = []
        parity = torch.arange(dim) % 2
        for i in range(layers):
            if actnorm:
                steps.append(ActNorm(dim))
            mask = parity if i % 2 == 0 else 1 - parity
            steps.append(AffineCoupling(mask, hidden, context_dim, scale))
            if mixing == "permute" and i < layers - 1:
                steps.append(Permutation(dim, seed * 1000 + i))
        self.steps = nn.ModuleList(steps)

    @property
    def n_layers(self) -> int:
        return sum(isinstance(s, AffineCoupling) for s in self.steps)

    def _context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        return context if self.context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D] -> (y [B, D], log |det dy/dx| [B])."""
        ctx = self._context(context)
        total = x.new_zeros(x.shape[0])
        for step in self.steps:
            x, log_det = step(x, ctx)
            total = total + log_det
        return x, total

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """y [B, D] -> (x [B, D], log |det dx/dy| [B])."""
        ctx = self._context(context)
        total = y.new_zeros(y.shape[0])
        for step in reversed(self.steps):
            y, log_det = step.inverse(y, ctx)
            total = total + log_det
        return y, total


class FlowPrior(nn.Module):
    """p(z): a RealNVP f maps z to eps ~ N(0, I) (the density direction, so ActNorm layers
    initialise from data); sampling inverts it, z = f^-1(eps). Zero layers: N(0, I).
    `standardize`: z passes a `RunningStandardize` first (a learned prior only).

    log p(z) = log N(f(s(z)); 0, I) + log |det df/du| + log |det ds/dz|.
    """

    def __init__(self, flow: RealNVP, standardize: bool = False) -> None:
        super().__init__()
        self.flow = flow
        self.dim = flow.dim
        self.standardize = RunningStandardize(flow.dim) if standardize and flow.n_layers \
            else None

    @property
    def learned(self) -> bool:
        return self.flow.n_layers > 0

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of vectors [B, D] -> [B] (nats). In training mode with gradients on,
        the standardisation tracks z's statistics first."""
        log_det = z.new_zeros(z.shape[0])
        if self.standardize is not None:
            z, log_det = self.standardize(z)
        eps, flow_log_det = self.flow(z)
        return standard_normal_log_prob(eps) + flow_log_det + log_det

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws [n, D]: eps ~ N(0, temperature^2 I) (from `generator`, on the CPU, so a
        seed gives the same draws on every device), z = f^-1(eps)."""
        ref = next(iter(self.flow.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        eps = torch.randn(n, self.dim, generator=generator) * float(temperature)
        z, _ = self.flow.inverse(eps.to(device))
        if self.standardize is not None:
            z, _ = self.standardize.inverse(z)
        return z
