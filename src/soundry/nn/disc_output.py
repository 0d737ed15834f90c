"""What a discriminator returns, as adversarial and feature-matching losses consume it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DiscOutput:
    """One sub-discriminator's verdict.

    logits: its final map (e.g. [B, 1, frames, period] for MPD); features: every
    intermediate activation before it, in layer order (used by feature matching).
    """

    logits: torch.Tensor
    features: list[torch.Tensor]
    name: str = ""

    def detached(self) -> DiscOutput:
        """A copy whose tensors carry no autograd history."""
        return DiscOutput(self.logits.detach(), [f.detach() for f in self.features], self.name)


def split_outputs(outputs: list[DiscOutput], sizes: list[int]) -> list[list[DiscOutput]]:
    """Split the outputs of a batch made by concatenating signals of `sizes` items each.

    Discriminators treat batch items independently, so running real and generated audio
    as one batch and splitting gives the same results as two calls, with fewer, larger
    convolutions. Returns one output list per part (views, no copies).
    """
    parts: list[list[DiscOutput]] = [[] for _ in sizes]
    for out in outputs:
        logits = out.logits.split(sizes)
        feats = [f.split(sizes) for f in out.features]
        for i in range(len(sizes)):
            parts[i].append(DiscOutput(logits[i], [f[i] for f in feats], out.name))
    return parts
