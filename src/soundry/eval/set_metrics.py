"""Metrics over sets of sounds: pairwise mel distances, nearest neighbours, diversity and a
Frechet distance on log-mel frame statistics (for judging generated one-shots).

`MelFeatures` computes, once per sound, the log-mel spectrograms of the 7 scales of DAC's
mel distance (`soundry.eval.metrics.mel_distance`: windows 32..2048, hop window/4, n_mels
5..320, log10(clamp(mel, 1e-5))); the distance between two sounds is then the sum over
scales of the mean absolute difference, which is exactly `mel_distance` of the pair, so a
[N, M] matrix of distances costs N + M spectrogram passes instead of N x M.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from soundry.audio.dsp import SpectrogramCache
from soundry.losses.config import MelLossConfig

_CHUNK = 16  # sounds per spectrogram pass (bounds memory)


class MelFeatures:
    """Multi-scale log-mel features of sounds [N, C, T] (float64, CPU)."""

    def __init__(self, sample_rate: int, cfg: MelLossConfig | None = None) -> None:
        self.sample_rate = sample_rate
        self.cfg = cfg or MelLossConfig()

    @torch.no_grad()
    def __call__(self, audio: Any) -> list[torch.Tensor]:
        """audio [N, C, T] (numpy or torch) -> one tensor [N, C * n_mels * frames] per scale."""
        x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
        x = x.detach().to("cpu", torch.float64)
        if x.dim() != 3:
            raise ValueError(f"sounds must be [N, channels, time], got {tuple(x.shape)}")
        cfg = self.cfg
        per_scale: list[list[torch.Tensor]] = [[] for _ in cfg.windows]
        for start in range(0, x.shape[0], _CHUNK):
            cache = SpectrogramCache(x[start:start + _CHUNK])
            for i, (n_mels, window) in enumerate(zip(cfg.n_mels, cfg.windows, strict=True)):
                mel = cache.mel(self.sample_rate, window, int(window * cfg.hop_factor), n_mels,
                                cfg.fmin, cfg.fmax)
                per_scale[i].append(mel.clamp(min=cfg.clamp_eps).log10().flatten(1))
        return [torch.cat(parts) for parts in per_scale]


@torch.no_grad()
def pairwise_mel_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> np.ndarray:
    """[N, M] mel distances between the sounds of feature sets a (N) and b (M)."""
    total = torch.zeros(a[0].shape[0], b[0].shape[0], dtype=torch.float64)
    for fa, fb in zip(a, b, strict=True):
        if fa.shape[1] != fb.shape[1]:
            raise ValueError("feature sets of sounds of different lengths cannot be compared")
        # mean |fa_i - fb_j| over the scale's values, a block of rows at a time
        for start in range(0, fa.shape[0], _CHUNK):
            block = (fa[start:start + _CHUNK, None, :] - fb[None]).abs().mean(dim=-1)
            total[start:start + _CHUNK] += block
    return total.numpy()


def nearest_distances(query: list[torch.Tensor], reference: list[torch.Tensor],
                      exclude_self: bool = False) -> np.ndarray:
    """Each query sound's mel distance to its nearest reference sound [N] (`exclude_self`:
    query and reference are the same set; a sound's distance to itself is skipped)."""
    d = pairwise_mel_distance(query, reference)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def mean_pairwise_distance(features: list[torch.Tensor]) -> float:
    """Mean mel distance over the distinct pairs of a set (diversity); nan below 2 sounds."""
    d = pairwise_mel_distance(features, features)
    n = d.shape[0]
    if n < 2:
        return float("nan")
    return float(d[np.triu_indices(n, k=1)].mean())


@torch.no_grad()
def log_mel_frames(audio: Any, sample_rate: int, n_fft: int = 2048, n_mels: int = 64
                   ) -> np.ndarray:
    """Every frame of every sound's log-mel spectrogram (hop n_fft / 4, channels averaged)
    as rows [frames in all, n_mels]; silent frames (all bins at the 1e-5 floor) dropped."""
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
    x = x.detach().to("cpu", torch.float64)
    rows = []
    for start in range(0, x.shape[0], _CHUNK):
        mel = SpectrogramCache(x[start:start + _CHUNK]).mel(sample_rate, n_fft, n_fft // 4,
                                                           n_mels)
        logmel = mel.clamp(min=1e-5).log10().mean(dim=1)  # [N, mels, frames]
        rows.append(logmel.transpose(1, 2).reshape(-1, n_mels))
    frames = torch.cat(rows).numpy()
    return frames[frames.max(axis=1) > -5.0 + 1e-6]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to the rows of a and b [n, d]:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    if a.shape[0] < 2 or b.shape[0] < 2:
        return float("nan")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S_a S_b)^(1/2)) = sum of the square roots of the eigenvalues of S_a S_b, which are
    # real and non-negative for covariances (rounding can leave tiny negative/imaginary parts)
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_root = float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_root)
