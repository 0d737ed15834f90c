"""The `losses:` section of a codec recipe and the loss terms a codec declares.

Loss modules and functions (`soundry.losses.spectral`, `soundry.losses.adversarial`) return
unweighted terms; `soundry.losses.terms.LossTerms.total` multiplies each by its weight once.

Defaults are DAC's: mel 15 (7 scales), feature matching 2, adversarial 1 (LSGAN),
commitment 0.25, codebook 1; STFT and waveform terms off.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from soundry.config import Strict
from soundry.losses.terms import ADVERSARIAL_TERMS, LossTerm, LossTerms, weighted_total

__all__ = ["CODEC_TERMS", "CodecLossConfig", "weighted_total"]

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
        """Term name -> weight, for every term in `CODEC_TERMS`."""
        return {name: float(getattr(self, name).weight) for name in CODEC_TERMS.names}


# Every term a codec step can log, with DAC's weights as defaults (the `losses:` section
# above holds the recipe's weights; its defaults must agree with these).
CODEC_TERMS = LossTerms([
    LossTerm("mel", 15.0, "multi-scale log-mel L1 (DAC's MelSpectrogramLoss)"),
    LossTerm("stft", 0.0, "multi-resolution log/linear STFT magnitude L1"),
    LossTerm("waveform", 0.0, "waveform L1"),
    LossTerm("commitment", 0.25, "VQ commitment: encoder latents to their (stopped) codes"),
    LossTerm("codebook", 1.0, "VQ codebook: codes to their (stopped) encoder latents"),
]) + ADVERSARIAL_TERMS
