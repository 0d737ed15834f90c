"""Adversarial and feature-matching losses over `DiscOutput` lists (unweighted).

Each sub-discriminator contributes the mean of its per-element loss; contributions are
summed over sub-discriminators (DAC's reduction, so values match DAC's logs).

- lsgan: D = sum_d mean((1 - D(real))^2) + mean(D(fake)^2);  G = sum_d mean((1 - D(fake))^2)
- hinge: D = sum_d mean(relu(1 - D(real))) + mean(relu(1 + D(fake)));  G = sum_d mean(-D(fake))
- feature matching: sum_d sum_l mean(|F_l(fake) - F_l(real)|), real maps detached.

Losses are reduced in float32 even when the discriminator ran under bf16 autocast.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from soundry.nn.disc_output import DiscOutput

AdversarialKind = Literal["lsgan", "hinge"]


def _check_kind(kind: str) -> None:
    if kind not in ("lsgan", "hinge"):
        raise ValueError(f"unknown adversarial loss '{kind}' (valid: lsgan, hinge)")


def _check_pairs(real: list[DiscOutput], fake: list[DiscOutput]) -> None:
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real but {len(fake)} fake discriminator outputs")


def discriminator_loss(
    real: list[DiscOutput], fake: list[DiscOutput], kind: AdversarialKind = "lsgan"
) -> torch.Tensor:
    """The discriminator's loss: real should score 1 (lsgan) / >= 1 (hinge), fake 0 / <= -1."""
    _check_kind(kind)
    _check_pairs(real, fake)
    total: torch.Tensor | None = None
    for r, f in zip(real, fake, strict=True):
        real_logits, fake_logits = r.logits.float(), f.logits.float()
        if kind == "lsgan":
            term = (1.0 - real_logits).square().mean() + fake_logits.square().mean()
        else:
            term = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no discriminator outputs")
    return total


def generator_adversarial_loss(
    fake: list[DiscOutput], kind: AdversarialKind = "lsgan"
) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's scores of generated audio."""
    _check_kind(kind)
    total: torch.Tensor | None = None
    for f in fake:
        logits = f.logits.float()
        term = (1.0 - logits).square().mean() if kind == "lsgan" else -logits.mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no discriminator outputs")
    return total


def feature_matching_loss(real: list[DiscOutput], fake: list[DiscOutput]) -> torch.Tensor:
    """L1 between generated and (detached) real feature maps: mean per map, summed."""
    _check_pairs(real, fake)
    total: torch.Tensor | None = None
    for r, f in zip(real, fake, strict=True):
        if len(r.features) != len(f.features):
            raise ValueError(f"discriminator '{f.name}': feature map counts differ")
        for fr, ff in zip(r.features, f.features, strict=True):
            term = F.l1_loss(ff.float(), fr.detach().float())
            total = term if total is None else total + term
    if total is None:
        raise ValueError("no discriminator feature maps")
    return total
