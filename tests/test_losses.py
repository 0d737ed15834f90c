"""Spectral, waveform, adversarial and feature-matching losses; loss config and weights."""

from __future__ import annotations

import pytest
import torch

from soundry.audio.dsp import SpectrogramCache
from soundry.config import validate
from soundry.errors import ConfigError
from soundry.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from soundry.losses.config import (
    CodecLossConfig,
    MelLossConfig,
    STFTLossConfig,
    weighted_total,
)
from soundry.losses.spectral import MelLoss, MultiResolutionSTFTLoss, waveform_l1
from soundry.nn.disc_output import DiscOutput

SR = 16000


def _audio(b: int = 2, t: int = 4096, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(b, 1, t, generator=torch.Generator().manual_seed(seed))


def _outs(*logits: torch.Tensor, features: list[list[torch.Tensor]] | None = None) -> list:
    feats = features or [[] for _ in logits]
    return [DiscOutput(lg, f, f"d{i}") for i, (lg, f) in enumerate(zip(logits, feats, strict=True))]


# ----------------------------------------------------------------------------- adversarial


def test_lsgan_values_on_known_inputs() -> None:
    r1, r2 = torch.tensor([0.5, 1.5]), torch.tensor([[1.0, 0.0, 2.0]])
    f1, f2 = torch.tensor([-0.5, 0.5]), torch.tensor([[0.0, 1.0, -1.0]])
    real, fake = _outs(r1, r2), _outs(f1, f2)
    d_expect = (0.25 + 0.25) / 2 + (0.25 + 0.25) / 2 + (0 + 1 + 1) / 3 + (0 + 1 + 1) / 3
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(d_expect)
    g_expect = (2.25 + 0.25) / 2 + (1 + 0 + 4) / 3
    assert generator_adversarial_loss(fake, "lsgan").item() == pytest.approx(g_expect)


def test_hinge_values_on_known_inputs() -> None:
    real, fake = _outs(torch.tensor([0.5, 1.5, -1.0])), _outs(torch.tensor([-0.5, -2.0, 1.0]))
    # real: relu(1 - r) = [0.5, 0, 2]; fake: relu(1 + f) = [0.5, 0, 2]
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(1.5 / 3)


def test_perfect_discriminator_has_zero_lsgan_loss_and_unknown_kind_fails() -> None:
    ones, zeros = torch.ones(2, 1, 5), torch.zeros(2, 1, 5)
    assert discriminator_loss(_outs(ones), _outs(zeros)).item() == 0.0
    assert generator_adversarial_loss(_outs(ones)).item() == 0.0
    with pytest.raises(ValueError, match="unknown adversarial"):
        discriminator_loss(_outs(ones), _outs(zeros), "wgan")  # type: ignore[arg-type]


def test_feature_matching_zero_for_identical_and_known_offset() -> None:
    feats = [[torch.randn(2, 3, 4), torch.randn(2, 5)], [torch.randn(1, 7)]]
    logits = [torch.zeros(1), torch.zeros(1)]
    real = _outs(*logits, features=feats)
    same = _outs(*logits, features=[[f.clone() for f in fs] for fs in feats])
    assert feature_matching_loss(real, same).item() == 0.0
    shifted = _outs(*logits, features=[[f + 0.5 for f in fs] for fs in feats])
    # mean |diff| = 0.5 per map, three maps summed
    assert feature_matching_loss(real, shifted).item() == pytest.approx(1.5)


def test_feature_matching_does_not_backpropagate_into_real_features() -> None:
    real_f = torch.randn(2, 4, requires_grad=True)
    fake_f = torch.randn(2, 4, requires_grad=True)
    loss = feature_matching_loss(_outs(torch.zeros(1), features=[[real_f]]),
                                 _outs(torch.zeros(1), features=[[fake_f]]))
    loss.backward()
    assert real_f.grad is None
    assert fake_f.grad is not None and fake_f.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- spectral


def test_mel_loss_zero_for_identical_positive_otherwise() -> None:
    loss = MelLoss(MelLossConfig(), SR)
    x = _audio()
    assert loss(x, x.clone()).item() == 0.0
    y = x + 0.05 * _audio(seed=1)
    assert loss(y, x).item() > 0.0
    # louder difference -> larger loss
    assert loss(x + 0.2 * _audio(seed=1), x).item() > loss(y, x).item()


def test_mel_loss_on_caches_equals_tensors_and_has_gradients() -> None:
    loss = MelLoss(MelLossConfig(), SR)
    x = _audio(seed=2)
    y = (0.9 * x + 0.01 * _audio(seed=3)).requires_grad_()
    a = loss(y, x)
    b = loss(SpectrogramCache(y), SpectrogramCache(x))
    torch.testing.assert_close(a, b)
    (g,) = torch.autograd.grad(b, y)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_mel_loss_options_change_the_value() -> None:
    x, y = _audio(seed=4), _audio(seed=5)
    base = MelLoss(MelLossConfig(), SR)(y, x).item()
    with_mag = MelLoss(MelLossConfig(mag_weight=1.0), SR)(y, x).item()
    assert with_mag > base
    pow2 = MelLoss(MelLossConfig(pow=2.0), SR)(y, x).item()
    assert pow2 == pytest.approx(2 * base, rel=1e-5)
    one_scale = MelLoss(MelLossConfig(n_mels=[80], windows=[1024]), SR)(y, x).item()
    assert 0 < one_scale < base


def test_stft_loss_and_waveform_l1() -> None:
    loss = MultiResolutionSTFTLoss(STFTLossConfig())
    x = _audio()
    assert loss(x, x.clone()).item() == 0.0
    y = x + 0.05 * _audio(seed=1)
    assert loss(y, x).item() > 0.0
    assert waveform_l1(x + 0.25, x).item() == pytest.approx(0.25)
    assert waveform_l1(SpectrogramCache(x - 0.5), SpectrogramCache(x)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        waveform_l1(x, x[..., :-1])
    with pytest.raises(ValueError, match="shape"):
        loss(x, x[..., :-1])


# ----------------------------------------------------------------------------- config + weights


def test_defaults_are_dacs() -> None:
    cfg = CodecLossConfig()
    assert cfg.weights() == {"mel": 15.0, "stft": 0.0, "waveform": 0.0, "adversarial": 1.0,
                             "feature_matching": 2.0, "commitment": 0.25, "codebook": 1.0}
    assert cfg.mel.n_mels == [5, 10, 20, 40, 80, 160, 320]
    assert cfg.mel.windows == [32, 64, 128, 256, 512, 1024, 2048]
    assert (cfg.mel.clamp_eps, cfg.mel.mag_weight, cfg.mel.pow) == (1e-5, 0.0, 1.0)
    assert cfg.adversarial.type == "lsgan"


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="mel.windos"):
        validate(CodecLossConfig, {"mel": {"windos": [32]}})
    with pytest.raises(ConfigError, match="same length"):
        validate(CodecLossConfig, {"mel": {"n_mels": [5, 10]}})
    with pytest.raises(ConfigError, match="feature_matching.weight"):
        validate(CodecLossConfig, {"feature_matching": {"weight": -1}})
    with pytest.raises(ConfigError, match="adversarial.type"):
        validate(CodecLossConfig, {"adversarial": {"type": "wgan"}})


def test_each_weight_is_applied_exactly_once() -> None:
    terms = {"mel": torch.tensor(0.3, dtype=torch.float64),
             "feature_matching": torch.tensor(0.7, dtype=torch.float64),
             "adversarial": torch.tensor(1.1, dtype=torch.float64),
             "commitment": torch.tensor(0.2, dtype=torch.float64)}
    cfg = CodecLossConfig()
    base = weighted_total(terms, cfg.weights()).item()
    for name in ("feature_matching", "mel", "adversarial", "commitment"):
        doubled = cfg.model_copy(deep=True)
        section = getattr(doubled, name)
        section.weight = 2 * section.weight
        total = weighted_total(terms, doubled.weights()).item()
        contribution = getattr(cfg, name).weight * terms[name].item()
        # doubling the weight adds the term's weighted contribution once more, no more
        assert total - base == pytest.approx(contribution, rel=1e-6)


def test_loss_modules_ignore_the_weight_and_zero_weights_are_skipped() -> None:
    x, y = _audio(seed=6), _audio(seed=7)
    a = MelLoss(MelLossConfig(weight=15.0), SR)(y, x)
    b = MelLoss(MelLossConfig(weight=30.0), SR)(y, x)
    assert a.item() == b.item()
    total = weighted_total({"mel": torch.tensor(1.0), "stft": torch.tensor(float("nan"))},
                           {"mel": 15.0, "stft": 0.0})
    assert total.item() == 15.0
    with pytest.raises(KeyError, match="no weight"):
        weighted_total({"bogus": torch.tensor(1.0)}, CodecLossConfig().weights())


def test_losses_reduce_in_fp32_under_bf16_autocast() -> None:
    x = _audio(seed=8)
    y = x + 0.02 * _audio(seed=9)
    loss = MelLoss(MelLossConfig(), SR)
    fp32 = loss(y, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(y, x)
        logits = torch.randn(2, 1, 10).bfloat16()
        outs = _outs(logits, features=[[torch.randn(2, 3).bfloat16()]])
        adv = discriminator_loss(outs, outs, "lsgan")
        fm = feature_matching_loss(outs, outs)
    assert mixed.dtype == torch.float32 and adv.dtype == fm.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, rtol=1e-5, atol=1e-6)


def test_declared_terms_are_the_only_ones_a_step_can_weight_or_log() -> None:
    from soundry.losses.config import CODEC_TERMS
    from soundry.losses.terms import ADVERSARIAL_TERMS, LossTerm, LossTerms

    terms = LossTerms([LossTerm("kl", 1e-4, "KL to the prior")]) + ADVERSARIAL_TERMS
    assert terms.names == ("kl", "adversarial", "feature_matching")
    weights = {"kl": 0.5, "adversarial": 2.0, "feature_matching": 0.0}
    total = terms.total({"kl": torch.tensor(2.0), "adversarial": torch.tensor(3.0),
                         "feature_matching": torch.tensor(float("nan"))}, weights)
    assert total.item() == 7.0  # each weight once; a zero-weight NaN term left out
    with pytest.raises(KeyError, match="'mel' is not a declared term"):
        terms.total({"mel": torch.tensor(1.0)}, {"mel": 1.0})
    with pytest.raises(ValueError, match="'k1'.*did you mean 'kl'"):
        terms.check({"k1": 1.0}, "schedule phase 'gan'")
    with pytest.raises(ValueError, match="declared twice"):
        _ = terms + LossTerms([LossTerm("kl")])
    # the codec's declared defaults are its recipe section's defaults
    assert CODEC_TERMS.defaults() == CodecLossConfig().weights()


def test_phase_weights_are_checked_against_each_tasks_own_terms() -> None:
    from soundry.paths import recipes_dir
    from soundry.train.recipes import load_recipe

    phases = "schedule.phases=[{name: gan, weights: {%s: 0.0}}]"
    load_recipe(recipes_dir() / "toy.yaml", [phases % "recon"])  # the toy's own term
    with pytest.raises(ConfigError, match="unknown loss 'mel'"):
        load_recipe(recipes_dir() / "toy.yaml", [phases % "mel"])  # the codec's, not the toy's
    load_recipe(recipes_dir() / "codec/tiny.yaml", [phases % "mel"])
    with pytest.raises(ConfigError, match="unknown loss 'recon'"):
        load_recipe(recipes_dir() / "codec/tiny.yaml", [phases % "recon"])
