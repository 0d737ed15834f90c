"""Time the discriminator and loss part of one codec GAN step (no generator network).

Three ways of doing the same D update and G losses with DAC's discriminator (MPD + MRD),
LSGAN, 7-scale mel loss and feature matching:

- `naive`: as DAC's training script does it: D(fake.detach()) and D(real) in the D step;
  in the G step the mel loss computes its own STFTs, D(fake) and D(real) run again and the
  discriminator's weight gradients are computed (and discarded);
- `shared`: real and fake scored as one batch in the D step, real features reused (detached)
  in the G step, D frozen in the G step (no weight gradients), one `SpectrogramCache` per
  signal shared by the mel loss and the MRD;
- `shared_separate`: as `shared` but with two discriminator calls (real, fake) in the D step.

The generated signal comes from a trainable stand-in ([B, 1, T] parameters through tanh),
so the G backward reaches a leaf as it would reach the generator. Prints one JSON line.

    python benchmarks/losses_step.py --sample-rate 16000 --batch-size 2 --segment-seconds 0.384
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from soundry.audio.dsp import SpectrogramCache
from soundry.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from soundry.losses.config import CodecLossConfig, weighted_total
from soundry.losses.spectral import MelLoss
from soundry.models.discriminators import DiscriminatorConfig, build_discriminator, split_outputs
from soundry.train.task import frozen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--segment-seconds", type=float, default=0.384)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=["all", "naive", "shared_separate", "shared"],
                   default="all")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    n = int(a.sample_rate * a.segment_seconds)
    disc = build_discriminator(DiscriminatorConfig(), a.sample_rate)
    cfg = CodecLossConfig()
    weights = cfg.weights()
    mel_loss = MelLoss(cfg.mel, a.sample_rate)
    g_param = torch.nn.Parameter(torch.randn(a.batch_size, 1, n) * 0.3)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4, betas=(0.8, 0.99))
    opt_g = torch.optim.AdamW([g_param], lr=1e-4, betas=(0.8, 0.99))
    real = 0.1 * torch.randn(a.batch_size, 1, n)

    def d_update(loss: torch.Tensor) -> None:
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 10.0)
        opt_d.step()

    def g_update(loss: torch.Tensor) -> None:
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([g_param], 1e3)
        opt_g.step()
        disc.zero_grad(set_to_none=True)

    def naive() -> None:
        fake = torch.tanh(g_param)
        d_update(discriminator_loss(disc(real), disc(fake.detach())))
        terms = {"mel": mel_loss(fake, real)}
        d_fake, d_real = disc(fake), disc(real)
        terms["adversarial"] = generator_adversarial_loss(d_fake)
        terms["feature_matching"] = feature_matching_loss(d_real, d_fake)
        g_update(weighted_total(terms, weights))

    def shared_separate() -> None:
        # As `shared`, but real and fake scored by two discriminator calls in the D step.
        fake = torch.tanh(g_param)
        real_spec, fake_spec = SpectrogramCache(real), SpectrogramCache(fake)
        real_outs = disc(real, real_spec)
        d_update(discriminator_loss(real_outs, disc(fake.detach(), fake_spec.detach())))
        real_outs = [o.detached() for o in real_outs]
        terms = {"mel": mel_loss(fake_spec, real_spec)}
        with frozen(disc):
            fake_outs = disc(fake, fake_spec)
        terms["adversarial"] = generator_adversarial_loss(fake_outs)
        terms["feature_matching"] = feature_matching_loss(real_outs, fake_outs)
        g_update(weighted_total(terms, weights))

    def shared() -> None:
        fake = torch.tanh(g_param)
        b = real.shape[0]
        real_spec, fake_spec = SpectrogramCache(real), SpectrogramCache(fake)
        both = SpectrogramCache.cat([real_spec, fake_spec.detach()])
        real_outs, fake_outs = split_outputs(disc(both.audio, both), [b, b])
        d_update(discriminator_loss(real_outs, fake_outs))
        real_outs = [o.detached() for o in real_outs]
        terms = {"mel": mel_loss(fake_spec, real_spec)}
        with frozen(disc):
            fake_outs = disc(fake, fake_spec)
        terms["adversarial"] = generator_adversarial_loss(fake_outs)
        terms["feature_matching"] = feature_matching_loss(real_outs, fake_outs)
        g_update(weighted_total(terms, weights))

    modes = {"naive": naive, "shared_separate": shared_separate, "shared": shared}
    if a.mode != "all":
        modes = {a.mode: modes[a.mode]}
    times: dict[str, list[float]] = {name: [] for name in modes}
    for step in modes.values():
        step()  # warm-up
    # Interleave the modes so both see the same machine load; report medians.
    for _ in range(a.steps):
        for name, step in modes.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    result: dict[str, object] = {
        "benchmark": "losses_step", "sample_rate": a.sample_rate, "batch_size": a.batch_size,
        "samples": n, "threads": a.threads,
        "D_params": sum(q.numel() for q in disc.parameters()),
    }
    for name, values in times.items():
        result[f"{name}_s_per_step"] = round(statistics.median(values), 4)
    if "naive" in times and "shared" in times:
        result["speedup"] = round(
            statistics.median(times["naive"]) / statistics.median(times["shared"]), 3
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
