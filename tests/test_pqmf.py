"""PQMF filter bank: near-perfect reconstruction, band separation, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soundry.nn.pqmf import PQMF, prototype_filter


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (est - ref).pow(2).mean()))


@pytest.mark.parametrize("bands", [2, 4, 8, 16])
def test_near_perfect_reconstruction(bands: int) -> None:
    torch.manual_seed(0)
    pqmf = PQMF(bands)
    x = torch.randn(2, 1, bands * 300)
    sub = pqmf.analysis(x)
    assert sub.shape == (2, bands, 300)
    y = pqmf.synthesis(sub)
    assert y.shape == x.shape
    edge = pqmf.taps  # the file edges lack filter context
    assert snr_db(x[..., edge:-edge], y[..., edge:-edge]) > 55.0
    # no delay: a time-reversed check would fail if the output were shifted by a sample
    assert snr_db(x[..., edge + 1 : -edge + 1], y[..., edge:-edge]) < 10.0


def test_a_tone_lands_in_its_band() -> None:
    bands, sr = 8, 16000
    pqmf = PQMF(bands)
    t = torch.arange(sr // 2) / sr
    width = sr / 2 / bands  # 1 kHz per band
    for k in (0, 3, 6):
        f = (k + 0.5) * width
        x = torch.sin(2 * math.pi * f * t)[None, None, : bands * 500]
        energy = pqmf.analysis(x)[..., 50:-50].pow(2).mean(dim=-1)[0]
        assert int(energy.argmax()) == k
        others = torch.cat([energy[:k], energy[k + 1 :]])
        assert float(others.max() / energy[k]) < 1e-4  # > 40 dB of separation


def test_prototype_is_near_nyquist() -> None:
    bands = 4
    h = prototype_filter(bands, 65)
    g = np.convolve(h, h[::-1])
    centre = len(g) // 2
    side = np.delete(g[centre % (2 * bands) :: 2 * bands], centre // (2 * bands))
    assert np.abs(side).max() < 1e-3 * abs(g[centre])


def test_rejects_bad_band_counts_and_lengths() -> None:
    with pytest.raises(ValueError):
        PQMF(3)
    with pytest.raises(ValueError):
        PQMF(4).analysis(torch.randn(1, 1, 10))
