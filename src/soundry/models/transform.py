"""Audio-to-audio generators: degraded audio [B, C, T] in, restored audio [B, C, T] out.

Two conv stacks, both built from the codec's residual units (dilated convs, Snake, weight
norm), both non-causal:

- `plain`: `layers` blocks of residual units at one width, at the stack's input rate;
- `unet`: residual units then a strided conv per level of `strides` (width doubling), a
  bottleneck, then per level a transposed conv back up, the level's skip added, residual
  units (input lengths are padded to a multiple of the strides' product and cut back).

Where they run (`domain`) and what their output means (`output`):

- `domain: waveform`: over the samples, or over `pqmf_bands` PQMF bands (channels of each
  audio channel are batch items). `output: direct` is the waveform itself (tanh);
  `residual` is input + a correction whose last layer starts at zero (the model starts as
  the identity); `mask` multiplies the input sample by sample by mask_max * sigmoid(h).
- `domain: stft`: over the frames of the input's STFT, the log magnitudes of its bins as
  channels; the output is a mask on the complex STFT, mask_max * sigmoid(h) per bin and
  frame, the input's phase kept, then the inverse STFT (`output: mask` only).

With mask_max 2 (the default) a mask starts at 1 everywhere: every output mode starts at
or near the identity, which enhancement models are close to.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from soundry.config import Strict
from soundry.errors import SoundryError
from soundry.models.codec import ResidualUnit, zero_conv_biases
from soundry.models.export import EXPORT_KINDS, load_folded
from soundry.nn.activations import make_activation
from soundry.nn.conv import Conv1d, ConvTranspose1d, from_channels_last, to_channels_last
from soundry.nn.pqmf import PQMF, PQMFAnalysis, PQMFSynthesis


class TransformModelConfig(Strict):
    """The `model:` section of a transform recipe."""

    sample_rate: int = Field(16000, gt=0)
    channels: Literal[1, 2] = 1
    generator: Literal["plain", "unet"] = "unet"
    domain: Literal["waveform", "stft"] = "waveform"
    output: Literal["direct", "mask", "residual"] = "residual"
    mask_max: float = Field(2.0, gt=0)
    width: int = Field(32, ge=1)
    layers: int = Field(4, ge=1)  # plain: blocks of residual units
    strides: list[int] = Field(default_factory=lambda: [2, 4, 4])  # unet: one per level
    dilations: list[int] = Field(default_factory=lambda: [1, 3, 9])
    kernel_size: int = Field(7, ge=1)
    activation: Literal["snake", "elu", "leaky_relu"] = "snake"
    weight_norm: bool = True
    pqmf_bands: int = Field(0, ge=0)  # waveform domain; 0: full rate
    pqmf_taps: int = Field(62, ge=2)
    n_fft: int = Field(512, ge=16)  # stft domain
    hop_length: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TransformModelConfig:
        if self.domain == "stft" and self.output != "mask":
            raise ValueError("model.domain 'stft' takes output 'mask' (a mask on the input's "
                             "STFT); use domain 'waveform' for direct or residual outputs")
        if self.domain == "stft" and self.pqmf_bands:
            raise ValueError("model.pqmf_bands applies to the waveform domain; set it to 0")
        if self.generator == "unet" and (not self.strides or min(self.strides) < 1):
            raise ValueError("model.strides: the U-Net needs at least one stride >= 1")
        if self.hop_length > self.n_fft:
            raise ValueError("model.hop_length must not exceed model.n_fft")
        return self


def _units(width: int, cfg: TransformModelConfig) -> nn.ModuleList:
    return nn.ModuleList(ResidualUnit(width, d, cfg.kernel_size, cfg.activation, False,
                                      cfg.weight_norm) for d in cfg.dilations)


def _run(units: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for unit in units:
        x = unit(x)
    return x


class PlainStack(nn.Module):
    """[B, in_ch, L] -> [B, out_ch, L]: stem, `layers` x residual units, act, head."""

    def __init__(self, in_ch: int, out_ch: int, cfg: TransformModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.stem = Conv1d(in_ch, w, cfg.kernel_size, weight_norm=cfg.weight_norm)
        self.blocks = nn.ModuleList(_units(w, cfg) for _ in range(cfg.layers))
        self.act = make_activation(cfg.activation, w)
        self.head = Conv1d(w, out_ch, cfg.kernel_size, weight_norm=cfg.weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(to_channels_last(x))
        for block in self.blocks:
            h = _run(block, h)
        return from_channels_last(self.head(self.act(h)))


class UNetStack(nn.Module):
    """[B, in_ch, L] -> [B, out_ch, L]: down levels (width doubling), bottleneck, up levels
    with the matching down level's output added (skip connections)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: TransformModelConfig) -> None:
        super().__init__()
        w = cfg.width
        self.factor = 1
        for s in cfg.strides:
            self.factor *= s
        self.stem = Conv1d(in_ch, w, cfg.kernel_size, weight_norm=cfg.weight_norm)
        self.down_units, self.down, self.up, self.up_units = (nn.ModuleList() for _ in range(4))
        widths = []
        for s in cfg.strides:
            widths.append(w)
            self.down_units.append(_units(w, cfg))
            self.down.append(Conv1d(w, 2 * w, 2 * s, stride=s, weight_norm=cfg.weight_norm))
            w *= 2
        self.middle = _units(w, cfg)
        for s, skip_w in zip(reversed(cfg.strides), reversed(widths), strict=True):
            self.up.append(ConvTranspose1d(w, skip_w, 2 * s, s, weight_norm=cfg.weight_norm))
            self.up_units.append(_units(skip_w, cfg))
            w = skip_w
        self.act = make_activation(cfg.activation, w)
        self.head = Conv1d(w, out_ch, cfg.kernel_size, weight_norm=cfg.weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        x = F.pad(x, (0, -length % self.factor))
        h = self.stem(to_channels_last(x))
        skips = []
        for units, down in zip(self.down_units, self.down, strict=True):
            h = _run(units, h)
            skips.append(h)
            h = down(h)
        h = _run(self.middle, h)
        for up, units in zip(self.up, self.up_units, strict=True):
            skip = skips.pop()
            h = up(h)[..., : skip.shape[-1]] + skip
            h = _run(units, h)
        return from_channels_last(self.head(self.act(h)))[..., :length]


STACKS = {"plain": PlainStack, "unet": UNetStack}


class TransformModel(nn.Module):
    """The generator of `TransformModelConfig`: audio [B, C, T] -> audio [B, C, T]."""

    def __init__(self, cfg: TransformModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.channels
        self.analysis: PQMFAnalysis | None = None
        self.synthesis: PQMFSynthesis | None = None
        if cfg.domain == "stft":
            bins = cfg.n_fft // 2 + 1
            in_ch = out_ch = bins
            self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        else:
            in_ch = out_ch = cfg.pqmf_bands or 1
            if cfg.pqmf_bands:
                pqmf = PQMF(cfg.pqmf_bands, cfg.pqmf_taps)
                self.analysis, self.synthesis = PQMFAnalysis(pqmf), PQMFSynthesis(pqmf)
        self.net = STACKS[cfg.generator](in_ch, out_ch, cfg)
        if cfg.output != "direct":
            # residual: a zero correction; mask: mask_max * sigmoid(0) = mask_max / 2 (1 at
            # the default 2): the model starts at (or near) the identity
            with torch.no_grad():
                for name, p in self.net.head.named_parameters():
                    if name in ("weight", "weight_g"):  # weight norm: shrink the gain
                        p.mul_(1e-3)
        zero_conv_biases(self)  # as the codec does

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Degraded audio [B, C, T] -> restored audio [B, C, T] (same T)."""
        if audio.dim() != 3 or audio.shape[1] != self.channels:
            raise SoundryError(f"this model takes [batch, {self.channels}, time] audio, got "
                               f"{tuple(audio.shape)}")
        b, c, t = audio.shape
        x = audio.reshape(b * c, 1, t)
        y = self._stft_mask(x) if self.config.domain == "stft" else self._waveform(x)
        return y.reshape(b, c, t)

    def _waveform(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        h = x
        if self.analysis is not None:
            bands = self.config.pqmf_bands
            h = self.analysis(F.pad(x, (0, -t % bands)))
        h = self.net(h)
        if self.synthesis is not None:
            h = self.synthesis(h)
        h = h[..., :t]
        out = self.config.output
        if out == "direct":
            return torch.tanh(h)
        if out == "residual":
            return x + h
        return x * (self.config.mask_max * torch.sigmoid(h))

    def _stft_mask(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        t = x.shape[-1]
        spec = torch.stft(x[:, 0].float(), cfg.n_fft, cfg.hop_length, window=self.window,
                          return_complex=True)  # [N, bins, frames]
        features = torch.log(spec.abs() + 1e-5)
        mask = cfg.mask_max * torch.sigmoid(self.net(features))
        y = torch.istft(spec * mask, cfg.n_fft, cfg.hop_length, window=self.window, length=t)
        return y[:, None].to(x.dtype)


def build_transform(cfg: TransformModelConfig) -> TransformModel:
    """A randomly initialised generator for a validated `TransformModelConfig`."""
    return TransformModel(cfg)


# ----------------------------------------------------------------------------- long files


@torch.no_grad()
def enhance_chunked(model: TransformModel, audio: torch.Tensor, chunk_seconds: float = 10.0,
                    overlap_seconds: float = 0.25) -> torch.Tensor:
    """Run `model` over audio [C, T] in chunks of `chunk_seconds` that overlap by
    `overlap_seconds`, cross-faded with complementary raised-cosine ramps (they sum to 1):
    memory holds one chunk's activations; a file shorter than one chunk is one pass."""
    if audio.dim() != 2:
        raise SoundryError(f"audio must be [channels, time], got {tuple(audio.shape)}")
    if chunk_seconds <= 0 or overlap_seconds < 0:
        raise SoundryError("chunk_seconds must be positive and overlap_seconds not negative")
    sr = model.sample_rate
    t = audio.shape[-1]
    chunk = max(1, round(chunk_seconds * sr))
    overlap = min(round(overlap_seconds * sr), chunk // 2)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if t <= chunk:
            return model(audio[None].to(device))[0].float().cpu()
        out = torch.zeros(audio.shape, dtype=torch.float32)
        step = chunk - overlap
        ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, overlap + 2)[1:-1])
        for start in range(0, t, step):
            end = min(start + chunk, t)
            y = model(audio[None, :, start:end].to(device))[0].float().cpu()
            weight = torch.ones(end - start)
            # every chunk but the last is `chunk` long and the last is longer than the
            # overlap (else the one before would have reached the end), so ramps fit
            if overlap and start > 0:  # fade in over the overlap with the previous chunk
                weight[:overlap] = ramp
            if overlap and end < t:  # fade out into the next chunk
                weight[-overlap:] = 1 - ramp
            out[:, start:end] += y * weight
            if end == t:
                break
        return out
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- export


def transform_export_config(model: TransformModel) -> dict[str, Any]:
    """The config.json body (without kind/version) of a transform export."""
    from soundry.config import to_dict

    return {"model": to_dict(model.config), "sample_rate": model.sample_rate,
            "channels": model.channels}


@EXPORT_KINDS.register("transform")
def load_transform_export(config: dict[str, Any], state: dict[str, torch.Tensor]
                          ) -> torch.nn.Module:
    """Build the generator of `config["model"]`, load `state` (folded or not), eval mode."""
    from soundry.config import validate

    if "model" not in config:
        raise SoundryError("transform export config.json has no 'model' section")
    cfg = validate(TransformModelConfig, config["model"], source="export config.json: model")
    model = build_transform(cfg)
    load_folded(model, state, cfg.weight_norm)
    return model.eval()
