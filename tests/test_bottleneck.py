"""Bottlenecks behind one interface: RVQ, FSQ, a diagonal-Gaussian VAE and none."""

from __future__ import annotations

import math

import pytest
import torch

from soundry.config import validate
from soundry.errors import SoundryError
from soundry.models.codec import CodecConfig, build_codec
from soundry.nn.bottleneck import NoBottleneck, QuantizerBottleneck, VAEBottleneck
from soundry.nn.quantize import FSQStage, ResidualQuantizer, VQStage

SMALL = {"encoder_dim": 4, "decoder_dim": 16, "latent_dim": 8, "strides": [2, 4]}


def _codec(quantizer: dict):
    torch.manual_seed(0)
    return build_codec(validate(CodecConfig, {**SMALL, "quantizer": quantizer}))


@pytest.mark.parametrize("stage", ["vq", "fsq"])
def test_quantizer_bottleneck_reports_codes_losses_and_every_levels_vector(stage: str) -> None:
    torch.manual_seed(0)
    stages = [VQStage(8, 16, 4) if stage == "vq" else FSQStage(8, [5, 3]) for _ in range(3)]
    bn = QuantizerBottleneck(ResidualQuantizer(stages)).eval()
    z = torch.randn(2, 8, 5)
    latents, info = bn.encode(z, return_info=True)
    assert latents.shape == z.shape and info.codes.shape == (2, 3, 5)
    assert len(info.level_outputs) == 3
    # the decoder's input is the sum of the levels' vectors; codes decode back to it
    torch.testing.assert_close(sum(info.level_outputs), latents)
    torch.testing.assert_close(bn.decode_codes(bn.encode_codes(z)), latents)
    assert set(info.losses) == ({"commitment", "codebook"} if stage == "vq" else set())
    assert torch.equal(bn.encode(z), latents)  # without info: the latents alone


def test_vae_bottleneck_samples_in_training_and_gives_its_mean_in_eval() -> None:
    bn = VAEBottleneck()
    assert bn.input_dim(8) == 16 and not bn.discrete
    mean = torch.randn(3, 8, 6)
    # pre-scale whose softplus is 1 - 1e-4: std exactly 1, so KL = 0.5 * sum(mean^2) per frame
    pre = torch.full_like(mean, math.log(math.expm1(1 - 1e-4)))
    z = torch.cat([mean, pre], dim=1)
    bn.eval()
    latents, info = bn.encode(z, return_info=True)
    assert torch.equal(latents, mean) and torch.allclose(info.scale, torch.ones_like(mean))
    want = 0.5 * (mean**2).sum(dim=1).mean()
    torch.testing.assert_close(info.losses["kl"], want, rtol=1e-5, atol=1e-5)
    bn.train()
    torch.manual_seed(1)
    sampled = bn.encode(z)
    assert not torch.equal(sampled, mean)
    assert abs(float((sampled - mean).std()) - 1.0) < 0.15  # N(0, 1) noise at std 1
    with pytest.raises(ValueError, match="2 D"):
        bn.encode(torch.randn(1, 7, 3))


def test_kl_trains_the_posterior_towards_the_prior() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 8, 4, requires_grad=True)
    _, info = VAEBottleneck().train().encode(z, return_info=True)
    info.losses["kl"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_no_bottleneck_is_the_identity() -> None:
    z = torch.randn(2, 8, 3)
    latents, info = NoBottleneck().encode(z, return_info=True)
    assert latents is z and info.losses == {} and info.codes is None


@pytest.mark.parametrize("kind", ["vae", "none"])
def test_codec_with_a_continuous_bottleneck_trains_but_has_no_codes(kind: str) -> None:
    codec = _codec({"type": kind}).train()
    assert codec.encoder.proj.out_channels == (16 if kind == "vae" else 8)
    x = 0.1 * torch.randn(2, 1, 80)
    out = codec(x)
    assert out.audio.shape == x.shape and out.codes is None and out.latents.shape == (2, 8, 10)
    assert set(out.info.losses) == ({"kl"} if kind == "vae" else set())
    (out.audio.pow(2).mean() + sum(out.info.losses.values(), torch.zeros(()))).backward()
    assert all(p.grad is not None for p in codec.encoder.parameters())
    with pytest.raises(SoundryError, match="continuous"):
        codec.encode(x)
    with pytest.raises(SoundryError, match="continuous"):
        _ = codec.n_codebooks
    codec.eval()
    y = codec.decode(codec(x).latents)
    assert y.shape == (2, 1, 80) and torch.isfinite(y).all()


def test_weights_saved_with_the_quantizer_at_the_top_level_still_load() -> None:
    codec = _codec({"type": "rvq", "n_codebooks": 2, "codebook_size": 16, "codebook_dim": 4})
    state = codec.state_dict()
    old = {k.replace("bottleneck.quantizer.", "quantizer."): v for k, v in state.items()}
    assert any(k.startswith("quantizer.stages.") for k in old)
    fresh = _codec({"type": "rvq", "n_codebooks": 2, "codebook_size": 16, "codebook_dim": 4})
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_the_codec_task_refuses_a_continuous_bottleneck() -> None:
    from soundry.errors import ConfigError
    from soundry.paths import recipes_dir
    from soundry.train.recipes import load_recipe

    with pytest.raises(ConfigError, match="needs a quantizer"):
        load_recipe(recipes_dir() / "codec/tiny.yaml", ["model.quantizer={type: vae}"])
