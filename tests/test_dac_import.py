"""Importing DAC weights (transformers DacModel and descript-audio-codec layouts)."""

from __future__ import annotations

import warnings

import pytest
import torch
from fixtures.numerics import assert_codes_agree
from torch import nn

from soundry.errors import SoundryError
from soundry.models.codec import CodecConfig, build_codec, codec_preset
from soundry.models.dac_import import (
    codec_from_hf_dac,
    config_from_dac_kwargs,
    config_from_hf_dac,
    load_dac_checkpoint,
    load_dac_state_dict,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_hf_dac() -> nn.Module:
    """A tiny randomly initialised DacModel with an odd stride and O(0.1) outputs."""
    cfg = transformers.DacConfig(
        encoder_hidden_size=8,
        downsampling_ratios=[2, 5, 2],
        decoder_hidden_size=48,
        n_codebooks=3,
        codebook_size=32,
        codebook_dim=4,
        sampling_rate=16000,
    )
    torch.manual_seed(0)
    model = transformers.DacModel(cfg).eval()
    with torch.no_grad():  # DacModel's own init gives ~1e-3 outputs; make every part matter
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
                m.reset_parameters()
            elif hasattr(m, "alpha"):
                m.alpha.uniform_(0.5, 2.0)
    return model


def hf_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = model.encode(x).audio_codes
        audio = model.decode(audio_codes=codes).audio_values
    return codes, audio


def assert_same(model: nn.Module, codec: nn.Module, x: torch.Tensor) -> None:
    """soundry's codec and the DacModel agree on codes and on decoding the same codes.

    Two implementations (and folded or weight-normed weights) run other kernels, so the
    codes agree up to float32 argmax ties and the audio, decoded from DacModel's codes by
    both, to 1e-4 on outputs of order 0.1-1 (see fixtures.numerics).
    """
    ref_codes, ref_audio = hf_reference(model, x)
    codec.eval()
    with torch.no_grad():
        codes = codec.encode(x)
        audio = codec.decode_codes(ref_codes)[:, 0]
    assert_codes_agree(codes, ref_codes)
    n = ref_audio.shape[-1]  # DAC v1.0 decodes odd strides a sample short per layer
    assert n < audio.shape[-1]
    assert ref_audio.abs().mean() > 0.05  # a real signal, not near-silence
    assert (audio[..., :n] - ref_audio).abs().max() < 1e-4
    assert torch.all(audio[..., n:] == 0)


def test_config_from_hf_dac() -> None:
    model = small_hf_dac()
    cfg = config_from_hf_dac(model.config)
    assert cfg.encoder_dim == 8 and cfg.strides == [2, 5, 2] and cfg.decoder_strides == [2, 5, 2]
    assert cfg.latent_dim == 64 and cfg.decoder_dim == 48
    assert cfg.quantizer.n_codebooks == 3 and cfg.quantizer.codebook_size == 32
    assert cfg.upsample_output_padding is False
    codec = codec_from_hf_dac(model).remove_weight_norm()  # DacModel holds folded weights
    assert sum(p.numel() for p in codec.parameters()) == sum(p.numel() for p in model.parameters())


def test_hf_dac_import_reproduces_encode_and_decode() -> None:
    model = small_hf_dac()
    codec = codec_from_hf_dac(model)
    torch.manual_seed(1)
    x = torch.randn(2, 1, 20 * 50) * 0.5  # 100 frames
    assert_same(model, codec, x)
    # fine-tunable: the imported codec is weight-normed and folds to the same outputs
    assert codec.encoder.stem.weight_norm
    codec.remove_weight_norm()
    assert_same(model, codec, x)


def test_hf_dac_with_weight_norm_parametrizations() -> None:
    model = small_hf_dac()
    model.apply_weight_norm()
    state = model.state_dict()
    assert any(".parametrizations.weight.original0" in k for k in state)
    codec = build_codec(config_from_hf_dac(model.config))
    load_dac_state_dict(codec, state)
    x = torch.randn(1, 1, 20 * 100) * 0.5  # 100 frames
    assert_same(model, codec, x)


# -- descript-audio-codec layout ------------------------------------------------------------


class _Snake(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, c, 1))


def _holder(**children: nn.Module) -> nn.Module:
    m = nn.Module()
    for name, child in children.items():
        setattr(m, name, child)
    return m


def _res(c: int) -> nn.Module:
    return _holder(
        block=nn.Sequential(_Snake(c), nn.Conv1d(c, c, 7), _Snake(c), nn.Conv1d(c, c, 1))
    )


def descript_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """The HF model's weights in descript-audio-codec's module tree (legacy weight norm)."""
    cfg = model.config
    d, strides = cfg.encoder_hidden_size, list(cfg.downsampling_ratios)
    enc: list[nn.Module] = [nn.Conv1d(1, d, 7)]
    for s in strides:
        enc.append(
            _holder(
                block=nn.Sequential(
                    _res(d), _res(d), _res(d), _Snake(d), nn.Conv1d(d, 2 * d, 2 * s)
                )
            )
        )
        d *= 2
    enc += [_Snake(d), nn.Conv1d(d, cfg.hidden_size, 3)]
    w = cfg.decoder_hidden_size
    dec: list[nn.Module] = [nn.Conv1d(cfg.hidden_size, w, 7)]
    for s in strides[::-1]:
        up = nn.ConvTranspose1d(w, w // 2, 2 * s, s)
        dec.append(
            _holder(block=nn.Sequential(_Snake(w), up, _res(w // 2), _res(w // 2), _res(w // 2)))
        )
        w //= 2
    dec += [_Snake(w), nn.Conv1d(w, 1, 7), nn.Tanh()]
    quant = nn.ModuleList(
        _holder(
            in_proj=nn.Conv1d(cfg.hidden_size, cfg.codebook_dim, 1),
            out_proj=nn.Conv1d(cfg.codebook_dim, cfg.hidden_size, 1),
            codebook=nn.Embedding(cfg.codebook_size, cfg.codebook_dim),
        )
        for _ in range(cfg.n_codebooks)
    )
    dac = _holder(
        encoder=_holder(block=nn.Sequential(*enc)),
        quantizer=_holder(quantizers=quant),
        decoder=_holder(model=nn.Sequential(*dec)),
    )
    # Both trees register their parameters in the same order within each part.
    with torch.no_grad():
        for ours, theirs in (
            (dac.encoder, model.encoder),
            (dac.decoder, model.decoder),
            (dac.quantizer, model.quantizer),
        ):
            pairs = list(zip(ours.parameters(), theirs.parameters(), strict=True))
            for a, b in pairs:
                assert a.shape == b.shape
                a.copy_(b)
    with warnings.catch_warnings():  # the legacy weight_norm is what DAC's checkpoints use
        warnings.simplefilter("ignore", FutureWarning)
        for m in dac.modules():
            if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
                torch.nn.utils.weight_norm(m)
    return dac.state_dict()


def test_descript_layout_import() -> None:
    model = small_hf_dac()
    state = descript_layout(model)
    assert "encoder.block.1.block.0.block.1.weight_g" in state
    assert "decoder.model.1.block.1.weight_v" in state
    codec = build_codec(config_from_hf_dac(model.config))
    load_dac_state_dict(codec, state)
    x = torch.randn(2, 1, 20 * 50) * 0.5  # 100 frames
    assert_same(model, codec, x)
    # weight-normed weights into a codec without weight norm are folded on the way in
    plain = build_codec(config_from_hf_dac(model.config).model_copy(update={"weight_norm": False}))
    load_dac_state_dict(plain, state)
    assert_same(model, plain, x)


def test_descript_checkpoint_file(tmp_path) -> None:
    model = small_hf_dac()
    cfg = model.config
    kwargs = {
        "encoder_dim": cfg.encoder_hidden_size,
        "encoder_rates": list(cfg.downsampling_ratios),
        "latent_dim": cfg.hidden_size,
        "decoder_dim": cfg.decoder_hidden_size,
        "decoder_rates": list(cfg.downsampling_ratios)[::-1],
        "n_codebooks": cfg.n_codebooks,
        "codebook_size": cfg.codebook_size,
        "codebook_dim": cfg.codebook_dim,
        "quantizer_dropout": False,
        "sample_rate": 16000,
    }
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": descript_layout(model), "metadata": {"kwargs": kwargs}}, path)
    codec = load_dac_checkpoint(path)
    assert_same(model, codec, torch.randn(1, 1, 20 * 100) * 0.5)


def test_dac_kwargs_give_the_preset_architecture() -> None:
    cfg = config_from_dac_kwargs({"sample_rate": 44100})  # DAC's defaults: the 44.1 kHz model
    preset = CodecConfig.model_validate(codec_preset("dac-44k"))
    for key in ("encoder_dim", "strides", "latent_dim", "decoder_dim", "sample_rate"):
        assert getattr(cfg, key) == getattr(preset, key)
    assert cfg.quantizer.n_codebooks == 9 and cfg.quantizer.codebook_dim == 8


def test_mismatched_weights_are_reported() -> None:
    model = small_hf_dac()
    other = build_codec(config_from_hf_dac(model.config).model_copy(update={"decoder_dim": 32}))
    with pytest.raises(SoundryError, match="shape"):
        load_dac_state_dict(other, model.state_dict())
    with pytest.raises(SoundryError, match="not a DAC state dict"):
        load_dac_state_dict(other, {"foo.weight": torch.zeros(1)})
    with pytest.raises(SoundryError, match="does not exist"):
        load_dac_checkpoint("/nonexistent/weights.pth")
