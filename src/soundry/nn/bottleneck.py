"""Bottlenecks between an encoder and a decoder: quantizers (RVQ, FSQ), a diagonal Gaussian
(VAE) and none, behind one interface (the way stable-audio-tools builds autoencoders).

    latents, info = bottleneck.encode(z, return_info=True)   # z: encoder output [B, D_in, F]
    audio = decoder(bottleneck.decode(latents))

`encode` returns the latents the decoder consumes [B, D, F] and, with `return_info`, a
`BottleneckInfo`: unweighted auxiliary losses by term name (a VQ's `commitment` and
`codebook`, a VAE's `kl`), and for a discrete bottleneck the codes, the levels each item used
and every level's quantized vector. The encoder's output has `input_dim(D)` channels:
D, or 2 D for a VAE (mean and scale).

Discrete bottlenecks (`discrete = True`) also turn latents into codes and back:
`encode_codes(z, n_levels) -> [B, K, F]` and `decode_codes(codes) -> [B, D, F]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from soundry.nn.quantize import ResidualQuantizer


@dataclass
class BottleneckInfo:
    """What a bottleneck's training pass reports besides its latents (B items, F frames).

    losses: unweighted scalar terms by loss-term name (empty when it has none).
    codes: [B, K, F] long, or None for a continuous bottleneck.
    levels: [B] long, the levels each item used (quantizer dropout), or None.
    level_outputs: each level's quantized vector [B, D, F] (discrete), else empty.
    projected: a quantizer's per-level projected latents [B, K * d, F], or None.
    mean, scale: a VAE's posterior mean and standard deviation [B, D, F], or None.
    """

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: torch.Tensor | None = None
    levels: torch.Tensor | None = None
    level_outputs: list[torch.Tensor] = field(default_factory=list)
    projected: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None


class Bottleneck(nn.Module):
    """Base class: identity latents, no losses, not discrete."""

    discrete: ClassVar[bool] = False
    #: the loss terms `encode(..., return_info=True)` may report
    loss_names: ClassVar[tuple[str, ...]] = ()

    def input_dim(self, dim: int) -> int:
        """Channels the encoder must produce for `dim`-channel latents."""
        return dim

    def encode(
        self,
        z: torch.Tensor,
        return_info: bool = False,
        n_levels: int | None = None,
        step: int | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, BottleneckInfo]:
        """z [B, input_dim(D), F] -> latents [B, D, F] (and info). `n_levels`, `step`,
        `item_ids` (the items' global indices [B], keying per-item random draws): see
        `QuantizerBottleneck`; ignored by continuous bottlenecks."""
        return (z, BottleneckInfo()) if return_info else z

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, D, F] as the decoder takes them (the identity here)."""
        return latents


class NoBottleneck(Bottleneck):
    """The encoder's output goes to the decoder unchanged (a plain autoencoder)."""


class QuantizerBottleneck(Bottleneck):
    """A residual quantizer (RVQ or FSQ stages) as a bottleneck; see `soundry.nn.quantize`."""

    discrete: ClassVar[bool] = True
    loss_names: ClassVar[tuple[str, ...]] = ("commitment", "codebook")

    def __init__(self, quantizer: ResidualQuantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    @property
    def n_codebooks(self) -> int:
        return self.quantizer.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def encode(
        self,
        z: torch.Tensor,
        return_info: bool = False,
        n_levels: int | None = None,
        step: int | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, BottleneckInfo]:
        """Quantize z [B, D, F]. Training mode: quantizer dropout, bypass, usage counting and
        dead-code restarts at optimizer step `step`; eval: the first `n_levels` levels."""
        q = self.quantizer(z, n_levels, step=step, item_ids=item_ids)
        if not return_info:
            return q.quantized
        losses = ({"commitment": q.commitment_loss, "codebook": q.codebook_loss}
                  if self.quantizer.has_losses else {})  # FSQ has none: not logged as zeros
        return q.quantized, BottleneckInfo(
            losses=losses, codes=q.codes, levels=q.levels, level_outputs=q.level_outputs,
            projected=q.latents)

    def encode_codes(self, z: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """Codes [B, n_levels, F] of z [B, D, F] (no dropout, whatever the mode)."""
        return self.quantizer.encode(z, n_levels)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, K' <= K, F] -> quantized latents [B, D, F]."""
        return self.quantizer.decode_codes(codes)


class VAEBottleneck(Bottleneck):
    """A diagonal Gaussian posterior: the encoder gives mean and pre-scale [B, 2 D, F].

    std = softplus(pre-scale) + 1e-4 (stable-audio-tools' parametrisation); training samples
    mean + std * N(0, 1) (from the global generator, which the engine seeds and restores),
    eval returns the mean. Loss `kl`: KL(q || N(0, I)) = 0.5 (mean^2 + var - log var - 1),
    summed over latent dims, mean over items and frames, unweighted. (stable-audio-tools'
    term omits the 0.5, so its weight 1e-4 is 2e-4 here.)
    """

    loss_names: ClassVar[tuple[str, ...]] = ("kl",)

    def input_dim(self, dim: int) -> int:
        return 2 * dim

    def encode(
        self,
        z: torch.Tensor,
        return_info: bool = False,
        n_levels: int | None = None,
        step: int | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, BottleneckInfo]:
        if z.shape[1] % 2:
            raise ValueError(f"a VAE bottleneck takes [B, 2 D, F] (mean and scale), got "
                             f"{tuple(z.shape)}")
        mean, pre = z.chunk(2, dim=1)
        std = F.softplus(pre) + 1e-4
        latents = mean + std * torch.randn_like(mean) if self.training else mean
        if not return_info:
            return latents
        var = std * std
        kl = 0.5 * (mean * mean + var - torch.log(var) - 1).sum(dim=1).mean()
        return latents, BottleneckInfo(losses={"kl": kl}, mean=mean, scale=std)
