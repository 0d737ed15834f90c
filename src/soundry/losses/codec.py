"""The codec's losses, assembled from the recipe's `losses:` section.

Each weight is applied exactly once, in the task's weighted sum; the functions here return
unweighted terms. Terms whose weight is zero in the current phase are not computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from soundry.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from soundry.losses.config import CodecLossConfig
from soundry.losses.spectral import MelLoss, MultiResolutionSTFTLoss, waveform_l1


class CodecLosses(nn.Module):
    """Reconstruction and adversarial terms of a codec step (filterbanks built once)."""

    def __init__(self, cfg: CodecLossConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.kind = cfg.adversarial.type
        self.mel = MelLoss(cfg.mel, sample_rate)
        self.stft = MultiResolutionSTFTLoss(cfg.stft, sample_rate)

    def reconstruction(
        self, real: Any, fake: Any, weights: dict[str, float]
    ) -> dict[str, torch.Tensor]:
        """Unweighted reconstruction terms with non-zero weight.

        `real`, `fake`: [N, 1, T] signals or `SpectrogramCache`s of them (shared STFTs).
        """
        terms: dict[str, torch.Tensor] = {}
        if weights.get("mel", 0.0):
            terms["mel"] = self.mel(fake, real)
        if weights.get("stft", 0.0):
            terms["stft"] = self.stft(fake, real)
        if weights.get("waveform", 0.0):
            terms["waveform"] = waveform_l1(fake, real)
        return terms

    def discriminator(self, real_outs: Any, fake_outs: Any) -> torch.Tensor:
        return discriminator_loss(real_outs, fake_outs, self.kind)

    def generator_adversarial(self, real_outs: Any, fake_outs: Any) -> dict[str, torch.Tensor]:
        return {
            "adversarial": generator_adversarial_loss(fake_outs, self.kind),
            "feature_matching": feature_matching_loss(real_outs, fake_outs),
        }
