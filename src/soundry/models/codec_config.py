"""The `model:` section of a codec recipe, its bottleneck choices and the named presets.

The presets are the one written-down source of each architecture: DAC's published 44.1 kHz
and 16 kHz generators ("dac-44k", "dac-16k", 76.7M and 74.2M parameters) and a CPU-sized
"tiny". Recipes name one with `model: {preset: dac-44k, ...}` (further keys override it) and
the DAC importer starts from "dac-44k", so none of them repeats the architecture.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from soundry.config import Strict
from soundry.errors import ConfigError

# ----------------------------------------------------------------------------- config


class RVQConfig(Strict):
    """Residual VQ with factorized, L2-normalised codes (DAC).

    dropout: fraction of the items of a training batch that use a random number of levels
    (DAC: 0.5; 1.0 for its base models). Dead-code restart is off when
    `dead_code_threshold` is 0: otherwise every `restart_every` training steps, codes chosen
    fewer than that many times since the last restart are re-initialised from the batch's
    latents (each rank offers `restart_candidates`).
    """

    type: Literal["rvq"] = "rvq"
    n_codebooks: int = Field(6, ge=1)
    codebook_size: int = Field(256, ge=2)
    codebook_dim: int = Field(8, ge=1)
    dropout: float = Field(0.5, ge=0.0, le=1.0)
    dead_code_threshold: float = Field(0.0, ge=0.0)
    restart_every: int = Field(100, ge=1)
    restart_candidates: int = Field(256, ge=1)
    # "data": the first training batch's latents initialise every codebook (see
    # soundry.nn.quantize); "random": N(0, 1) codes (DAC).
    init: Literal["random", "data"] = "random"
    # "cosine": nearest code by cosine similarity of L2-normalised vectors (DAC);
    # "euclidean": nearest code by distance (EnCodec, SoundStream).
    lookup: Literal["cosine", "euclidean"] = "cosine"
    # Fraction of training items whose latent reaches the decoder unquantized (Mimi: 0.5);
    # keeps the encoder's latents informative while the codebooks are still poor.
    bypass: float = Field(0.0, ge=0.0, le=1.0)
    # > 0: the bypass fraction decays linearly to 0 at this training step, so the decoder
    # ends its training on quantized latents only (what it decodes at inference).
    bypass_steps: int = Field(0, ge=0)
    # Semantic codecs. "plain": level 0 looks up in the full latent space (codebook_dim =
    # latent dim, no projections, euclidean); "factorised": like every other level (DAC).
    level0: Literal["factorised", "plain"] = "factorised"
    # Mimi's split quantizer: level 0 and levels 1.. both quantize the encoder's latent
    split: bool = False


class FSQConfig(Strict):
    """Residual finite scalar quantization: `n_codebooks` stages with values per dim `levels`."""

    type: Literal["fsq"] = "fsq"
    levels: list[int] = Field(default_factory=lambda: [8, 5, 5, 5], min_length=1)
    n_codebooks: int = Field(1, ge=1)
    dropout: float = Field(0.0, ge=0.0, le=1.0)
    bypass: float = Field(0.0, ge=0.0, le=1.0)  # as for RVQ
    bypass_steps: int = Field(0, ge=0)  # as for RVQ
    split: bool = False  # as for RVQ

    @model_validator(mode="after")
    def _check(self) -> FSQConfig:
        if any(n < 2 for n in self.levels):
            raise ValueError(f"every FSQ level must be >= 2, got {self.levels}")
        return self


class VAEBottleneckConfig(Strict):
    """A diagonal-Gaussian (VAE) bottleneck: continuous latents, a `kl` loss term, no codes."""

    type: Literal["vae"] = "vae"


class NoBottleneckConfig(Strict):
    """No bottleneck: the encoder's output is the decoder's input (a plain autoencoder)."""

    type: Literal["none"] = "none"


# The `model.quantizer:` section: a quantizer (discrete codes) or a continuous bottleneck.
BottleneckConfig = Annotated[
    RVQConfig | FSQConfig | VAEBottleneckConfig | NoBottleneckConfig, Field(discriminator="type")
]
QuantizerConfig = BottleneckConfig


class CodecConfig(Strict):
    """The `model:` section of a codec recipe. Defaults: the "tiny" preset (CPU minutes)."""

    sample_rate: int = Field(16000, gt=0)
    channels: Literal[1, 2] = 1
    encoder_dim: int = Field(16, ge=1)
    strides: list[int] = Field(default_factory=lambda: [2, 4, 5, 8], min_length=1)
    latent_dim: int | None = Field(64, ge=1)  # None: encoder_dim * 2 ** len(strides) (DAC)
    decoder_dim: int = Field(256, ge=1)
    decoder_strides: list[int] | None = None  # None: the encoder strides reversed
    kernel_size: int = Field(7, ge=1)  # stems, residual units and the output conv
    latent_kernel_size: int = Field(3, ge=1)  # the encoder's last conv
    dilations: list[int] = Field(default_factory=lambda: [1, 3, 9], min_length=1)
    activation: Literal["snake", "elu"] = "snake"
    weight_norm: bool = True
    causal: bool = False
    upsample: Literal["transposed", "resize"] = "transposed"
    # Odd-stride transposed convs yield exactly L * stride samples; False reproduces
    # descript-audio-codec v1.0 / transformers (one sample short per odd-stride layer).
    upsample_output_padding: bool = True
    pqmf_bands: int = Field(0, ge=0)  # 0: no PQMF; else a power of 2
    pqmf_taps: int | None = Field(None, ge=3)
    output_tanh: bool = True
    # the bottleneck between encoder and decoder (the key keeps its name from the discrete
    # codecs, which are most of them): rvq | fsq | vae | none
    quantizer: BottleneckConfig = Field(
        default_factory=lambda: RVQConfig(dead_code_threshold=1.0, init="data")  # "tiny"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        """`preset: NAME` starts from a named preset; the other keys given override it (a
        `quantizer:` of the preset's type is merged into the preset's, another replaces it)."""
        if not isinstance(data, dict) or "preset" not in data:
            return data
        data = dict(data)
        name = data.pop("preset")
        try:
            values = codec_preset(str(name))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        for key, value in data.items():
            base_q = values["quantizer"]
            if key == "quantizer" and isinstance(value, dict) and \
                    value.get("type", base_q["type"]) == base_q["type"]:
                values["quantizer"] = {**base_q, **value}
            else:
                values[key] = value
        return values

    @model_validator(mode="after")
    def _check(self) -> CodecConfig:
        if any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be >= 1, got {self.strides}")
        dec = self.decoder_strides
        if dec is not None and math.prod(dec) != math.prod(self.strides):
            raise ValueError(
                f"decoder_strides {dec} must multiply to the encoder's hop "
                f"{math.prod(self.strides)} (strides {self.strides})"
            )
        if self.pqmf_bands and (self.pqmf_bands < 2 or self.pqmf_bands & (self.pqmf_bands - 1)):
            raise ValueError(f"pqmf_bands must be 0 or a power of 2 >= 2, got {self.pqmf_bands}")
        if self.pqmf_bands and self.causal:
            raise ValueError("pqmf_bands needs causal: false (the PQMF filters look ahead)")
        if self.decoder_dim // 2 ** len(self.decoder_strides or self.strides) < 1:
            raise ValueError(
                f"decoder_dim {self.decoder_dim} is too small to halve "
                f"{len(self.decoder_strides or self.strides)} times"
            )
        return self

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides) * max(self.pqmf_bands, 1)

    @property
    def resolved_latent_dim(self) -> int:
        return self.latent_dim or self.encoder_dim * 2 ** len(self.strides)


# ----------------------------------------------------------------------------- presets

_PRESETS: dict[str, dict[str, Any]] = {
    # descript-audio-codec 44.1 kHz, 8 kbps (9 x 10 bits at 86.1 Hz = 7.75 kbps)
    "dac-44k": {
        "sample_rate": 44100,
        "channels": 1,
        "encoder_dim": 64,
        "strides": [2, 4, 8, 8],
        "latent_dim": 1024,
        "decoder_dim": 1536,
        "kernel_size": 7,
        "latent_kernel_size": 3,
        "dilations": [1, 3, 9],
        "activation": "snake",
        "weight_norm": True,
        "causal": False,
        "upsample": "transposed",
        "upsample_output_padding": True,
        "pqmf_bands": 0,
        "output_tanh": True,
        "quantizer": {
            "type": "rvq",
            "n_codebooks": 9,
            "codebook_size": 1024,
            "codebook_dim": 8,
            "dropout": 0.5,
            "dead_code_threshold": 0.0,
        },
    },
    # CPU minutes: 16 kHz, 50 Hz frames, 6 x 8 bits = 2.4 kbps, about 2.5M parameters
    "tiny": {
        "sample_rate": 16000,
        "channels": 1,
        "encoder_dim": 16,
        "strides": [2, 4, 5, 8],
        "latent_dim": 64,
        "decoder_dim": 256,
        "kernel_size": 7,
        "latent_kernel_size": 3,
        "dilations": [1, 3, 9],
        "activation": "snake",
        "weight_norm": True,
        "causal": False,
        "upsample": "transposed",
        "upsample_output_padding": True,
        "pqmf_bands": 0,
        "output_tanh": True,
        "quantizer": {
            "type": "rvq",
            "n_codebooks": 6,
            "codebook_size": 256,
            "codebook_dim": 8,
            "dropout": 0.5,
            "dead_code_threshold": 1.0,
            "restart_every": 100,
            "restart_candidates": 256,
            "init": "data",
        },
    },
}

# descript-audio-codec 16 kHz, 6 kbps (12 x 10 bits at 50 Hz): the 44.1 kHz architecture
# with strides [2, 4, 5, 8] and 12 codebooks.
_PRESETS["dac-16k"] = {
    **_PRESETS["dac-44k"],
    "sample_rate": 16000,
    "strides": [2, 4, 5, 8],
    "quantizer": {**_PRESETS["dac-44k"]["quantizer"], "n_codebooks": 12},
}


def codec_preset(name: str) -> dict[str, Any]:
    """The `model:` values (a fresh dict) of a named preset: dac-44k, dac-16k or tiny."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown codec preset '{name}' (valid: {', '.join(sorted(_PRESETS))})")
    return copy.deepcopy(_PRESETS[name])


def preset_names() -> list[str]:
    return sorted(_PRESETS)
