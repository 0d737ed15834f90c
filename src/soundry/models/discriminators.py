"""GAN discriminators for waveform generators: multi-period, multi-scale and multi-band
multi-resolution STFT (MPD / MSD / MRD), in any combination.

A `Discriminator` holds the members a recipe lists and returns one `DiscOutput` (logits and
intermediate feature maps) per sub-discriminator. DAC's discriminator is MPD with periods
[2, 3, 5, 7, 11] plus MRD with windows [2048, 1024, 512] and five bands (42.5M parameters).

Input preprocessing follows DAC: each item's DC offset is removed and it is peak-normalised
to 0.8. The MRD takes complex STFTs from a `SpectrogramCache`; when the caller passes the
cache of the raw signal that the generator's spectral losses already used, the STFTs of the
normalised signal are derived from it (`SpectrogramCache.affine`) instead of recomputed.

Use in a GAN step (real [N, 1, T], fake from the generator)::

    real_spec, fake_spec = SpectrogramCache(real), SpectrogramCache(fake)
    # D step: real and detached fake as one batch (one weight-norm pass, larger GEMMs)
    both = SpectrogramCache.cat([real_spec, fake_spec.detach()])
    real_outs, fake_outs = split_outputs(disc(both.audio, both), [n, n])
    ...  # discriminator_loss, D update; keep [o.detached() for o in real_outs]
    # G step: the mel loss and the MRD read the same fake_spec STFTs
    with frozen(disc):
        fake_outs = disc(fake, fake_spec)

Deviations from DAC, on purpose (no parameter shape changes):
- the MRD uses the plain centred STFT (frame j centred on sample j * hop, 1 + T // hop
  frames), the transform the mel loss uses, so the two share work. DAC's MRD pads the signal
  by 3/8 of a window on each side and drops two frames at either end, which shifts its frame
  grid by half a hop and yields ceil(T / hop) frames; the convolutions are
  translation-equivariant, so only the frame grid differs;
- the MPD reflect-pads to the next multiple of the period (DAC pads a whole extra period
  when T is already a multiple).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from soundry.audio.dsp import SpectrogramCache, downsample
from soundry.config import Strict
from soundry.errors import ConfigError
from soundry.nn.disc_output import DiscOutput, split_outputs  # noqa: F401  (re-exported)
from soundry.registry import Registry

LEAKY_SLOPE = 0.1
DAC_BANDS: list[tuple[float, float]] = [
    (0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)
]


# ----------------------------------------------------------------------------- configs


class MPDConfig(Strict):
    """Multi-period discriminator: the waveform folded into [T / p, p] columns per period."""

    type: Literal["mpd"] = "mpd"
    periods: list[int] = Field(default_factory=lambda: [2, 3, 5, 7, 11], min_length=1)
    channels: list[int] = Field(default_factory=lambda: [32, 128, 512, 1024, 1024], min_length=1)
    kernel_size: int = Field(5, ge=1)
    stride: int = Field(3, ge=1)  # every layer but the last strides by this along time

    @field_validator("periods", "channels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("values must be >= 1")
        return v


class MSDConfig(Strict):
    """Multi-scale discriminator: grouped 1-D convs on the waveform at sample_rate / rate."""

    type: Literal["msd"] = "msd"
    rates: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    channels: list[int] = Field(default_factory=lambda: [16, 64, 256, 1024, 1024, 1024])
    kernels: list[int] = Field(default_factory=lambda: [15, 41, 41, 41, 41, 5])
    strides: list[int] = Field(default_factory=lambda: [1, 4, 4, 4, 4, 1])
    groups: list[int] = Field(default_factory=lambda: [1, 4, 16, 64, 256, 1])

    @model_validator(mode="after")
    def _layers(self) -> MSDConfig:
        n = len(self.channels)
        if n == 0 or not (len(self.kernels) == len(self.strides) == len(self.groups) == n):
            raise ValueError("channels, kernels, strides and groups must have the same length >= 1")
        cin = 1
        for i, (c, g) in enumerate(zip(self.channels, self.groups, strict=True)):
            if cin % g or c % g:
                raise ValueError(
                    f"layer {i}: groups {g} must divide in ({cin}) and out ({c}) channels"
                )
            cin = c
        if any(r < 1 for r in self.rates):
            raise ValueError("rates must be >= 1")
        return self


class MRDConfig(Strict):
    """Multi-band multi-resolution discriminator on complex STFTs (real, imag as channels)."""

    type: Literal["mrd"] = "mrd"
    windows: list[int] = Field(default_factory=lambda: [2048, 1024, 512], min_length=1)
    hop_factor: float = Field(0.25, gt=0, le=1)
    bands: list[tuple[float, float]] = Field(default_factory=lambda: list(DAC_BANDS), min_length=1)
    channels: int = Field(32, ge=1)

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        prev = 0.0
        for lo, hi in v:
            if not (0.0 <= lo < hi <= 1.0) or lo < prev:
                raise ValueError("bands must be increasing, non-overlapping [lo, hi] within [0, 1]")
            prev = hi
        return v

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        if any(w < 16 for w in v):
            raise ValueError("windows must be >= 16 samples")
        return v


MemberConfig = Annotated[MPDConfig | MSDConfig | MRDConfig, Field(discriminator="type")]


class DiscriminatorConfig(Strict):
    """The `discriminator:` section: members (any combination) and input preprocessing."""

    members: list[MemberConfig] = Field(
        default_factory=lambda: [MPDConfig(), MRDConfig()], min_length=1
    )
    weight_norm: bool = True
    normalize: bool = True  # remove DC and peak-normalise each item, as DAC
    peak: float = Field(0.8, gt=0)


# ----------------------------------------------------------------------------- layers


def _wn(module: nn.Module, enabled: bool) -> nn.Module:
    return _weight_norm(module) if enabled else module


def _act(x: torch.Tensor) -> torch.Tensor:
    # In place on a fresh conv output (convolution does not save its output for backward,
    # and leaky ReLU's backward can use its result), saving one map allocation per layer.
    return F.leaky_relu_(x, LEAKY_SLOPE)


class PeriodDiscriminator(nn.Module):
    """Conv2d stack over the waveform folded as [B, 1, T / period, period].

    Kernels (k, 1) mix samples one period apart only; stride s along time on every layer but
    the last. Feature maps are [B, C_i, T_i, period].
    """

    def __init__(self, period: int, cfg: MPDConfig, wn: bool) -> None:
        super().__init__()
        self.period = period
        k, pad = cfg.kernel_size, cfg.kernel_size // 2
        chans = [1, *cfg.channels]
        self.convs = nn.ModuleList()
        for i in range(len(cfg.channels)):
            stride = cfg.stride if i < len(cfg.channels) - 1 else 1
            conv = nn.Conv2d(chans[i], chans[i + 1], (k, 1), (stride, 1), padding=(pad, 0))
            self.convs.append(_wn(conv, wn))
        self.post = _wn(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)), wn)

    def forward(self, audio: torch.Tensor) -> DiscOutput:
        b, c, t = audio.shape
        pad = (-t) % self.period  # to a whole number of periods (reflect, like DAC)
        x = F.pad(audio, (0, pad), mode="reflect") if pad else audio
        x = x.view(b, c, (t + pad) // self.period, self.period)
        features = []
        for conv in self.convs:
            x = _act(conv(x))
            features.append(x)
        return DiscOutput(self.post(x), features, f"mpd{self.period}")


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: MPDConfig, wn: bool) -> None:
        super().__init__()
        self.discs = nn.ModuleList(PeriodDiscriminator(p, cfg, wn) for p in cfg.periods)

    def forward(self, audio: torch.Tensor, spec: SpectrogramCache) -> list[DiscOutput]:
        return [d(audio) for d in self.discs]


class ScaleDiscriminator(nn.Module):
    """Grouped Conv1d stack on the waveform decimated by `rate` (features [B, C_i, T_i])."""

    def __init__(self, rate: int, cfg: MSDConfig, wn: bool) -> None:
        super().__init__()
        self.rate = rate
        chans = [1, *cfg.channels]
        self.convs = nn.ModuleList()
        for i, (k, s, g) in enumerate(zip(cfg.kernels, cfg.strides, cfg.groups, strict=True)):
            conv = nn.Conv1d(chans[i], chans[i + 1], k, s, padding=k // 2, groups=g)
            self.convs.append(_wn(conv, wn))
        self.post = _wn(nn.Conv1d(chans[-1], 1, 3, padding=1), wn)

    def forward(self, audio: torch.Tensor) -> DiscOutput:
        x = downsample(audio, self.rate)
        features = []
        for conv in self.convs:
            x = _act(conv(x))
            features.append(x)
        return DiscOutput(self.post(x), features, f"msd{self.rate}")


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, cfg: MSDConfig, wn: bool) -> None:
        super().__init__()
        self.discs = nn.ModuleList(ScaleDiscriminator(r, cfg, wn) for r in cfg.rates)

    def forward(self, audio: torch.Tensor, spec: SpectrogramCache) -> list[DiscOutput]:
        return [d(audio) for d in self.discs]


def band_bins(window: int, bands: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """[start, stop) STFT bin ranges of fractional bands (DAC: int(fraction * n_bins))."""
    n_bins = window // 2 + 1
    out = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]
    for (lo, hi), (flo, fhi) in zip(out, bands, strict=True):
        if hi <= lo:
            raise ConfigError(
                f"MRD band [{flo}, {fhi}] has no STFT bins at window {window}; "
                "widen the band or use a larger window"
            )
    return out


class ResolutionDiscriminator(nn.Module):
    """Per-band Conv2d stacks over one complex STFT resolution, then a shared post conv.

    Input: complex STFT [B, 1, bins, frames] viewed as [B, 2 (re, im), frames, bins]. Each
    band: conv (3x9) 2 -> C, three (3x9) convs striding 2 along frequency, one (3x3) conv;
    band outputs are concatenated along frequency for the (3x3) post conv to 1 channel.
    Feature maps are [B, C, frames, bins_i].
    """

    def __init__(self, window: int, cfg: MRDConfig, wn: bool) -> None:
        super().__init__()
        self.window = window
        self.hop = int(window * cfg.hop_factor)
        self.bands = band_bins(window, cfg.bands)
        ch = cfg.channels

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    _wn(nn.Conv2d(2, ch, (3, 9), (1, 1), padding=(1, 4)), wn),
                    _wn(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)), wn),
                    _wn(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)), wn),
                    _wn(nn.Conv2d(ch, ch, (3, 9), (1, 2), padding=(1, 4)), wn),
                    _wn(nn.Conv2d(ch, ch, (3, 3), (1, 1), padding=(1, 1)), wn),
                ]
            )

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = _wn(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)), wn)

    def forward(self, spec: SpectrogramCache) -> DiscOutput:
        s = spec.stft(self.window, self.hop)  # [B, 1, bins, frames], frames-major memory
        b = s.shape[0]
        # [B, bins, frames, 2] -> [B, 2, frames, bins]: a view (channels-last strides).
        x = torch.view_as_real(s.reshape(b, s.shape[-2], s.shape[-1])).permute(0, 3, 2, 1)
        features = []
        outs = []
        for (lo, hi), convs in zip(self.bands, self.band_convs, strict=True):
            h = x[..., lo:hi]
            for conv in convs:
                h = _act(conv(h))
                features.append(h)
            outs.append(h)
        logits = self.post(torch.cat(outs, dim=-1))
        return DiscOutput(logits, features, f"mrd{self.window}")


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, cfg: MRDConfig, wn: bool) -> None:
        super().__init__()
        self.discs = nn.ModuleList(ResolutionDiscriminator(w, cfg, wn) for w in cfg.windows)

    def forward(self, audio: torch.Tensor, spec: SpectrogramCache) -> list[DiscOutput]:
        return [d(spec) for d in self.discs]


# ----------------------------------------------------------------------------- registry

DISCRIMINATORS: Registry = Registry("discriminator")


@DISCRIMINATORS.register("mpd")
def build_mpd(cfg: MPDConfig, sample_rate: int, wn: bool = True) -> nn.Module:
    return MultiPeriodDiscriminator(cfg, wn)


@DISCRIMINATORS.register("msd")
def build_msd(cfg: MSDConfig, sample_rate: int, wn: bool = True) -> nn.Module:
    return MultiScaleDiscriminator(cfg, wn)


@DISCRIMINATORS.register("mrd")
def build_mrd(cfg: MRDConfig, sample_rate: int, wn: bool = True) -> nn.Module:
    return MultiResolutionDiscriminator(cfg, wn)


class Discriminator(nn.Module):
    """All members of a `DiscriminatorConfig`; one `DiscOutput` per sub-discriminator."""

    def __init__(self, cfg: DiscriminatorConfig, sample_rate: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.members = nn.ModuleList(
            DISCRIMINATORS.build(m, sample_rate, cfg.weight_norm) for m in cfg.members
        )

    def preprocess(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale * (audio - shift), scale, shift): DC removed, peak at `cfg.peak` (DAC).

        scale and shift are [B, C, 1]; without normalisation they are 1 and 0.
        """
        if not self.cfg.normalize:
            one = audio.new_ones(audio.shape[0], audio.shape[1], 1)
            return audio, one, torch.zeros_like(one)
        shift = audio.mean(dim=-1, keepdim=True)
        centred = audio - shift
        scale = self.cfg.peak / (centred.abs().amax(dim=-1, keepdim=True) + 1e-9)
        return centred * scale, scale, shift

    def forward(
        self, audio: torch.Tensor, spec: SpectrogramCache | None = None
    ) -> list[DiscOutput]:
        """Score raw audio [B, 1, T].

        `spec`, when given, must be a `SpectrogramCache` of this same raw (unnormalised)
        audio, e.g. the one the generator's mel loss used (`.detach()` of it for a detached
        input); the MRD then derives its spectra from it instead of computing new STFTs.
        """
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(
                f"discriminator expects mono audio [B, 1, T], got {tuple(audio.shape)}; "
                "fold channels into the batch first"
            )
        if spec is not None and spec.shape != audio.shape:
            raise ValueError(
                f"spectrogram cache of shape {tuple(spec.shape)} does not describe audio "
                f"of shape {tuple(audio.shape)}"
            )
        x, scale, shift = self.preprocess(audio)
        if spec is None:
            norm_spec = SpectrogramCache(x)
        elif self.cfg.normalize:
            norm_spec = spec.affine(scale, shift, audio=x)
        else:
            norm_spec = spec
        outputs: list[DiscOutput] = []
        for member in self.members:
            outputs.extend(member(x, norm_spec))
        return outputs


def build_discriminator(cfg: DiscriminatorConfig, sample_rate: int) -> Discriminator:
    """The discriminator a recipe's `discriminator:` section describes."""
    return Discriminator(cfg, sample_rate)
