"""Discriminators: configs, sizes, output/feature shapes, preprocessing, shared spectra."""

from __future__ import annotations

import math

import pytest
import torch

from soundry.audio.dsp import SpectrogramCache
from soundry.config import validate
from soundry.errors import ConfigError
from soundry.models.discriminators import (
    DAC_BANDS,
    DiscriminatorConfig,
    MPDConfig,
    MRDConfig,
    MSDConfig,
    band_bins,
    build_discriminator,
    split_outputs,
)

SR = 16000


def _audio(b: int = 2, t: int = 3000, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(b, 1, t, generator=torch.Generator().manual_seed(seed))


def _conv_len(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _small(*members: object) -> DiscriminatorConfig:
    return DiscriminatorConfig(members=list(members))


def test_dac_discriminator_parameter_count() -> None:
    torch.manual_seed(0)
    disc = build_discriminator(DiscriminatorConfig(), 44100)
    n = sum(p.numel() for p in disc.parameters())
    assert abs(n - 42.5e6) / 42.5e6 < 0.02, n
    # without weight norm only the (g) scales disappear: one per output channel
    plain = build_discriminator(DiscriminatorConfig(weight_norm=False), 44100)
    n_plain = sum(p.numel() for p in plain.parameters())
    assert 0 < n - n_plain < 0.01 * n


def test_config_union_and_errors() -> None:
    cfg = validate(DiscriminatorConfig, {"members": [{"type": "msd", "rates": [1, 2]},
                                                     {"type": "mpd", "periods": [2, 3]}]})
    assert [m.type for m in cfg.members] == ["msd", "mpd"]
    with pytest.raises(ConfigError, match="periods"):
        validate(DiscriminatorConfig, {"members": [{"type": "mrd", "periods": [2]}]})
    with pytest.raises(ConfigError):
        validate(DiscriminatorConfig, {"members": [{"type": "mbd"}]})
    with pytest.raises(ConfigError, match="bands"):
        validate(DiscriminatorConfig, {"members": [{"type": "mrd", "bands": [[0.5, 0.2]]}]})
    with pytest.raises(ConfigError, match="members"):
        validate(DiscriminatorConfig, {"members": []})


def test_mpd_output_and_feature_shapes() -> None:
    cfg = MPDConfig(periods=[2, 3, 7], channels=[4, 8, 8])
    disc = build_discriminator(_small(cfg), SR)
    t = 3001
    outs = disc(_audio(t=t))
    assert [o.name for o in outs] == ["mpd2", "mpd3", "mpd7"]
    for period, out in zip([2, 3, 7], outs, strict=True):
        rows = math.ceil(t / period)
        assert len(out.features) == 3
        for i, (feat, ch) in enumerate(zip(out.features, [4, 8, 8], strict=True)):
            stride = 3 if i < 2 else 1
            rows = _conv_len(rows, 5, stride, 2)
            assert feat.shape == (2, ch, rows, period)
        assert out.logits.shape == (2, 1, rows, period)


def test_msd_output_and_feature_shapes() -> None:
    cfg = MSDConfig(rates=[1, 4], channels=[4, 8, 8], kernels=[15, 41, 5], strides=[1, 4, 1],
                    groups=[1, 4, 1])
    disc = build_discriminator(_small(cfg), SR)
    t = 3001
    outs = disc(_audio(t=t))
    assert [o.name for o in outs] == ["msd1", "msd4"]
    for rate, out in zip([1, 4], outs, strict=True):
        n = math.ceil(t / rate)
        for feat, ch, k, s in zip(out.features, [4, 8, 8], [15, 41, 5], [1, 4, 1], strict=True):
            n = _conv_len(n, k, s, k // 2)
            assert feat.shape == (2, ch, n)
        assert out.logits.shape == (2, 1, n)


def test_mrd_output_and_feature_shapes() -> None:
    cfg = MRDConfig(windows=[512, 256], channels=4)
    disc = build_discriminator(_small(cfg), SR)
    t = 3001
    outs = disc(_audio(t=t))
    assert [o.name for o in outs] == ["mrd512", "mrd256"]
    for window, out in zip([512, 256], outs, strict=True):
        frames = 1 + t // (window // 4)
        widths = []
        assert len(out.features) == 5 * len(DAC_BANDS)
        for band, (lo, hi) in enumerate(band_bins(window, DAC_BANDS)):
            w = hi - lo
            feats = out.features[5 * band : 5 * band + 5]
            for i, feat in enumerate(feats):
                if i in (1, 2, 3):
                    w = _conv_len(w, 9, 2, 4)
                assert feat.shape == (2, 4, frames, w)
            widths.append(w)
        assert out.logits.shape == (2, 1, frames, sum(widths))


@pytest.mark.parametrize("window", [2048, 1024, 512, 128])
def test_mrd_bands_partition_the_bins(window: int) -> None:
    bins = band_bins(window, DAC_BANDS)
    covered = [i for lo, hi in bins for i in range(lo, hi)]
    assert covered == list(range(window // 2 + 1))


def test_band_without_bins_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no STFT bins"):
        band_bins(16, [(0.0, 0.05), (0.05, 1.0)])


def test_input_is_dc_removed_and_peak_normalised() -> None:
    torch.manual_seed(0)
    disc = build_discriminator(
        _small(MPDConfig(periods=[2], channels=[4, 4]), MRDConfig(windows=[256], channels=4)),
        SR,
    )
    x = _audio(t=2000)
    a = disc(x)
    b = disc(3.0 * x + 0.25)
    for oa, ob in zip(a, b, strict=True):
        torch.testing.assert_close(oa.logits, ob.logits, atol=1e-4, rtol=1e-4)
    raw = build_discriminator(
        DiscriminatorConfig(members=[MPDConfig(periods=[2], channels=[4, 4])], normalize=False),
        SR,
    )
    c, d = raw(x), raw(3.0 * x + 0.25)
    assert not torch.allclose(c[0].logits, d[0].logits, atol=1e-3)


def test_shared_spectrogram_cache_gives_identical_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    disc = build_discriminator(_small(MRDConfig(windows=[512, 256], channels=4)), SR)
    x = (_audio(t=2500) + 0.1).requires_grad_()
    fresh = disc(x)
    shared = disc(x, SpectrogramCache(x))
    for a, b in zip(fresh, shared, strict=True):
        torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
        for fa, fb in zip(a.features, b.features, strict=True):
            torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-4)
    (ga,) = torch.autograd.grad(sum(o.logits.square().sum() for o in fresh), x)
    (gb,) = torch.autograd.grad(sum(o.logits.square().sum() for o in shared), x)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-3)


def test_cache_of_other_shape_is_rejected() -> None:
    disc = build_discriminator(_small(MRDConfig(windows=[256], channels=4)), SR)
    with pytest.raises(ValueError, match="does not describe"):
        disc(_audio(t=2000), SpectrogramCache(_audio(t=2100)))
    with pytest.raises(ValueError, match="mono"):
        disc(torch.zeros(1, 2, 2000))


def test_batched_real_and_fake_equal_separate_calls() -> None:
    torch.manual_seed(0)
    disc = build_discriminator(
        _small(MPDConfig(periods=[3], channels=[4, 4]), MSDConfig(rates=[2], channels=[4, 4],
               kernels=[5, 5], strides=[1, 2], groups=[1, 2]), MRDConfig(windows=[256],
               channels=4)),
        SR,
    )
    real, fake = _audio(b=2, seed=1), _audio(b=3, seed=2)
    both = SpectrogramCache.cat([SpectrogramCache(real), SpectrogramCache(fake)])
    parts = split_outputs(disc(both.audio, both), [2, 3])
    for signal, outs in zip([real, fake], parts, strict=True):
        for a, b in zip(disc(signal), outs, strict=True):
            assert a.name == b.name
            torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-4)
            for fa, fb in zip(a.features, b.features, strict=True):
                torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-4)


def test_detached_outputs_carry_no_history() -> None:
    disc = build_discriminator(_small(MPDConfig(periods=[2], channels=[4])), SR)
    out = disc(_audio(t=1000).requires_grad_())[0]
    assert out.logits.requires_grad
    det = out.detached()
    assert not det.logits.requires_grad and not any(f.requires_grad for f in det.features)
    assert torch.equal(det.logits, out.logits)
