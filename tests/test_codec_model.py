"""The codec generator: shapes, bitrate, stereo folding, causality, folding, presets, configs."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures.numerics import assert_close, assert_codes_agree

from soundry.config import validate
from soundry.errors import ConfigError, SoundryError
from soundry.models.codec import (
    Codec,
    CodecConfig,
    build_codec,
    codec_from_preset,
    codec_preset,
    preset_names,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids OpenMP hand-off costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**overrides) -> Codec:
    """A very small codec (hop 40) for fast tests."""
    values = {
        "encoder_dim": 4,
        "strides": [2, 4, 5],
        "latent_dim": 16,
        "decoder_dim": 32,
        "quantizer": {"type": "rvq", "n_codebooks": 4, "codebook_size": 16, "codebook_dim": 4},
        **overrides,
    }
    torch.manual_seed(0)
    codec = build_codec(validate(CodecConfig, values))
    with torch.no_grad():  # non-trivial Snake frequencies, so every path matters
        for name, p in codec.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
    return codec


def test_shapes_and_bitrate_arithmetic() -> None:
    codec = small().eval()
    assert codec.hop_length == 40 and codec.frame_rate == 16000 / 40
    assert (codec.n_codebooks, codec.codebook_size) == (4, 16)
    # bits/s = frames/s * levels * log2(codebook size)
    assert codec.bitrate_kbps() == pytest.approx(400 * 4 * 4 / 1000)
    assert codec.bitrate_kbps(2) == pytest.approx(400 * 2 * 4 / 1000)
    x = torch.randn(3, 1, 400) * 0.3
    out = codec(x)
    assert out.audio.shape == x.shape
    assert out.codes.shape == (3, 4, 10) and out.codes.dtype == torch.long
    assert out.latents.shape == (3, 16, 10) and out.pre_quantization.shape == (3, 16, 10)
    assert out.projected.shape == (3, 4 * 4, 10)
    assert out.commitment_loss.dim() == 0 and out.codebook_loss.dim() == 0
    with torch.no_grad():
        codes = codec.encode(x)
        assert torch.equal(codes, out.codes)  # the same stage calls on the same latents
        assert codec.encode(x, n_levels=2).shape == (3, 2, 10)
        y = codec.decode_codes(codes)
        assert y.shape == (3, 1, 400)
        # decode_codes sums the levels' outputs in another order than forward: float32
        # rounding through the decoder (see fixtures.numerics), not bit equality
        assert_close(y, out.audio)
        assert_close(codec.decode(out.latents), out.audio)
        coarse = codec.decode_codes(codes[:, :1])
        assert coarse.shape == y.shape and not torch.allclose(coarse, y)


def test_preset_bitrates_match_dac() -> None:
    for name, kbps, hop in (("dac-44k", 7.75, 512), ("dac-16k", 6.0, 320)):
        cfg = validate(CodecConfig, codec_preset(name))
        q = cfg.quantizer
        assert cfg.hop_length == hop
        bitrate = cfg.sample_rate / hop * q.n_codebooks * math.log2(q.codebook_size) / 1000
        assert bitrate == pytest.approx(kbps, abs=0.01)


def test_lengths_that_are_not_hop_multiples_are_padded_and_cropped() -> None:
    codec = small().eval()
    x = torch.randn(2, 1, 413) * 0.3
    with torch.no_grad():
        out = codec(x)
        assert out.audio.shape == x.shape
        assert out.codes.shape[-1] == math.ceil(413 / 40)
        padded = torch.nn.functional.pad(x, (0, 440 - 413))
        assert torch.allclose(codec(padded).audio[..., :413], out.audio, atol=1e-6)


def test_stereo_is_folded_into_the_batch() -> None:
    stereo = small(channels=2).eval()
    mono = small(channels=1).eval()
    mono.load_state_dict(stereo.state_dict())
    x = torch.randn(2, 2, 2000) * 0.3
    with torch.no_grad():
        out = stereo(x)
        assert out.audio.shape == (2, 2, 2000) and out.codes.shape == (4, 4, 50)
        # item b * C + c is channel c of item b; a batch of 4 and a batch of 1 may run other
        # conv kernels, so the codes agree up to float32 ties (see fixtures.numerics)
        mono_codes = torch.cat([mono.encode(x[b : b + 1, c : c + 1]) for b in range(2)
                                for c in range(2)])
        assert_codes_agree(out.codes, mono_codes)
        stereo_audio = stereo.decode_codes(mono_codes)
        assert stereo_audio.shape == (2, 2, 2000)
        for b in range(2):
            for c in range(2):
                i = b * 2 + c
                assert_close(stereo_audio[b, c], mono.decode_codes(mono_codes[i : i + 1])[0, 0])
    assert stereo.bitrate_kbps() == pytest.approx(2 * mono.bitrate_kbps())
    with pytest.raises(SoundryError, match="channel"):
        stereo(torch.randn(1, 1, 200))


def test_quantizer_dropout_only_in_training_mode() -> None:
    codec = small(quantizer={"type": "rvq", "n_codebooks": 4, "codebook_size": 16, "dropout": 1.0})
    x = torch.randn(16, 1, 120) * 0.3
    codec.train()
    levels = codec(x).levels
    assert levels.shape == (16,) and len(set(levels.tolist())) > 1
    codec.eval()
    with torch.no_grad():
        assert codec(x).levels.tolist() == [4] * 16


def test_gradients_reach_the_encoder_through_the_quantizer() -> None:
    codec = small().train()
    out = codec(torch.randn(2, 1, 200) * 0.3)
    loss = out.audio.pow(2).mean() + out.commitment_loss + out.codebook_loss
    loss.backward()
    assert codec.encoder.stem.weight_v.grad.abs().sum() > 0
    assert codec.quantizer.stages[0].codebook.weight.grad.abs().sum() > 0
    assert codec.decoder.proj.weight_v.grad.abs().sum() > 0


def _changed_frames(fn, x: torch.Tensor, t: int, axis_len: int) -> torch.Tensor:
    x2 = x.clone()
    x2[..., t:] += torch.randn_like(x2[..., t:])
    with torch.no_grad():
        a, b = fn(x), fn(x2)
    diff = (a - b).abs()
    return diff.reshape(-1, diff.shape[-2], axis_len).amax(dim=(0, 1)) > 0


def test_causal_codec_never_looks_ahead() -> None:
    codec = small(causal=True).eval()
    hop = codec.hop_length
    x = torch.randn(1, 1, 24 * hop) * 0.3
    # encoder: frame n depends on samples < (n + 1) * hop only
    for frame in (3, 11, 20):
        t = frame * hop
        changed = _changed_frames(codec.encoder, x, t, 24)
        assert not changed[:frame].any() and changed[frame:].any()
    # decoder: sample t depends on frames <= t // hop only
    z = torch.randn(1, 16, 24)
    changed = _changed_frames(codec.decoder, z, 9, 24 * hop)
    assert not changed[: 9 * hop].any() and changed[9 * hop]
    # the whole codec: outputs before the frame holding the change stay the same
    t = 13 * hop + 7
    changed = _changed_frames(lambda a: codec(a).audio, x, t, 24 * hop)
    assert not changed[: 13 * hop].any()
    # the default centred codec does look ahead (the checks above can fail)
    centred = small().eval()
    assert _changed_frames(centred.encoder, x, 11 * hop, 24)[:11].any()


def test_weight_norm_folding_gives_identical_output() -> None:
    codec = small().eval()
    x = torch.randn(2, 1, 4000) * 0.3  # 200 frames
    with torch.no_grad():
        before = codec(x)
        before_audio = codec.decode_codes(before.codes)
        codec.remove_weight_norm()
        after = codec(x)
        after_audio = codec.decode_codes(before.codes)
    assert not any(k.endswith("weight_g") for k in codec.state_dict())
    # Folded weights g * v / |v| are rounded once instead of per call and feed other conv
    # kernels, so outputs agree to float32 rounding accumulated over the network's depth
    # (eps 1.2e-7; 1e-4 on outputs of order 1 is 10x the worst seen), codes up to argmax
    # ties, and the audio is compared through the same codes (see fixtures.numerics).
    assert before_audio.abs().mean() > 0.05  # a real signal, so the tolerance means something
    assert_close(after.pre_quantization, before.pre_quantization)
    assert_codes_agree(after.codes, before.codes)
    assert_close(after_audio, before_audio)


@pytest.mark.parametrize(
    "overrides",
    [
        {"activation": "elu"},
        {"upsample": "resize"},
        {"weight_norm": False},
        {"pqmf_bands": 4, "strides": [2, 5]},
        {"causal": True, "upsample": "resize"},
        {"upsample_output_padding": False},
        {"quantizer": {"type": "fsq", "levels": [5, 5, 3], "n_codebooks": 2}},
        {"latent_dim": None, "dilations": [1, 2], "kernel_size": 5},
        {"decoder_strides": [10, 2, 2]},
    ],
    ids=lambda o: ",".join(o),
)
def test_variants_build_and_reconstruct_shapes(overrides: dict) -> None:
    codec = small(**overrides)
    x = torch.randn(2, 1, 400) * 0.3
    codec.train()
    out = codec(x)
    assert out.audio.shape == x.shape
    (out.audio.pow(2).mean() + out.commitment_loss).backward()
    codec.eval()
    with torch.no_grad():
        codes = codec.encode(x)
        assert codes.max() < codec.codebook_size
        assert codec.decode_codes(codes).shape == (2, 1, 400)
        rf = codec.receptive_field()
        assert rf.encoder_left > 0 and rf.decoder_left > 0


def test_fsq_codec_codebook_size() -> None:
    codec = small(quantizer={"type": "fsq", "levels": [8, 5, 5, 5], "n_codebooks": 2})
    assert codec.codebook_size == 1000 and codec.n_codebooks == 2
    assert codec.bitrate_kbps() == pytest.approx(400 * 2 * math.log2(1000) / 1000)


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="encoder_dimm"):
        validate(CodecConfig, {"encoder_dimm": 3})
    with pytest.raises(ConfigError, match="decoder_strides"):
        validate(CodecConfig, {"strides": [2, 4], "decoder_strides": [2, 2]})
    with pytest.raises(ConfigError, match="causal"):
        validate(CodecConfig, {"pqmf_bands": 4, "causal": True})
    with pytest.raises(ConfigError, match="power of 2"):
        validate(CodecConfig, {"pqmf_bands": 3})
    with pytest.raises(ConfigError):
        validate(CodecConfig, {"quantizer": {"type": "fsq", "codebook_size": 3}})
    # a partial quantizer section keeps the default type
    cfg = validate(CodecConfig, {"quantizer": {"n_codebooks": 3}})
    assert cfg.quantizer.type == "rvq" and cfg.quantizer.n_codebooks == 3


def test_defaults_are_the_tiny_preset() -> None:
    assert CodecConfig() == CodecConfig.model_validate(codec_preset("tiny"))


def test_presets_are_valid_configs() -> None:
    assert set(preset_names()) >= {"dac-44k", "dac-16k", "tiny"}
    for name in preset_names():
        validate(CodecConfig, codec_preset(name))
    a = codec_preset("tiny")
    a["encoder_dim"] = 1
    assert codec_preset("tiny")["encoder_dim"] != 1  # a fresh copy each call
    with pytest.raises(ConfigError, match="dac-16k"):
        codec_preset("dac-16")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_dac_preset_parameter_counts() -> None:
    big = codec_from_preset("dac-44k")
    assert _count(big) == pytest.approx(76.7e6, rel=0.01)
    assert _count(big.encoder) == pytest.approx(22.3e6, rel=0.01)
    assert _count(big.decoder) == pytest.approx(54.1e6, rel=0.01)
    assert big.n_codebooks == 9 and big.codebook_size == 1024 and big.hop_length == 512
    del big
    speech = codec_from_preset("dac-16k")
    assert _count(speech) == pytest.approx(74.2e6, rel=0.01)
    assert speech.n_codebooks == 12 and speech.hop_length == 320 and speech.frame_rate == 50


def test_optimize_for_inference_precisions() -> None:
    codec = small()
    x = torch.randn(2, 1, 4000) * 0.3
    codec.eval()
    with torch.inference_mode():
        ref_codes = codec.encode(x)
        ref = codec.decode_codes(ref_codes)
    codec.optimize_for_inference("bf16")
    assert not codec.training and not any(k.endswith("weight_g") for k in codec.state_dict())
    assert codec.decoder.stem.weight.dtype == torch.bfloat16
    assert codec.encoder.stem.weight.dtype == torch.float32
    with torch.inference_mode():
        codes = codec.encode(x)
        y = codec.decode_codes(ref_codes)
    # the encoder stays fp32 (weight norm folded): the fp32 codes up to float32 ties
    assert_codes_agree(codes, ref_codes)
    assert y.dtype == torch.float32
    snr = 10 * torch.log10(ref.pow(2).mean() / (y - ref).pow(2).mean())
    assert snr > 30.0
    with pytest.raises(ValueError):
        codec.optimize_for_inference("fp16")


@pytest.mark.parametrize("weight_norm", [True, False])
def test_optimize_for_inference_fp32_keeps_outputs(weight_norm: bool) -> None:
    codec = small(weight_norm=weight_norm).eval()
    x = torch.randn(1, 1, 4000) * 0.3  # 100 frames
    with torch.inference_mode():
        ref = codec(x)
        ref_audio = codec.decode_codes(ref.codes)
        codec.optimize_for_inference("fp32")
        out = codec(x)
        out_audio = codec.decode_codes(ref.codes)
    # folded / reordered weights run other kernels: float32 rounding (see fixtures.numerics)
    assert_codes_agree(out.codes, ref.codes)
    assert_close(out_audio, ref_audio)
    w = codec.decoder.blocks[0].res[0].conv1.weight.unsqueeze(2)
    assert w.is_contiguous(memory_format=torch.channels_last)  # no reorder per call


def test_recipes_take_the_architecture_from_the_presets() -> None:
    """The DAC recipes name their preset instead of repeating the architecture; keys given
    beside `preset:` override it (a quantizer of the preset's type is merged into it)."""
    from soundry.config import to_dict
    from soundry.models.codec import codec_preset
    from soundry.paths import recipes_dir
    from soundry.train.recipes import load_recipe

    for name in ("dac-44k", "dac-16k"):
        recipe = load_recipe(recipes_dir() / f"codec/{name}.yaml")
        assert to_dict(recipe.model) == to_dict(validate(CodecConfig, codec_preset(name)))
    cfg = validate(CodecConfig, {"preset": "dac-44k", "decoder_dim": 512,
                                 "quantizer": {"n_codebooks": 4}})
    assert cfg.decoder_dim == 512 and cfg.encoder_dim == 64
    assert (cfg.quantizer.n_codebooks, cfg.quantizer.codebook_size) == (4, 1024)
    fsq = validate(CodecConfig, {"preset": "dac-44k", "quantizer": {"type": "fsq"}})
    assert fsq.quantizer.type == "fsq"
    with pytest.raises(ConfigError, match="preset 'dac-99k'"):
        validate(CodecConfig, {"preset": "dac-99k"})
