"""Import descript-audio-codec (DAC) weights into a soundry `Codec` of the same architecture.

Two source layouts are understood, each with weight norm stored either way
(`weight_g` / `weight_v`, `parametrizations.weight.original0/1`, or a plain folded `weight`):

- descript-audio-codec (`dac` package; `.pth` files with `state_dict` and
  `metadata.kwargs`): `encoder.block.N...`, `decoder.model.N...`,
  `quantizer.quantizers.N.{in_proj,out_proj,codebook}`;
- transformers' `DacModel` (`encoder.conv1`, `encoder.block.N.res_unit1...`,
  `decoder.block.N.conv_t1`, same quantizer names).

Both use DAC v1.0's upsampling without output padding, so the configs built here set
`upsample_output_padding: false`; the imported codec then reproduces the source model's
outputs (16 kHz: the source decodes 8 samples short of F * hop; soundry pads those with zeros).

The weights are converted to whatever the target codec holds: weight-normed pairs are
folded when the target has plain weights, and plain weights become (g = ||w||, v = w) when
the target is weight-normed (the same effective weight, ready for fine-tuning).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from soundry.config import validate
from soundry.errors import SoundryError
from soundry.models.codec import Codec, CodecConfig, build_codec
from soundry.models.codec_config import codec_preset
from soundry.nn.conv import norm_except_dim0

# ----------------------------------------------------------------------------- configs


def _dac_values(
    sample_rate: int,
    encoder_dim: int,
    strides: list[int],
    latent_dim: int | None,
    decoder_dim: int,
    decoder_strides: list[int],
    n_codebooks: int,
    codebook_size: int,
    codebook_dim: int,
    dropout: float,
) -> dict[str, Any]:
    # Everything a DAC checkpoint does not vary (kernels, dilations, snake, weight norm,
    # padding, output tanh, the RVQ's family) comes from the "dac-44k" preset.
    values = codec_preset("dac-44k")
    values.update(
        sample_rate=int(sample_rate),
        encoder_dim=int(encoder_dim),
        strides=[int(s) for s in strides],
        latent_dim=int(latent_dim) if latent_dim else None,
        decoder_dim=int(decoder_dim),
        decoder_strides=[int(s) for s in decoder_strides],
        # descript-audio-codec v1.0 / transformers: odd-stride transposed convs give one
        # sample fewer per layer than L * stride
        upsample_output_padding=False,
    )
    values["quantizer"].update(
        n_codebooks=int(n_codebooks),
        codebook_size=int(codebook_size),
        codebook_dim=int(codebook_dim),
        dropout=float(dropout),
    )
    return values


def config_from_hf_dac(hf_config: Any) -> CodecConfig:
    """The soundry `CodecConfig` of a transformers `DacConfig` (object or dict)."""
    get = (
        hf_config.get if isinstance(hf_config, dict) else lambda k, d=None: getattr(hf_config, k, d)
    )
    strides = list(get("downsampling_ratios", [2, 4, 8, 8]))
    encoder_dim = int(get("encoder_hidden_size", 64))
    values = _dac_values(
        sample_rate=get("sampling_rate", 16000),
        encoder_dim=encoder_dim,
        strides=strides,
        latent_dim=get("hidden_size", None) or encoder_dim * 2 ** len(strides),
        decoder_dim=get("decoder_hidden_size", 1536),
        decoder_strides=list(get("upsampling_ratios", None) or strides[::-1]),
        n_codebooks=get("n_codebooks", 9),
        codebook_size=get("codebook_size", 1024),
        codebook_dim=get("codebook_dim", 8),
        dropout=float(get("quantizer_dropout", 0.0) or 0.0),
    )
    return validate(CodecConfig, values, source="transformers DacConfig")


def config_from_dac_kwargs(kwargs: dict[str, Any]) -> CodecConfig:
    """The `CodecConfig` of descript-audio-codec's `DAC(**kwargs)` (its checkpoint metadata)."""
    strides = list(kwargs.get("encoder_rates", [2, 4, 8, 8]))
    encoder_dim = int(kwargs.get("encoder_dim", 64))
    quantizer_dropout = kwargs.get("quantizer_dropout", 0.0)
    values = _dac_values(
        sample_rate=kwargs.get("sample_rate", 44100),
        encoder_dim=encoder_dim,
        strides=strides,
        latent_dim=kwargs.get("latent_dim") or encoder_dim * 2 ** len(strides),
        decoder_dim=kwargs.get("decoder_dim", 1536),
        decoder_strides=list(kwargs.get("decoder_rates", strides[::-1])),
        n_codebooks=kwargs.get("n_codebooks", 9),
        codebook_size=kwargs.get("codebook_size", 1024),
        codebook_dim=kwargs.get("codebook_dim", 8),
        dropout=float(quantizer_dropout)
        if not isinstance(quantizer_dropout, bool)
        else (1.0 if quantizer_dropout else 0.0),
    )
    return validate(CodecConfig, values, source="descript-audio-codec kwargs")


# ----------------------------------------------------------------------------- key maps

_RES = ("act1", "conv1", "act2", "conv2")
_HF_RES = ("snake1", "conv1", "snake2", "conv2")


def _module_map(cfg: CodecConfig, layout: str) -> dict[str, str]:
    """Source module path -> soundry module path for one layout ('descript' | 'hf')."""
    n_enc = len(cfg.strides)
    n_dec = len(cfg.decoder_strides or cfg.strides)
    n_res = len(cfg.dilations)
    m: dict[str, str] = {}
    if layout == "descript":
        m["encoder.block.0"] = "encoder.stem"
        for i in range(n_enc):
            src = f"encoder.block.{i + 1}.block"
            for j in range(n_res):
                for k, name in enumerate(_RES):
                    m[f"{src}.{j}.block.{k}"] = f"encoder.blocks.{i}.res.{j}.{name}"
            m[f"{src}.{n_res}"] = f"encoder.blocks.{i}.act"
            m[f"{src}.{n_res + 1}"] = f"encoder.blocks.{i}.down"
        m[f"encoder.block.{n_enc + 1}"] = "encoder.act"
        m[f"encoder.block.{n_enc + 2}"] = "encoder.proj"
        m["decoder.model.0"] = "decoder.stem"
        for i in range(n_dec):
            src = f"decoder.model.{i + 1}.block"
            m[f"{src}.0"] = f"decoder.blocks.{i}.act"
            m[f"{src}.1"] = f"decoder.blocks.{i}.up"
            for j in range(n_res):
                for k, name in enumerate(_RES):
                    m[f"{src}.{j + 2}.block.{k}"] = f"decoder.blocks.{i}.res.{j}.{name}"
        m[f"decoder.model.{n_dec + 1}"] = "decoder.act"
        m[f"decoder.model.{n_dec + 2}"] = "decoder.proj"
    elif layout == "hf":
        m["encoder.conv1"] = "encoder.stem"
        for i in range(n_enc):
            for j in range(n_res):
                for src_name, name in zip(_HF_RES, _RES, strict=True):
                    m[f"encoder.block.{i}.res_unit{j + 1}.{src_name}"] = (
                        f"encoder.blocks.{i}.res.{j}.{name}"
                    )
            m[f"encoder.block.{i}.snake1"] = f"encoder.blocks.{i}.act"
            m[f"encoder.block.{i}.conv1"] = f"encoder.blocks.{i}.down"
        m["encoder.snake1"] = "encoder.act"
        m["encoder.conv2"] = "encoder.proj"
        m["decoder.conv1"] = "decoder.stem"
        for i in range(n_dec):
            m[f"decoder.block.{i}.snake1"] = f"decoder.blocks.{i}.act"
            m[f"decoder.block.{i}.conv_t1"] = f"decoder.blocks.{i}.up"
            for j in range(n_res):
                for src_name, name in zip(_HF_RES, _RES, strict=True):
                    m[f"decoder.block.{i}.res_unit{j + 1}.{src_name}"] = (
                        f"decoder.blocks.{i}.res.{j}.{name}"
                    )
        m["decoder.snake1"] = "decoder.act"
        m["decoder.conv2"] = "decoder.proj"
    else:
        raise ValueError(f"unknown DAC layout '{layout}'")
    for k in range(cfg.quantizer.n_codebooks):
        for part in ("in_proj", "out_proj", "codebook"):
            m[f"quantizer.quantizers.{k}.{part}"] = f"bottleneck.quantizer.stages.{k}.{part}"
    return m


def detect_layout(state: dict[str, Any]) -> str:
    """'descript' or 'hf' from the key names of a DAC state dict."""
    if any(k.startswith("encoder.conv1.") for k in state):
        return "hf"
    if any(k.startswith("encoder.block.0.") for k in state) and any(
        k.startswith("decoder.model.") for k in state
    ):
        return "descript"
    raise SoundryError(
        "not a DAC state dict: expected descript-audio-codec keys (encoder.block.0...) or "
        "transformers DacModel keys (encoder.conv1...)"
    )


_PARAM_RE = re.compile(
    r"^(?P<module>.+?)\.(?:parametrizations\.weight\.original(?P<idx>[01])|(?P<name>[^.]+))$"
)


def _split_key(key: str) -> tuple[str, str]:
    """'a.b.weight_g' -> ('a.b', 'weight_g'); parametrizations original0/1 -> weight_g/v."""
    match = _PARAM_RE.match(key)
    if match is None:
        raise SoundryError(f"unexpected DAC key '{key}'")
    if match["idx"] is not None:
        return match["module"], "weight_g" if match["idx"] == "0" else "weight_v"
    return match["module"], match["name"]


def convert_dac_state_dict(
    state: dict[str, torch.Tensor], cfg: CodecConfig, layout: str | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Group a DAC state dict by soundry module: {soundry module path: {param: tensor}}.

    Param names are kept as stored (weight, weight_g, weight_v, bias, alpha); unknown or
    missing modules are errors that name them.
    """
    layout = layout or detect_layout(state)
    table = _module_map(cfg, layout)
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        module, param = _split_key(key)
        if module not in table:
            unknown.append(key)
            continue
        grouped.setdefault(table[module], {})[param] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise SoundryError(
            f"{len(unknown)} DAC weight(s) do not fit the {layout} layout of this "
            f"architecture: {shown}"
        )
    missing = sorted(set(table.values()) - set(grouped))
    # Snake alphas and convs all carry parameters, so every mapped module must appear.
    if missing:
        raise SoundryError(
            f"the DAC weights lack {len(missing)} module(s) this architecture needs: "
            + ", ".join(missing[:5])
        )
    return grouped


def load_dac_state_dict(
    codec: Codec, state: dict[str, torch.Tensor], layout: str | None = None
) -> Codec:
    """Load a DAC state dict (either layout, any weight-norm storage) into `codec` in place."""
    grouped = convert_dac_state_dict(state, codec.config, layout)
    target = codec.state_dict()
    out: dict[str, torch.Tensor] = {}
    for module, params in grouped.items():
        params = dict(params)
        wants_wn = f"{module}.weight_g" in target
        has_wn = "weight_g" in params
        if wants_wn and not has_wn and "weight" in params:
            w = params.pop("weight")
            params["weight_g"] = norm_except_dim0(w)
            params["weight_v"] = w
        elif has_wn and not wants_wn:
            g, v = params.pop("weight_g"), params.pop("weight_v")
            params["weight"] = v * (g / norm_except_dim0(v))
        for name, value in params.items():
            key = f"{module}.{name}"
            if key not in target:
                raise SoundryError(f"DAC weight for '{key}' has no place in this codec")
            if tuple(target[key].shape) != tuple(value.shape):
                raise SoundryError(
                    f"DAC weight '{key}' has shape {tuple(value.shape)}, this codec expects "
                    f"{tuple(target[key].shape)}: the architectures differ"
                )
            out[key] = value.detach().to(target[key].dtype)
    # Buffers (code usage counters, step counter) keep their fresh values.
    missing = [k for k in target if k not in out and not _is_buffer(codec, k)]
    if missing:
        raise SoundryError(f"DAC weights do not cover: {', '.join(missing[:5])}")
    codec.load_state_dict(out, strict=False)
    return codec


def _is_buffer(module: torch.nn.Module, key: str) -> bool:
    return key in dict(module.named_buffers())


# ----------------------------------------------------------------------------- entry points


def codec_from_hf_dac(model: Any) -> Codec:
    """A soundry codec with the weights of a transformers `DacModel` instance."""
    codec = build_codec(config_from_hf_dac(model.config))
    return load_dac_state_dict(codec, model.state_dict(), layout="hf")


def load_dac_checkpoint(path: str | Path) -> Codec:
    """A soundry codec from a local DAC checkpoint; nothing is downloaded.

    `path` is a descript-audio-codec `.pth` (its `metadata.kwargs` give the architecture) or
    a transformers DacModel directory (`config.json` + `model.safetensors`).
    """
    path = Path(path)
    if path.is_dir():
        config_file, weights = path / "config.json", path / "model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise SoundryError(
                f"{path} needs config.json and model.safetensors (a DacModel export)"
            )
        from safetensors.torch import load_file

        cfg = config_from_hf_dac(json.loads(config_file.read_text()))
        return load_dac_state_dict(build_codec(cfg), load_file(str(weights)), layout="hf")
    if not path.is_file():
        raise SoundryError(f"DAC checkpoint '{path}' does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpicklable or foreign file: one clear message
        raise SoundryError(f"cannot read {path} as a DAC checkpoint: {exc}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise SoundryError(f"{path} is not a descript-audio-codec checkpoint (no 'state_dict')")
    kwargs = (blob.get("metadata") or {}).get("kwargs") or {}
    codec = build_codec(config_from_dac_kwargs(kwargs))
    return load_dac_state_dict(codec, blob["state_dict"], layout="descript")
