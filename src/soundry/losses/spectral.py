"""Spectral and waveform reconstruction losses (unweighted; see `soundry.losses.config`).

Every loss takes the estimate first and the reference second, each either a tensor
[B, C, T] or a `soundry.audio.dsp.SpectrogramCache` of one. Passing caches lets the mel
loss, the STFT loss and the multi-band discriminator share one set of STFTs per signal.
STFT windows and mel filterbanks come from the per-device caches in `soundry.audio.dsp`,
so nothing is rebuilt or copied to the device per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from soundry.audio.dsp import SpectrogramCache
from soundry.losses.config import MelLossConfig, STFTLossConfig

Signal = torch.Tensor | SpectrogramCache


def as_cache(x: Signal) -> SpectrogramCache:
    """A `SpectrogramCache` of `x` (returned unchanged when it already is one)."""
    return x if isinstance(x, SpectrogramCache) else SpectrogramCache(x)


def _check_shapes(x: torch.Size, y: torch.Size) -> None:
    if x != y:
        raise ValueError(f"estimate {tuple(x)} and reference {tuple(y)} differ in shape")


def _log_l1(x: torch.Tensor, y: torch.Tensor, eps: float, pow: float) -> torch.Tensor:
    """L1(log10(clamp(x, eps) ** pow), log10(clamp(y, eps) ** pow))."""
    lx = x.clamp(min=eps).log10()
    ly = y.clamp(min=eps).log10()
    diff = F.l1_loss(lx, ly)
    return diff * pow if pow != 1.0 else diff


class MelLoss(nn.Module):
    """DAC's multi-scale log-mel L1 distance (definition in `MelLossConfig`) -> scalar."""

    def __init__(self, cfg: MelLossConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.scales = [
            (n_mels, w, int(w * cfg.hop_factor))
            for n_mels, w in zip(cfg.n_mels, cfg.windows, strict=True)
        ]

    def forward(self, estimate: Signal, reference: Signal) -> torch.Tensor:
        x, y = as_cache(estimate), as_cache(reference)
        _check_shapes(x.shape, y.shape)
        cfg = self.cfg
        loss: torch.Tensor | None = None
        for n_mels, window, hop in self.scales:
            mx = x.mel(self.sample_rate, window, hop, n_mels, cfg.fmin, cfg.fmax)
            my = y.mel(self.sample_rate, window, hop, n_mels, cfg.fmin, cfg.fmax)
            term = mx.new_zeros(())
            if cfg.log_weight:
                term = term + cfg.log_weight * _log_l1(mx, my, cfg.clamp_eps, cfg.pow)
            if cfg.mag_weight:
                term = term + cfg.mag_weight * F.l1_loss(mx, my)
            loss = term if loss is None else loss + term
        assert loss is not None
        return loss


class MultiResolutionSTFTLoss(nn.Module):
    """DAC's multi-scale STFT distance (definition in `STFTLossConfig`) -> scalar."""

    def __init__(self, cfg: STFTLossConfig, sample_rate: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.resolutions = [(w, int(w * cfg.hop_factor)) for w in cfg.windows]

    def forward(self, estimate: Signal, reference: Signal) -> torch.Tensor:
        x, y = as_cache(estimate), as_cache(reference)
        _check_shapes(x.shape, y.shape)
        cfg = self.cfg
        loss: torch.Tensor | None = None
        for window, hop in self.resolutions:
            mx, my = x.magnitude(window, hop), y.magnitude(window, hop)
            term = mx.new_zeros(())
            if cfg.log_weight:
                term = term + cfg.log_weight * _log_l1(mx, my, cfg.clamp_eps, cfg.pow)
            if cfg.mag_weight:
                term = term + cfg.mag_weight * F.l1_loss(mx, my)
            loss = term if loss is None else loss + term
        assert loss is not None
        return loss


def waveform_l1(estimate: Signal, reference: Signal) -> torch.Tensor:
    """Mean absolute sample difference -> scalar."""
    x = estimate.audio if isinstance(estimate, SpectrogramCache) else estimate
    y = reference.audio if isinstance(reference, SpectrogramCache) else reference
    _check_shapes(x.shape, y.shape)
    return F.l1_loss(x, y)


def spectral_terms(weights: dict[str, float], fake: Signal, real: Signal, mel: MelLoss,
                   stft: MultiResolutionSTFTLoss) -> dict[str, torch.Tensor]:
    """The unweighted "mel", "stft" and "waveform" terms whose weight is non-zero."""
    terms: dict[str, torch.Tensor] = {}
    if weights.get("mel"):
        terms["mel"] = mel(fake, real)
    if weights.get("stft"):
        terms["stft"] = stft(fake, real)
    if weights.get("waveform"):
        terms["waveform"] = waveform_l1(fake, real)
    return terms
