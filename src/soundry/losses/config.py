"""The `losses:` section of a codec recipe, and the one place its weights are applied.

Loss modules and functions (`soundry.losses.spectral`, `soundry.losses.adversarial`) return
unweighted terms; `weighted_total` multiplies each term by its weight exactly once. (RAVE
multiplied its feature-matching term by the weight twice, training with 400x instead of
20x; keeping weights out of the loss functions makes that impossible.)

Defaults are DAC's: mel 15 (7 scales), feature matching 2, adversarial 1 (LSGAN),
commitment 0.25, codebook 1; STFT and waveform terms off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from soundry.config import Strict

DAC_MEL_N_MELS = [5, 10, 20, 40, 80, 160, 320]
DAC_MEL_WINDOWS = [32, 64, 128, 256, 512, 1024, 2048]


def _check_windows(v: list[int]) -> list[int]:
    if any(w < 4 for w in v):
        raise ValueError("windows must be >= 4 samples")
    return v


class MelLossConfig(Strict):
    """Multi-scale log-mel L1 (DAC's MelSpectrogramLoss).

    Per scale i: STFT with a periodic Hann window of `windows[i]` samples (n_fft = window),
    hop `int(window * hop_factor)`, magnitude mel spectrogram M with `n_mels[i]` slaney
    filters over [fmin, fmax]; the term is
    `log_weight * L1(log10(clamp(Mx, clamp_eps) ** pow), log10(clamp(My, clamp_eps) ** pow))
    + mag_weight * L1(Mx, My)`, L1 being the mean absolute difference. Scales are summed.
    """

    weight: float = Field(15.0, ge=0)
    n_mels: list[int] = Field(default_factory=lambda: list(DAC_MEL_N_MELS), min_length=1)
    windows: list[int] = Field(default_factory=lambda: list(DAC_MEL_WINDOWS), min_length=1)
    hop_factor: float = Field(0.25, gt=0, le=1)
    clamp_eps: float = Field(1e-5, gt=0)
    mag_weight: float = Field(0.0, ge=0)
    log_weight: float = Field(1.0, ge=0)
    pow: float = Field(1.0, gt=0)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = None  # None: sample_rate / 2

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        return _check_windows(v)

    @model_validator(mode="after")
    def _lengths(self) -> MelLossConfig:
        if len(self.n_mels) != len(self.windows):
            raise ValueError(
                f"n_mels ({len(self.n_mels)} values) and windows ({len(self.windows)} values) "
                "must have the same length (one mel size per window)"
            )
        if self.fmax is not None and self.fmax <= self.fmin:
            raise ValueError("fmax must be greater than fmin")
        return self


class STFTLossConfig(Strict):
    """Multi-resolution STFT loss (DAC's MultiScaleSTFTLoss defaults).

    Per window: `log_weight * L1(log10(clamp(|X|, eps) ** pow), log10(clamp(|Y|, eps) ** pow))
    + mag_weight * L1(|X|, |Y|)`, summed over windows; hop `int(window * hop_factor)`.
    """

    weight: float = Field(0.0, ge=0)
    windows: list[int] = Field(default_factory=lambda: [2048, 512], min_length=1)
    hop_factor: float = Field(0.25, gt=0, le=1)
    clamp_eps: float = Field(1e-5, gt=0)
    mag_weight: float = Field(1.0, ge=0)
    log_weight: float = Field(1.0, ge=0)
    pow: float = Field(2.0, gt=0)

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        return _check_windows(v)


class WeightConfig(Strict):
    """A term that only has a weight (waveform L1, feature matching, quantizer losses)."""

    weight: float = Field(1.0, ge=0)


class AdversarialLossConfig(Strict):
    """Adversarial objective: least squares (DAC, HiFi-GAN) or hinge (MelGAN, EnCodec)."""

    type: Literal["lsgan", "hinge"] = "lsgan"
    weight: float = Field(1.0, ge=0)


class CodecLossConfig(Strict):
    """Every loss term of a codec step and its weight."""

    mel: MelLossConfig = Field(default_factory=MelLossConfig)
    stft: STFTLossConfig = Field(default_factory=STFTLossConfig)
    waveform: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=0.0))
    adversarial: AdversarialLossConfig = Field(default_factory=AdversarialLossConfig)
    feature_matching: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=2.0))
    commitment: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=0.25))
    codebook: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=1.0))

    def weights(self) -> dict[str, float]:
        """Term name -> weight: mel, stft, waveform, adversarial, feature_matching,
        commitment, codebook."""
        return {name: float(getattr(self, name).weight) for name in LOSS_TERMS}


LOSS_TERMS = (
    "mel",
    "stft",
    "waveform",
    "adversarial",
    "feature_matching",
    "commitment",
    "codebook",
)


def weighted_total(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """sum_k weights[k] * terms[k] over the given terms, each weight applied once.

    Terms with weight 0 are left out (so a NaN in an unused term cannot poison the total).
    A term without a weight is a programming error and raises KeyError.
    """
    total: torch.Tensor | None = None
    for name, value in terms.items():
        if name not in weights:
            raise KeyError(f"loss term '{name}' has no weight (known: {', '.join(weights)})")
        w = float(weights[name])
        if w == 0.0:
            continue
        total = value * w if total is None else total + value * w
    if total is None:
        first = next(iter(terms.values()), None)
        return first.new_zeros(()) if first is not None else torch.zeros(())
    return total
