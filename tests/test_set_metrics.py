"""Set metrics for generated sounds: the pairwise distances are DAC's mel distance (checked
against `soundry.eval.metrics.mel_distance`, itself pinned to DAC's own code), and the
Frechet distance orders sets as it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundry.eval.metrics import mel_distance
from soundry.eval.set_metrics import (
    MelFeatures,
    frechet_distance,
    log_mel_frames,
    mean_pairwise_distance,
    nearest_distances,
    pairwise_mel_distance,
)


def _sounds(n: int, seed: int, sr: int = 16000) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(sr // 2) / sr
    out = [np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * np.exp(-t * rng.uniform(2, 20))
           + rng.normal(0, 0.01, t.size) for _ in range(n)]
    return torch.tensor(np.stack(out)[:, None], dtype=torch.float32)


def test_pairwise_distances_are_the_mel_distance() -> None:
    a, b = _sounds(3, 0), _sounds(4, 1)
    feats = MelFeatures(16000)
    d = pairwise_mel_distance(feats(a), feats(b))
    assert d.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert d[i, j] == pytest.approx(mel_distance(b[j], a[i], 16000), rel=1e-9)
    near = nearest_distances(feats(a), feats(b))
    np.testing.assert_allclose(near, d.min(axis=1))
    self_near = nearest_distances(feats(a), feats(a), exclude_self=True)
    assert (self_near > 0).all()
    div = mean_pairwise_distance(feats(a))
    full = pairwise_mel_distance(feats(a), feats(a))
    assert div == pytest.approx((full[0, 1] + full[0, 2] + full[1, 2]) / 3)


def test_frechet_distance_orders_sets() -> None:
    sr = 16000
    ref = log_mel_frames(_sounds(8, 0), sr)
    same_kind = log_mel_frames(_sounds(8, 1), sr)
    noise = log_mel_frames(torch.randn(8, 1, sr // 2) * 0.3, sr)
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(ref, same_kind) < frechet_distance(ref, noise)
