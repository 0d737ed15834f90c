"""Is a one-shot VAE's generation good? Figures and a verdict from prior samples.

`score_vae(vae, train, heldout)` draws prior samples and measures, with DAC's mel distance
(`soundry.eval.set_metrics`):

- silence: samples with RMS under 1e-3;
- copying: each sample's distance to its nearest training sound ("nearest"), against the
  median reconstruction error of held-out sounds (a sample closer to a training sound than
  a reconstruction is to its input is a copy);
- realism: the samples' nearest-training distances against the range of held-out real
  sounds' nearest-training distances, and a Frechet distance on log-mel frame statistics
  from samples to held-out sounds, beside two baselines: white-noise bursts with the data's
  envelope statistics, and the decoder fed N(0, I) draws (the prior flow skipped);
- diversity: mean pairwise distance between samples against that of the training sounds;
- density: the prior's NLL of held-out latents (posterior means through the posterior flow)
  against N(0, I)'s, nats per dimension;
- interpolation: 9-step paths between held-out pairs: the largest neighbour-to-neighbour
  distance over the smallest, and the ends' distance to the reconstructions of A and B.

`vae_verdict(scores)` applies the acceptance thresholds (`GenerationCriteria`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from soundry.eval.set_metrics import (
    MelFeatures,
    frechet_distance,
    log_mel_frames,
    mean_pairwise_distance,
    nearest_distances,
    pairwise_mel_distance,
)


@dataclass(frozen=True)
class GenerationCriteria:
    """Thresholds of `vae_verdict`."""

    max_silent: int = 0
    in_range_share: float = 0.9  # samples whose nearest distance lies in the held-out range
    diversity_ratio: float = 0.5  # sample diversity / data diversity
    nll_margin: float = 0.1  # nats per dimension the prior beats N(0, I) by
    max_step_ratio: float = 3.0  # largest / smallest neighbour distance on a path


def noise_bursts(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """White noise shaped by each reference sound's own RMS envelope (10 ms frames)."""
    gen = torch.Generator().manual_seed(seed)
    n, c, t = like.shape
    hop = max(1, t // 100)
    frames = like[..., : t // hop * hop].reshape(n, c, -1, hop)
    env = frames.square().mean(dim=-1, keepdim=True).sqrt().expand(-1, -1, -1, hop)
    env = env.reshape(n, c, -1)
    env = torch.nn.functional.pad(env, (0, t - env.shape[-1]))
    return (torch.randn(n, c, t, generator=gen) * env).clamp(-1, 1)


@torch.no_grad()
def score_vae(vae: Any, train: torch.Tensor, heldout: torch.Tensor, n_samples: int = 32,
              seed: int = 0, temperature: float | None = None, pairs: int = 8,
              steps: int = 9) -> dict[str, Any]:
    """Figures of the module docstring. train, heldout: sounds [N, C, vae.n_samples];
    temperature None: the model's default (`sample_temperature`)."""
    from soundry.models.vae import encode_set
    from soundry.nn.flows import standard_normal_log_prob

    sr = vae.sample_rate
    feats = MelFeatures(sr)
    device = next(vae.parameters()).device
    train_f, held_f = feats(train), feats(heldout)

    enc = encode_set(vae, heldout.to(device))
    recon_err = np.diag(pairwise_mel_distance(feats(enc["audio"]), held_f))
    held_near = nearest_distances(held_f, train_f)

    if temperature is None:
        temperature = float(vae.config.sample_temperature)
    samples, _ = vae.sample(n_samples, temperature, seed=seed)
    samples = samples.float().cpu()
    sample_f = feats(samples)
    near = nearest_distances(sample_f, train_f)
    rms = samples.square().mean(dim=(1, 2)).sqrt()
    gen = torch.Generator().manual_seed(seed)
    plain = vae.decode(torch.randn(n_samples, vae.latent_dim, generator=gen).to(device))
    plain = plain.float().cpu()
    noise = noise_bursts(heldout[torch.arange(n_samples) % len(heldout)], seed)

    held_frames = log_mel_frames(heldout, sr)
    fd = {name: frechet_distance(log_mel_frames(x, sr), held_frames)
          for name, x in (("samples", samples), ("noise_bursts", noise),
                          ("decoder_normal", plain), ("train", train))}

    z = enc["z"].to(device)
    d = vae.latent_dim
    nll_prior = float(-vae.prior_log_prob(z).mean()) / d
    nll_normal = float(-standard_normal_log_prob(z).mean()) / d

    rng = np.random.default_rng(seed)
    ratios, end_errors = [], []
    for _ in range(min(pairs, len(heldout) // 2)):
        i, j = rng.choice(len(heldout), 2, replace=False)
        path, _ = vae.interpolate(heldout[i].to(device), heldout[j].to(device), steps)
        pf = feats(path.float().cpu())
        gaps = np.array([pairwise_mel_distance([f[k:k + 1] for f in pf],
                                               [f[k + 1:k + 2] for f in pf])[0, 0]
                         for k in range(steps - 1)])
        ratios.append(float(gaps.max() / max(gaps.min(), 1e-9)))
        ends = [f[[0, steps - 1]] for f in pf]
        recon = [f[[i, j]] for f in feats(enc["audio"])]
        end_errors.append(float(np.diag(pairwise_mel_distance(ends, recon)).max()))

    lo, hi = float(held_near.min()), float(held_near.max())
    return {
        "samples": n_samples, "temperature": temperature, "seed": seed,
        "silent": int((rms < 1e-3).sum()),
        "sample_rms_min": float(rms.min()), "sample_peak_max": float(samples.abs().max()),
        "recon_mel_median": float(np.median(recon_err)),
        "recon_mel_mean": float(np.mean(recon_err)),
        "nearest_train": _dist(near),
        "heldout_nearest_train": _dist(held_near),
        "copies": int((near <= np.median(recon_err)).sum()),
        "in_range_share": float(((near >= lo) & (near <= hi)).mean()),
        "diversity_samples": mean_pairwise_distance(sample_f),
        "diversity_train": mean_pairwise_distance(train_f),
        "frechet": fd,
        "nll_per_dim": {"prior": nll_prior, "normal": nll_normal},
        "interpolation": {"pairs": len(ratios), "step_ratio_max": max(ratios, default=np.nan),
                          "step_ratio_median": float(np.median(ratios)) if ratios else np.nan,
                          "end_to_recon_max": max(end_errors, default=np.nan)},
    }


def _dist(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(("min", "p10", "median", "p90", "max"), map(float, q), strict=True))


def vae_verdict(s: dict[str, Any], criteria: GenerationCriteria | None = None
                ) -> tuple[bool, list[str], dict[str, Any]]:
    """(passed, reasons it failed, the criteria) for scores from `score_vae`."""
    c = criteria or GenerationCriteria()
    reasons = []
    if s["silent"] > c.max_silent:
        reasons.append(f"{s['silent']} silent samples")
    if s["copies"]:
        reasons.append(f"{s['copies']} samples nearer a training sound than the median "
                       f"held-out reconstruction error ({s['recon_mel_median']:.3f})")
    if s["in_range_share"] < c.in_range_share:
        reasons.append(f"only {s['in_range_share']:.0%} of samples' nearest-training "
                       "distances lie in the held-out range")
    fd = s["frechet"]
    for base in ("noise_bursts", "decoder_normal"):
        if not fd["samples"] < fd[base]:
            reasons.append(f"Frechet distance {fd['samples']:.2f} not below {base}'s "
                           f"{fd[base]:.2f}")
    if not s["diversity_samples"] >= c.diversity_ratio * s["diversity_train"]:
        reasons.append(f"diversity {s['diversity_samples']:.3f} under {c.diversity_ratio} x "
                       f"the data's {s['diversity_train']:.3f}")
    nll = s["nll_per_dim"]
    if not nll["prior"] < nll["normal"] - c.nll_margin:
        reasons.append(f"prior NLL {nll['prior']:.3f} not {c.nll_margin} nats/dim below "
                       f"N(0, I)'s {nll['normal']:.3f}")
    interp = s["interpolation"]
    if not interp["step_ratio_max"] <= c.max_step_ratio:
        reasons.append(f"an interpolation step ratio of {interp['step_ratio_max']:.2f} "
                       f"(> {c.max_step_ratio})")
    if not interp["end_to_recon_max"] <= s["recon_mel_median"]:
        reasons.append("interpolation ends are farther from the reconstructions than the "
                       "reconstruction error")
    return not reasons, reasons, asdict(c)
