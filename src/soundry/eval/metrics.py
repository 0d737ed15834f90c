"""Core reconstruction and codebook metrics (used by validation and `soundry eval`).

Signal metrics take a reference and an estimate of the same shape, numpy arrays or torch
tensors, [C, T] or [B, C, T] (channels first), and return a Python float averaged over the
batch. They run without gradients, in float64.

- `mel_distance`: DAC's MelSpectrogramLoss as used for training and in the DAC paper and
  Codec-SUPERB (7 scales: windows 32..2048, hop window/4, n_mels 5..320, periodic Hann,
  centred reflect-padded STFT, magnitude power 1, slaney mel fmin 0 fmax sr/2,
  log10(clamp(mel, 1e-5)), mean L1 per scale, summed over scales).
- `stft_distance`: DAC's MultiScaleSTFTLoss defaults (its evaluation metric): windows
  [2048, 512], hop window/4, L1 of log10(clamp(|X|, 1e-5) ** 2) plus L1 of |X| (weights 1).
- `si_sdr`: scale-invariant SDR in dB (both signals made zero-mean per item, channels
  flattened per item as DAC does); +inf for identical signals.
- `l1`: mean absolute sample difference.
- `onset_pop`: the estimate's energy in its first 10 ms over the reference's, in dB (a
  generator's pop at the start of its output reads well above 0).
- `spectral_line`: the largest time-averaged log-spectral excess of the estimate over the
  reference at one frequency bin beyond that of its neighbouring bins, in dB (a stationary
  line a GAN adds reads high; broadband residue does not).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from soundry.errors import DataError
from soundry.losses.config import MelLossConfig, STFTLossConfig
from soundry.losses.spectral import MelLoss, MultiResolutionSTFTLoss


def _to_batch(x: Any, name: str) -> torch.Tensor:
    """numpy/torch [C, T] or [B, C, T] -> float64 CPU tensor [B, C, T]."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    t = t.to(device="cpu", dtype=torch.float64)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise DataError(
            f"{name} must be [channels, time] or [batch, channels, time], "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _pair(ref: Any, est: Any) -> tuple[torch.Tensor, torch.Tensor]:
    r, e = _to_batch(ref, "reference"), _to_batch(est, "estimate")
    if r.shape != e.shape:
        raise DataError(
            f"reference {tuple(r.shape)} and estimate {tuple(e.shape)} differ in shape; "
            "trim or resample them to the same length and channel count"
        )
    return r, e


_MEL_LOSSES: dict[int, MelLoss] = {}
_STFT_LOSS = MultiResolutionSTFTLoss(STFTLossConfig())


@torch.no_grad()
def mel_distance(ref: Any, est: Any, sample_rate: int) -> float:
    """DAC's 7-scale log-mel L1 distance (0 for identical signals)."""
    r, e = _pair(ref, est)
    loss = _MEL_LOSSES.get(sample_rate)
    if loss is None:
        loss = _MEL_LOSSES[sample_rate] = MelLoss(MelLossConfig(), sample_rate)
    return float(loss(e, r))


@torch.no_grad()
def stft_distance(ref: Any, est: Any, sample_rate: int | None = None) -> float:
    """DAC's multi-scale STFT distance (0 for identical signals); sample_rate is unused."""
    r, e = _pair(ref, est)
    return float(_STFT_LOSS(e, r))


@torch.no_grad()
def si_sdr(ref: Any, est: Any) -> float:
    """Scale-invariant SDR in dB, mean over batch items (+inf when est equals ref).

    Per item (channels flattened): r, e made zero-mean; a = <e, r> / <r, r>;
    SI-SDR = 10 log10(|a r|^2 / |e - a r|^2). An all-zero estimate gives -inf; a silent
    reference makes the ratio undefined and gives nan.
    """
    r, e = _pair(ref, est)
    r = r.reshape(r.shape[0], -1)
    e = e.reshape(e.shape[0], -1)
    r = r - r.mean(dim=-1, keepdim=True)
    e = e - e.mean(dim=-1, keepdim=True)
    values = []
    for ri, ei in zip(r, e, strict=True):
        energy = float(ri @ ri)
        if energy == 0.0:
            values.append(math.nan)
            continue
        target = (float(ei @ ri) / energy) * ri
        noise = ei - target
        signal_energy, noise_energy = float(target @ target), float(noise @ noise)
        if noise_energy == 0.0:
            values.append(math.inf if signal_energy > 0 else -math.inf)
        elif signal_energy == 0.0:
            values.append(-math.inf)
        else:
            values.append(10.0 * math.log10(signal_energy / noise_energy))
    return float(np.mean(values))


@torch.no_grad()
def onset_pop(ref: Any, est: Any, sample_rate: int, seconds: float = 0.01) -> float:
    """10 log10(energy of est / energy of ref) over the first `seconds` of each item, mean
    over items, in dB. Both energies get a floor of -30 dB re the reference's mean power
    over the whole item, so a start that is silent in the target reads a pop only when the
    output is loud there, not for a faint noise floor."""
    r, e = _pair(ref, est)
    n = max(1, int(round(seconds * sample_rate)))
    floor = 1e-3 * r.square().mean(dim=(1, 2)) * n * r.shape[1] + 1e-20
    er = r[..., :n].square().sum(dim=(1, 2)) + floor
    ee = e[..., :n].square().sum(dim=(1, 2)) + floor
    return float((10.0 * torch.log10(ee / er)).mean())


@torch.no_grad()
def spectral_line(ref: Any, est: Any, n_fft: int = 2048, neighbours: int = 16) -> float:
    """The largest narrow-band excess of est over ref, in dB, mean over items.

    Per bin f: the time-averaged 10 log10(|E|^2 / |R|^2) (Hann STFT, hop n_fft / 4; both
    powers floored at -50 dB re the reference's mean bin power, so silent bins do not read
    a faint noise floor); the line is that excess minus the median excess of the bins within
    `neighbours` of f, maximised over f. A stationary line the estimate adds at one
    frequency stands out of its neighbourhood; broadband residue (noise a denoiser left in a
    whole band) raises the neighbourhood with it and reads near 0.
    """
    r, e = _pair(ref, est)
    n_fft = min(n_fft, r.shape[-1])
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def power(x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, n_fft // 4, window=window,
                          return_complex=True)
        return spec.abs().square().reshape(x.shape[0], x.shape[1], *spec.shape[-2:])

    pr, pe = power(r), power(e)
    floor = 1e-5 * pr.mean(dim=(1, 2, 3), keepdim=True) + 1e-20
    excess = (10.0 * torch.log10((pe + floor) / (pr + floor))).mean(dim=(1, 3))  # [B, F]
    padded = torch.nn.functional.pad(excess[:, None], (neighbours, neighbours),
                                     mode="replicate")[:, 0]
    local = padded.unfold(-1, 2 * neighbours + 1, 1).median(dim=-1).values  # [B, F]
    return float((excess - local).amax(dim=-1).mean())


@torch.no_grad()
def l1(ref: Any, est: Any) -> float:
    """Mean absolute sample difference."""
    r, e = _pair(ref, est)
    return float((r - e).abs().mean())


def codebook_usage(codes: Any, codebook_size: int) -> dict[str, list[float]]:
    """Per-level codebook statistics of codes [B, K, F] (or [K, N]).

    Returns lists with one value per level k:
    - "usage": fraction of the codebook's entries that occur at least once;
    - "perplexity": exp(entropy) of the level's code histogram (1 = one code only,
      codebook_size = all codes equally often);
    - "dead": number of entries that never occur.
    """
    c = torch.as_tensor(np.asarray(codes)) if not isinstance(codes, torch.Tensor) else codes
    c = c.detach().to("cpu", torch.int64)
    if c.dim() == 3:
        n_levels = c.shape[1]
        c = c.transpose(0, 1).reshape(n_levels, -1)
    if c.dim() != 2:
        raise DataError(
            f"codes must be [batch, levels, frames] or [levels, n], got {tuple(c.shape)}"
        )
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
        raise DataError(
            f"codes must lie in [0, {codebook_size}), got [{int(c.min())}, {int(c.max())}]"
        )
    usage, perplexity, dead = [], [], []
    for level in c:
        counts = torch.bincount(level, minlength=codebook_size).double()
        used = int((counts > 0).sum())
        total = float(counts.sum())
        if total > 0:
            p = counts[counts > 0] / total
            perplexity.append(float(torch.exp(-(p * p.log()).sum())))
        else:
            perplexity.append(0.0)
        usage.append(used / codebook_size)
        dead.append(float(codebook_size - used))
    return {"usage": usage, "perplexity": perplexity, "dead": dead}


def bitrate_kbps(frame_rate: float, n_levels: int, codebook_size: int) -> float:
    """Bits per second / 1000 of `n_levels` codes of log2(codebook_size) bits per frame."""
    return frame_rate * n_levels * math.log2(codebook_size) / 1000.0
