"""Pseudo-QMF filter bank: split a waveform into M critically sampled sub-bands and back.

Design (as in RAVE): a linear-phase low-pass prototype h of N taps, Kaiser window for
`attenuation_db` stop-band rejection, cut-off near pi / (2M) chosen so that h convolved with
its mirror image is close to a Nyquist(2M) filter (every 2M-th tap but the centre ~ 0), which
cancels aliasing between neighbouring bands. Each band filter is a cosine-modulated copy::

    analysis  h_k(t) = 2 h(t) cos((2k+1) pi / (2M) (t - (N-1)/2) + (-1)^k pi / 4)
    synthesis g_k(t) = 2 h(t) cos((2k+1) pi / (2M) (t - (N-1)/2) - (-1)^k pi / 4)

Analysis filters, then keeps every M-th sample (one strided conv); synthesis upsamples with
zeros and filters (one strided transposed conv), times M. The filter delays are compensated
by centred padding, so `synthesis(analysis(x))` lines up with `x` sample for sample;
reconstruction is near-perfect (aliasing and ripple far below -60 dB), not exact.

Shapes: analysis [B, 1, T] -> [B, M, T / M] (T a multiple of M); synthesis the reverse.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from scipy.signal import firwin, kaiser_beta
from torch import nn


def default_taps(bands: int) -> int:
    """Prototype length: 16 taps per band, odd (so the filter delay is a whole sample), >= 63."""
    return max(16 * bands, 62) + 1


@functools.lru_cache(maxsize=16)
def prototype_filter(bands: int, taps: int, attenuation_db: float = 100.0) -> np.ndarray:
    """The low-pass prototype h [taps] (float64) with the best near-Nyquist(2M) cut-off."""
    beta = kaiser_beta(attenuation_db)

    def design(cutoff: float) -> np.ndarray:
        return firwin(taps, cutoff, window=("kaiser", beta), scale=False)

    def aliasing(cutoff: float) -> float:
        h = design(cutoff)
        g = np.convolve(h, h[::-1])
        centre = len(g) // 2
        side = g[centre % (2 * bands) :: 2 * bands]
        side = np.delete(side, centre // (2 * bands))
        return float(np.abs(side).max())

    nominal = 1.0 / (2 * bands)  # in units of the Nyquist frequency
    best = minimize_scalar(
        aliasing,
        bounds=(0.5 * nominal, 1.5 * nominal),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return design(float(best.x))


def pqmf_filters(
    bands: int, taps: int, attenuation_db: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """(analysis, synthesis) filters, each [bands, taps] float64."""
    h = prototype_filter(bands, taps, attenuation_db)
    t = np.arange(taps) - (taps - 1) / 2
    k = np.arange(bands)[:, None]
    phase = (-1.0) ** k * math.pi / 4
    arg = (2 * k + 1) * math.pi / (2 * bands) * t[None, :]
    return 2 * h * np.cos(arg + phase), 2 * h * np.cos(arg - phase)


class PQMF(nn.Module):
    """M-band pseudo-QMF analysis / synthesis with delay-compensated (centred) filtering."""

    def __init__(self, bands: int, taps: int | None = None, attenuation_db: float = 100.0) -> None:
        super().__init__()
        if bands < 2 or bands & (bands - 1):
            raise ValueError(f"PQMF band count must be a power of 2 >= 2, got {bands}")
        self.bands = bands
        self.taps = taps or default_taps(bands)
        analysis, synthesis = pqmf_filters(bands, self.taps, attenuation_db)
        # conv1d correlates, so the analysis filters are stored time-reversed; the transposed
        # conv of the synthesis is a true convolution and takes them as they are.
        self.register_buffer(
            "analysis_weight",
            torch.tensor(analysis[:, None, ::-1].copy(), dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "synthesis_weight",
            torch.tensor(synthesis[:, None, :] * bands, dtype=torch.float32),
            persistent=False,
        )
        self.pad_analysis = self.taps // 2
        self.pad_synthesis = self.taps - 1 - self.pad_analysis
        self.output_padding = bands + self.taps - 2 - 2 * self.pad_analysis

    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T] -> [B, M, T / M]; T must be a multiple of M."""
        if x.shape[-1] % self.bands:
            raise ValueError(f"PQMF input length {x.shape[-1]} is not a multiple of {self.bands}")
        x = F.pad(x, (self.pad_analysis, self.pad_synthesis))
        return F.conv1d(x, self.analysis_weight.to(x.dtype), stride=self.bands)

    def synthesis(self, bands: torch.Tensor) -> torch.Tensor:
        """[B, M, L] -> [B, 1, L * M]."""
        return F.conv_transpose1d(
            bands,
            self.synthesis_weight.to(bands.dtype),
            stride=self.bands,
            padding=self.pad_synthesis,
            output_padding=self.output_padding,
        )

    def analysis_span(self, lo: int, hi: int) -> tuple[int, int]:
        """Input samples that band frames lo..hi depend on."""
        start = -self.pad_analysis
        return lo * self.bands + start, hi * self.bands + start + self.taps - 1

    def synthesis_span(self, lo: int, hi: int) -> tuple[int, int]:
        """Band frames that output samples lo..hi depend on."""
        p, k, s = self.pad_synthesis, self.taps, self.bands
        return -((-(lo + p - k + 1)) // s), (hi + p) // s


class PQMFAnalysis(nn.Module):
    """The analysis half as a layer ([B, 1, T] -> [B, M, T / M]) with its input span."""

    def __init__(self, pqmf: PQMF) -> None:
        super().__init__()
        self.pqmf = pqmf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pqmf.analysis(x)

    def input_span(self, lo: int, hi: int) -> tuple[int, int]:
        return self.pqmf.analysis_span(lo, hi)


class PQMFSynthesis(nn.Module):
    """The synthesis half as a layer ([B, M, L] -> [B, 1, L * M]) with its input span."""

    def __init__(self, pqmf: PQMF) -> None:
        super().__init__()
        self.pqmf = pqmf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pqmf.synthesis(x)

    def input_span(self, lo: int, hi: int) -> tuple[int, int]:
        return self.pqmf.synthesis_span(lo, hi)
