"""The codec generator: conv encoder -> residual quantizer -> conv decoder (DAC-class).

Architecture (descript-audio-codec's, every part configurable by the recipe's `model:`):

    encoder  [PQMF analysis] -> conv k7 (C_in -> encoder_dim)
             -> per stride s: 3 residual units (act, conv k7 dilation 1/3/9, act, conv k1, add)
                at the current width, then act + strided conv (kernel 2s) doubling the width
             -> act -> conv k3 to `latent_dim`
    quantize residual VQ (factorized, L2-normalised codes) or residual FSQ
    decoder  conv k7 (latent_dim -> decoder_dim)
             -> per stride s: act + upsampling (transposed conv kernel 2s, or nearest resize
                + conv) halving the width, then 3 residual units
             -> act -> conv k7 to C_out -> [PQMF synthesis] -> tanh

All convs are weight-normed when `weight_norm` (fold with `remove_weight_norm()` for
inference); padding is centred (DAC) or causal. Inside the encoder and decoder activations are
[B, C, 1, T] channels-last (time-major) tensors run through 2-D convs, much faster on CPU
than 1-D convs (see `soundry.nn.conv`); inputs and outputs are ordinary [B, C, T]. Stereo
audio is folded into the batch: the network sees [B * C, 1, T], and codes are
[B * C, levels, frames].

The `model:` section (`CodecConfig`) and the named presets (`codec_preset`: DAC's published
44.1 kHz and 16 kHz generators and a CPU-sized "tiny") are in `soundry.models.codec_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soundry.errors import SoundryError
from soundry.models.codec_config import (  # noqa: F401  (re-exported: the public API)
    BottleneckConfig,
    CodecConfig,
    FSQConfig,
    NoBottleneckConfig,
    QuantizerConfig,
    RVQConfig,
    VAEBottleneckConfig,
    codec_preset,
    preset_names,
)
from soundry.nn.activations import make_activation
from soundry.nn.bottleneck import (
    Bottleneck,
    BottleneckInfo,
    NoBottleneck,
    QuantizerBottleneck,
    VAEBottleneck,
)
from soundry.nn.conv import (
    Conv1d,
    ConvTranspose1d,
    ResizeUp,
    from_channels_last,
    input_span,
    prepare_for_inference,
    remove_weight_norm,
    to_channels_last,
)
from soundry.nn.keyed_random import fold_ids
from soundry.nn.pqmf import PQMF, PQMFAnalysis, PQMFSynthesis
from soundry.nn.quantize import FSQStage, ResidualQuantizer, VQStage
from soundry.registry import Registry

# ----------------------------------------------------------------------------- building blocks


class ResidualUnit(nn.Module):
    """x + conv_k1(act(conv_k(act(x)))) with a dilated conv; [B, C, T] -> [B, C, T]."""

    def __init__(
        self,
        channels: int,
        dilation: int,
        kernel_size: int,
        activation: str,
        causal: bool,
        weight_norm: bool,
    ) -> None:
        super().__init__()
        pad = "causal" if causal else "centred"
        self.act1 = make_activation(activation, channels)  # type: ignore[arg-type]
        self.conv1 = Conv1d(
            channels, channels, kernel_size, dilation=dilation, padding=pad, weight_norm=weight_norm
        )
        self.act2 = make_activation(activation, channels)  # type: ignore[arg-type]
        self.conv2 = Conv1d(channels, channels, 1, padding=pad, weight_norm=weight_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2.forward_add(self.act2(self.conv1(self.act1(x))), x)

    def span_layers(self) -> list[nn.Module]:
        return [self.act1, self.conv1, self.act2, self.conv2]


class EncoderBlock(nn.Module):
    """Residual units at `in_ch`, then act + strided conv: [B, in_ch, T] -> [B, out_ch, T / s]."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: CodecConfig) -> None:
        super().__init__()
        pad = "causal" if cfg.causal else "centred"
        self.res = nn.ModuleList(
            ResidualUnit(in_ch, d, cfg.kernel_size, cfg.activation, cfg.causal, cfg.weight_norm)
            for d in cfg.dilations
        )
        self.act = make_activation(cfg.activation, in_ch)
        self.down = Conv1d(
            in_ch, out_ch, 2 * stride, stride=stride, padding=pad, weight_norm=cfg.weight_norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.res:
            x = unit(x)
        return self.down(self.act(x))

    def span_layers(self) -> list[nn.Module]:
        return [*self.res, self.act, self.down]


class ResizeConv(nn.Module):
    """Nearest-neighbour upsampling by `stride`, then a conv (kernel 2s + 1)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, causal: bool, weight_norm: bool):
        super().__init__()
        self.resize = ResizeUp(stride)
        self.conv = Conv1d(
            in_ch,
            out_ch,
            2 * stride + 1,
            padding="causal" if causal else "centred",
            weight_norm=weight_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resize(x))

    def span_layers(self) -> list[nn.Module]:
        return [self.resize, self.conv]


class DecoderBlock(nn.Module):
    """act + upsampling to `out_ch`, then residual units ([B, in, L] -> [B, out, L*s])."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: CodecConfig) -> None:
        super().__init__()
        pad = "causal" if cfg.causal else "centred"
        self.act = make_activation(cfg.activation, in_ch)
        if cfg.upsample == "transposed":
            self.up: nn.Module = ConvTranspose1d(
                in_ch,
                out_ch,
                2 * stride,
                stride,
                padding=pad,
                weight_norm=cfg.weight_norm,
                output_padding=cfg.upsample_output_padding,
            )
        else:
            self.up = ResizeConv(in_ch, out_ch, stride, cfg.causal, cfg.weight_norm)
        self.res = nn.ModuleList(
            ResidualUnit(out_ch, d, cfg.kernel_size, cfg.activation, cfg.causal, cfg.weight_norm)
            for d in cfg.dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.act(x))
        for unit in self.res:
            x = unit(x)
        return x

    def span_layers(self) -> list[nn.Module]:
        return [self.act, self.up, *self.res]


class Encoder(nn.Module):
    """Waveform [B, 1, T] -> latent [B, latent_dim, T / hop]."""

    def __init__(self, cfg: CodecConfig, pqmf: PQMF | None, out_dim: int | None = None
                 ) -> None:
        super().__init__()
        pad = "causal" if cfg.causal else "centred"
        self.analysis = PQMFAnalysis(pqmf) if pqmf is not None else None
        in_ch = cfg.pqmf_bands or 1
        width = cfg.encoder_dim
        self.stem = Conv1d(in_ch, width, cfg.kernel_size, padding=pad, weight_norm=cfg.weight_norm)
        blocks = []
        for stride in cfg.strides:
            blocks.append(EncoderBlock(width, width * 2, stride, cfg))
            width *= 2
        self.blocks = nn.ModuleList(blocks)
        self.act = make_activation(cfg.activation, width)
        self.proj = Conv1d(
            width,
            out_dim or cfg.resolved_latent_dim,
            cfg.latent_kernel_size,
            padding=pad,
            weight_norm=cfg.weight_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.analysis is not None:
            x = self.analysis(x)
        x = self.stem(to_channels_last(x))
        for block in self.blocks:
            x = block(x)
        return from_channels_last(self.proj(self.act(x)))

    def span_layers(self) -> list[nn.Module]:
        head = [self.analysis] if self.analysis is not None else []
        return [*head, self.stem, *self.blocks, self.act, self.proj]


class Decoder(nn.Module):
    """Latent [B, latent_dim, F] -> waveform [B, 1, F * hop] (in [-1, 1] with tanh)."""

    def __init__(self, cfg: CodecConfig, pqmf: PQMF | None) -> None:
        super().__init__()
        pad = "causal" if cfg.causal else "centred"
        strides = cfg.decoder_strides or list(reversed(cfg.strides))
        width = cfg.decoder_dim
        self.stem = Conv1d(
            cfg.resolved_latent_dim,
            width,
            cfg.kernel_size,
            padding=pad,
            weight_norm=cfg.weight_norm,
        )
        blocks = []
        for stride in strides:
            blocks.append(DecoderBlock(width, width // 2, stride, cfg))
            width //= 2
        self.blocks = nn.ModuleList(blocks)
        self.act = make_activation(cfg.activation, width)
        self.proj = Conv1d(
            width, cfg.pqmf_bands or 1, cfg.kernel_size, padding=pad, weight_norm=cfg.weight_norm
        )
        self.synthesis = PQMFSynthesis(pqmf) if pqmf is not None else None
        self.output_tanh = cfg.output_tanh

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(to_channels_last(z))
        for block in self.blocks:
            x = block(x)
        x = from_channels_last(self.proj(self.act(x)))
        if self.synthesis is not None:
            x = self.synthesis(x)
        return torch.tanh(x) if self.output_tanh else x

    def span_layers(self) -> list[nn.Module]:
        tail = [self.synthesis] if self.synthesis is not None else []
        return [self.stem, *self.blocks, self.act, self.proj, *tail]


# ----------------------------------------------------------------------------- quantizers

BOTTLENECKS: Registry[Any] = Registry("bottleneck")
QUANTIZERS = BOTTLENECKS


@BOTTLENECKS.register("rvq")
def build_rvq(cfg: RVQConfig, dim: int, weight_norm: bool) -> QuantizerBottleneck:
    stages = [
        VQStage(
            dim, cfg.codebook_size, cfg.codebook_dim, weight_norm=weight_norm, lookup=cfg.lookup
        )
        for _ in range(cfg.n_codebooks)
    ]
    if cfg.level0 == "plain":  # a non-factorised level 0 (semantic codecs)
        stages[0] = VQStage(dim, cfg.codebook_size, dim, weight_norm=weight_norm,
                            lookup="euclidean", project=False)
    return QuantizerBottleneck(ResidualQuantizer(
        stages,
        dropout=cfg.dropout,
        dead_code_threshold=cfg.dead_code_threshold,
        restart_every=cfg.restart_every,
        restart_candidates=cfg.restart_candidates,
        init=cfg.init,
        bypass=cfg.bypass,
        bypass_steps=cfg.bypass_steps,
        split=cfg.split,
    ))


@BOTTLENECKS.register("fsq")
def build_fsq(cfg: FSQConfig, dim: int, weight_norm: bool) -> QuantizerBottleneck:
    stages = [FSQStage(dim, cfg.levels, weight_norm=weight_norm) for _ in range(cfg.n_codebooks)]
    return QuantizerBottleneck(ResidualQuantizer(
        stages, dropout=cfg.dropout, bypass=cfg.bypass, bypass_steps=cfg.bypass_steps,
        split=cfg.split,
    ))


@BOTTLENECKS.register("vae")
def build_vae(cfg: VAEBottleneckConfig, dim: int, weight_norm: bool) -> VAEBottleneck:
    return VAEBottleneck()


@BOTTLENECKS.register("none")
def build_none(cfg: NoBottleneckConfig, dim: int, weight_norm: bool) -> NoBottleneck:
    return NoBottleneck()


# ----------------------------------------------------------------------------- the codec


@dataclass
class CodecOutput:
    """What `Codec.forward` returns (N = B * C items, F frames, K levels, D latent dims).

    audio: reconstruction [B, C, T], same length as the input.
    codes: [N, K, F] long (all levels in training; the levels asked for in eval).
    latents: the quantized latent the decoder consumed [N, D, F]; `decode(latents)` gives
      `audio` (before cropping to T).
    pre_quantization: the encoder's output [N, D, F].
    projected: each level's projected latent before lookup, concatenated [N, K * d, F].
    commitment_loss, codebook_loss: unweighted scalars (0 for FSQ).
    levels: [N] long, the levels each item used (quantizer dropout in training mode).
    info: everything the bottleneck reported (its loss terms by name, per-level vectors).
    For a continuous bottleneck (vae, none) codes, projected and levels are None.
    """

    audio: torch.Tensor
    codes: torch.Tensor | None
    latents: torch.Tensor
    pre_quantization: torch.Tensor
    projected: torch.Tensor | None
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    levels: torch.Tensor | None
    info: BottleneckInfo


@dataclass(frozen=True)
class ReceptiveField:
    """Context a codec needs around a stretch of audio for exact (seamless) chunking.

    encoder_left / encoder_right: input samples before the first sample / after the last
    sample of a frame that the frame's codes depend on. decoder_left / decoder_right: frames
    before / after a frame whose codes its output samples depend on.
    """

    encoder_left: int
    encoder_right: int
    decoder_left: int
    decoder_right: int
    hop_length: int

    def encoder_context_frames(self) -> tuple[int, int]:
        """(left, right) encoder context in whole frames."""
        h = self.hop_length
        return -(-self.encoder_left // h), -(-self.encoder_right // h)


class Codec(nn.Module):
    """A neural audio codec: audio [B, C, T] <-> codes [B * C, K, F] at `frame_rate` Hz.

    T need not be a multiple of `hop_length`: audio is padded with zeros on the right and the
    reconstruction cropped back. Quantizer dropout happens only in training mode.
    """

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.channels
        self.hop_length = cfg.hop_length
        self.frame_rate = cfg.sample_rate / cfg.hop_length
        self.latent_dim = cfg.resolved_latent_dim
        pqmf = PQMF(cfg.pqmf_bands, cfg.pqmf_taps) if cfg.pqmf_bands else None
        # Built in this order (encoder, bottleneck, decoder): it fixes which random numbers
        # initialise which weights. A VAE's encoder gives mean and scale (2 x latent_dim).
        enc_dim = 2 * self.latent_dim if cfg.quantizer.type == "vae" else self.latent_dim
        self.encoder = Encoder(cfg, pqmf, enc_dim)
        self.bottleneck: Bottleneck = BOTTLENECKS.build(
            cfg.quantizer, self.latent_dim, cfg.weight_norm
        )
        if self.bottleneck.input_dim(self.latent_dim) != enc_dim:
            raise ValueError(f"bottleneck {cfg.quantizer.type} takes "
                             f"{self.bottleneck.input_dim(self.latent_dim)} channels")
        self.decoder = Decoder(cfg, pqmf)
        self._init_weights()

    def _init_weights(self) -> None:
        # descript-audio-codec calls trunc_normal_(std=0.02) on its conv weights, but on a
        # weight-normed conv that writes a recomputed tensor, so its trained models actually
        # start from torch's default conv init; only the zeroed biases take effect. Same here.
        zero_conv_biases(self)

    # -- properties ------------------------------------------------------------------------

    @property
    def discrete(self) -> bool:
        """True when the bottleneck quantizes (the codec has codes)."""
        return self.bottleneck.discrete

    @property
    def quantizer(self) -> ResidualQuantizer:
        """The residual quantizer of a discrete codec."""
        return self._discrete().quantizer

    def _discrete(self) -> QuantizerBottleneck:
        if not isinstance(self.bottleneck, QuantizerBottleneck):
            raise SoundryError(f"this model's bottleneck ({self.config.quantizer.type}) is "
                               "continuous: it has no codes (use forward or decode)")
        return self.bottleneck

    @property
    def n_codebooks(self) -> int:
        return self._discrete().n_codebooks

    @property
    def codebook_size(self) -> int:
        return self._discrete().codebook_size

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any,
                              **kwargs: Any) -> None:  # type: ignore[override]
        # Weights saved before the bottleneck interface keep the quantizer at "quantizer.*".
        old = prefix + "quantizer."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "bottleneck.quantizer." + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def bitrate_kbps(self, n_levels: int | None = None) -> float:
        """Bits per second / 1000 for all channels: frame_rate * levels * log2(size) * C."""
        n = self.n_codebooks if n_levels is None else int(n_levels)
        return self.frame_rate * n * math.log2(self.codebook_size) * self.channels / 1000.0

    # -- shapes ----------------------------------------------------------------------------

    def _fold(self, audio: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[B, C, T] -> ([B * C, 1, T_padded], T)."""
        if audio.dim() != 3:
            raise SoundryError(
                f"codec input must be [batch, channels, time], got {tuple(audio.shape)}"
            )
        b, c, t = audio.shape
        if c != self.channels:
            raise SoundryError(
                f"this codec takes {self.channels} channel(s), the audio has {c}; "
                "convert the audio (mix down or duplicate) first"
            )
        if t < 1:
            raise SoundryError("codec input is empty")
        x = audio.reshape(b * c, 1, t)
        pad = -t % self.hop_length
        if pad:
            x = F.pad(x, (0, pad))
        return x, t

    def _unfold(self, wave: torch.Tensor, frames: int) -> torch.Tensor:
        """Decoder output [N, 1, T'] -> [N / C, C, frames * hop] (zero-padded if short)."""
        n = wave.shape[0]
        if n % self.channels:
            raise SoundryError(
                f"{n} code sequences cannot be split into items of {self.channels} channels"
            )
        target = frames * self.hop_length
        if wave.shape[-1] < target:
            wave = F.pad(wave, (0, target - wave.shape[-1]))
        return wave[..., :target].reshape(n // self.channels, self.channels, target)

    # -- forward / encode / decode ---------------------------------------------------------

    def _encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Folded audio [N, 1, T] -> encoder output [N, D, F] in float32 for the quantizer."""
        dtype = _dtype_of(self.encoder)
        return self.encoder(x.to(dtype)).float()

    def _decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantized latents [N, D, F] -> waveform [N, 1, T'] in float32."""
        dtype = _dtype_of(self.decoder)
        return self.decoder(latents.to(dtype)).float()

    def forward(
        self, audio: torch.Tensor, n_levels: int | None = None, step: int | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> CodecOutput:
        """Encode, quantize and decode audio [B, C, T]; see `CodecOutput`.

        `step`: the optimizer step of a training pass (drives dead-code restarts; see
        `soundry.nn.quantize`). `item_ids` [B]: the items' global indices (the batch's
        `index`), which key quantizer dropout and bypass per item, so any split of a batch
        across processes draws the same (channel c of item i is item i * C + c).
        """
        x, length = self._fold(audio)
        z = self._encode_latent(x)
        latents, info = self.bottleneck.encode(z, return_info=True, n_levels=n_levels, step=step,
                                               item_ids=fold_ids(item_ids, audio.shape[1]))
        y = self._unfold(self._decode_latent(self.bottleneck.decode(latents)),
                         z.shape[-1])[..., :length]
        zero = z.new_zeros(())
        return CodecOutput(
            audio=y,
            codes=info.codes,
            latents=latents,
            pre_quantization=z,
            projected=info.projected,
            commitment_loss=info.losses.get("commitment", zero),
            codebook_loss=info.losses.get("codebook", zero),
            levels=info.levels,
            info=info,
        )

    def encode(self, audio: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """Audio [B, C, T] -> codes [B * C, n_levels, ceil(T / hop)] (long)."""
        x, _ = self._fold(audio)
        return self._discrete().encode_codes(self._encode_latent(x), n_levels)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B * C, K', F] (any prefix K' <= K of the levels) -> audio [B, C, F * hop]."""
        return self.decode(self._discrete().decode_codes(codes))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B * C, D, F] -> audio [B, C, F * hop]."""
        return self._unfold(self._decode_latent(latents), latents.shape[-1])

    # -- inference helpers -----------------------------------------------------------------

    def remove_weight_norm(self) -> Codec:
        """Fold weight norm into plain weights (same outputs, faster); returns self."""
        remove_weight_norm(self)
        return self

    def optimize_for_inference(self, precision: str = "fp32") -> Codec:
        """Eval mode and weight norm folded (same outputs); optionally bfloat16 compute.

        precision: "fp32"; "bf16" runs the decoder in bfloat16 (on CPUs with AMX/AVX512-BF16
        several times faster; about 37 dB SNR against fp32) while the encoder and quantizer
        stay in float32, so the codes are exactly the fp32 codes; "bf16-all" also runs the
        encoder in bfloat16 (fastest, but near-tie codes may differ from fp32). Converting to
        bfloat16 rounds the weights: build or load a fresh codec to go back. Returns self.
        """
        if precision not in ("fp32", "bf16", "bf16-all"):
            raise ValueError(f"precision must be fp32, bf16 or bf16-all, not '{precision}'")
        self.eval()
        prepare_for_inference(self)
        half = torch.bfloat16
        self.decoder.to(half if precision != "fp32" else torch.float32)
        self.encoder.to(half if precision == "bf16-all" else torch.float32)
        return self

    def receptive_field(self) -> ReceptiveField:
        """Exact context of the encoder (samples) and decoder (frames), from the layer spans."""
        hop = self.hop_length
        n = 10_000  # an interior frame, far from both ends
        lo, hi = input_span(self.encoder, n, n)
        enc_left = max(n * hop - lo, 0)
        enc_right = max(hi - ((n + 1) * hop - 1), 0)
        lo, hi = input_span(self.decoder, n * hop, (n + 1) * hop - 1)
        return ReceptiveField(enc_left, enc_right, max(n - lo, 0), max(hi - n, 0), hop)


def zero_conv_biases(module: nn.Module) -> None:
    """Zero the bias of every `Conv1d` in `module` (DAC's init that takes effect)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, Conv1d) and m.bias is not None:
                m.bias.zero_()


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def build_codec(cfg: CodecConfig) -> Codec:
    """A randomly initialised codec for a validated `CodecConfig`."""
    return Codec(cfg)


def codec_from_preset(name: str, **overrides: Any) -> Codec:
    """Build a preset's codec, with top-level `model:` values overridden."""
    from soundry.config import validate

    values = {**codec_preset(name), **overrides}
    return build_codec(validate(CodecConfig, values, source=f"codec preset '{name}'"))
