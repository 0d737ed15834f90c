"""A toy task for testing and benchmarking the engine: denoise synthetic audio-like signals.

Items are sums of decaying harmonic tones (audio-like, but generated on the fly: no files).
Item `index` of epoch `epoch` is made by a generator seeded with (seed, epoch, index) and
augmented (random gain, polarity, additive noise) by the same generator, so items vary per
epoch yet any batch can be rebuilt exactly after a resume, by any worker.

The generator is a small conv autoencoder (weight-normed convs, a transposed-conv upsampler,
dropout) trained with L1 to recover the clean signal from the noisy one; with
`toy.adversarial` a tiny conv discriminator with its own optimizer joins through the shared
GAN step (`soundry.train.gan`): LSGAN losses, feature matching (weight `toy.fm_weight`) and
the phases of `schedule:`, so the multi-network path is exercised the way every system
uses it. This module is also the worked example of how a system plugs in (README).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from soundry.config import Strict
from soundry.errors import ConfigError
from soundry.losses.terms import ADVERSARIAL_TERMS, LossTerm, LossTerms
from soundry.nn.disc_output import DiscOutput
from soundry.train.config import AdamWConfig, OptimizerConfig
from soundry.train.gan import GanStep
from soundry.train.gan_schedule import GanScheduleConfig
from soundry.train.optim import build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import register_task
from soundry.train.task import OptimizerSpec, Task, TaskContext, Validation

# ----------------------------------------------------------------------------- config


class ToyModelConfig(Strict):
    """Autoencoder size: `layers` stride-2 down/up-sampling stages of `channels` channels."""

    channels: int = Field(16, ge=1)
    layers: int = Field(2, ge=1, le=6)
    kernel_size: int = Field(7, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    weight_norm: bool = True
    disc_channels: int = Field(8, ge=1)


class ToyConfig(Strict):
    """Synthetic data and losses of the toy task.

    `nan_at_steps`: training steps whose batch is replaced by NaN (to test the NaN guard).
    """

    items_per_epoch: int = Field(256, ge=1)
    noise: float = Field(0.05, ge=0)
    gain_db: float = Field(6.0, ge=0)
    adversarial: bool = True
    adv_weight: float = Field(0.1, ge=0)
    fm_weight: float = Field(0.0, ge=0)  # feature matching (off: the toy's original objective)
    valid_clips: int = Field(2, ge=0)
    nan_at_steps: list[int] = Field(default_factory=list)


class ToyOptim(Strict):
    generator: OptimizerConfig = Field(default_factory=lambda: AdamWConfig(lr=1e-3))
    discriminator: OptimizerConfig = Field(default_factory=lambda: AdamWConfig(lr=1e-3))


# The terms of a toy step: its own reconstruction term and the shared adversarial ones.
TOY_TERMS = LossTerms([LossTerm("recon", 1.0, "L1 between the output and the clean signal")]
                      ) + ADVERSARIAL_TERMS


class ToyRecipe(RecipeBase):
    """Recipe of the toy task (`task: toy`)."""

    loss_terms: ClassVar[LossTerms] = TOY_TERMS

    task: Literal["toy"] = "toy"
    model: ToyModelConfig = Field(default_factory=ToyModelConfig)
    toy: ToyConfig = Field(default_factory=ToyConfig)
    schedule: GanScheduleConfig = Field(default_factory=GanScheduleConfig)
    optim: ToyOptim = Field(default_factory=ToyOptim)

    @model_validator(mode="after")
    def _check(self) -> ToyRecipe:
        if self.data.sources or self.data.valid:
            raise ValueError("the toy task makes its own data; data.sources and data.valid "
                             "must be empty")
        if not self.toy.adversarial and self.schedule != GanScheduleConfig():
            raise ValueError("schedule: needs toy.adversarial (without a discriminator there "
                             "is nothing to schedule)")
        return self

    def weights(self) -> dict[str, float]:
        """The recipe's loss weights, by term."""
        return {"recon": 1.0, "adversarial": self.toy.adv_weight,
                "feature_matching": self.toy.fm_weight}


# ----------------------------------------------------------------------------- data


def segment_length(seconds: float, sample_rate: int, multiple: int) -> int:
    """Samples in `seconds`, rounded up to a multiple of the model's total stride."""
    n = max(1, round(seconds * sample_rate))
    return -(-n // multiple) * multiple


def synth_item(rng: np.random.Generator, channels: int, length: int, sample_rate: int,
               gain_db: float, noise: float) -> dict[str, torch.Tensor]:
    """One clean/noisy pair, each float32 [channels, length] in [-1, 1]."""
    t = np.arange(length) / sample_rate
    clean = np.zeros(length)
    nyquist = sample_rate / 2
    for _ in range(rng.integers(1, 4)):
        f0 = rng.uniform(60.0, min(1500.0, nyquist / 2))
        onset = rng.uniform(0, 0.5) * t[-1] if length > 1 else 0.0
        env = np.where(t >= onset, np.exp(-(t - onset) * rng.uniform(1.0, 12.0)), 0.0)
        for h in range(1, 5):
            if f0 * h < nyquist:
                phase = rng.uniform(0, 2 * np.pi)
                clean += env * rng.uniform(0.1, 0.5) / h * np.sin(2 * np.pi * f0 * h * t + phase)
    clean /= max(1.0, np.abs(clean).max() / 0.9)
    # augmentations, drawn from the same generator
    clean *= 10 ** (rng.uniform(-gain_db, gain_db) / 20) * rng.choice([-1.0, 1.0])
    # a gain above 0 dB is peak-limited, not clipped: clipped targets would teach distortion
    clean /= max(1.0, np.abs(clean).max() / 0.99)
    spread = np.stack([clean * rng.uniform(0.7, 1.0) for _ in range(channels)])
    noisy = np.clip(spread + noise * rng.standard_normal(spread.shape), -1, 1)
    return {"audio": torch.from_numpy(spread.astype(np.float32)),
            "noisy": torch.from_numpy(noisy.astype(np.float32))}


class ToyDataset(torch.utils.data.Dataset):
    """Map-style dataset keyed by (epoch, index)."""

    def __init__(self, recipe: ToyRecipe, length: int, overfit: int | None) -> None:
        self.recipe = recipe
        self.length = length
        self.overfit = overfit

    def __len__(self) -> int:
        return self.overfit or self.recipe.toy.items_per_epoch

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        if self.overfit:  # the same N items every epoch
            epoch = 0
        r, d = self.recipe, self.recipe.data
        rng = np.random.default_rng([r.seed, epoch, index])
        return synth_item(rng, d.channels, self.length, d.sample_rate, r.toy.gain_db, r.toy.noise)


class ToyLoader:
    """Endless, resumable batches: epoch-wise permutations seeded by (seed, epoch).

    Each process takes every world_size-th item of the permutation. The position is the
    number of batches handed out in the current epoch; workers may prefetch ahead of it.
    """

    def __init__(self, dataset: ToyDataset, batch_size: int, seed: int, num_workers: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset
        self.batch_size = min(batch_size, len(dataset) // world_size)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = num_workers
        self.epoch, self.batch = 0, 0
        if self.batch_size < 1:
            raise ConfigError(f"toy.items_per_epoch ({len(dataset)}) is smaller than the number "
                              f"of processes ({world_size})")

    def _batches_in_epoch(self, epoch: int) -> list[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.dataset))
        mine = order[self.rank :: self.world_size]
        n = len(mine) // self.batch_size
        return [[(epoch, int(i)) for i in mine[b * self.batch_size : (b + 1) * self.batch_size]]
                for b in range(n)]

    def _positions(self) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
        epoch, start = self.epoch, self.batch
        while True:
            batches = self._batches_in_epoch(epoch)
            for b in range(start, len(batches)):
                yield epoch, b, batches[b]
            epoch, start = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        positions = self._positions()
        sampler = (keys for _, _, keys in self._positions())
        # An own generator: DataLoader otherwise draws its worker base seed from the global
        # torch generator, which would shift training randomness (dropout) after a resume.
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
            prefetch_factor=2 if self.num_workers else None,
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch, (epoch, b, _) in zip(loader, positions, strict=False):
            self.epoch, self.batch = epoch, b + 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


# ----------------------------------------------------------------------------- networks


def _conv(cfg: ToyModelConfig, module: nn.Module) -> nn.Module:
    return weight_norm(module) if cfg.weight_norm else module


class ToyAutoencoder(nn.Module):
    """[B, C, T] -> [B, C, T]; T must be a multiple of 2**layers."""

    def __init__(self, channels: int, cfg: ToyModelConfig) -> None:
        super().__init__()
        ch, k = cfg.channels, cfg.kernel_size
        self.stride = 2**cfg.layers
        self.inp = _conv(cfg, nn.Conv1d(channels, ch, k, padding=k // 2))
        self.down = nn.ModuleList(
            _conv(cfg, nn.Conv1d(ch, ch, 4, stride=2, padding=1)) for _ in range(cfg.layers)
        )
        self.mid = _conv(cfg, nn.Conv1d(ch, ch, k, padding=k // 2))
        self.up = nn.ModuleList(
            _conv(cfg, nn.ConvTranspose1d(ch, ch, 4, stride=2, padding=1))
            for _ in range(cfg.layers)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Conv1d(ch, channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for layer in self.down:
            h = layer(F.elu(h))
        h = self.drop(self.mid(F.elu(h)))
        for layer in self.up:
            h = layer(F.elu(h))
        return torch.tanh(self.out(F.elu(h)))


class ToyDiscriminator(nn.Module):
    """[B, C, T] -> one `DiscOutput`: score map [B, 1, T / 16] and two feature maps."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv1d(channels, width, 15, stride=4, padding=7),
            nn.Conv1d(width, width, 9, stride=4, padding=4),
        ])
        self.post = nn.Conv1d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, spec: Any = None) -> list[DiscOutput]:
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return [DiscOutput(self.post(x), features, "toy")]


# ----------------------------------------------------------------------------- task


@register_task("toy")
class ToyTask(Task):
    """Denoising autoencoder (+ optional discriminator) on synthetic audio."""

    recipe_class = ToyRecipe

    def __init__(self, recipe: ToyRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        self.nets: dict[str, nn.Module] = {}
        self.gan: GanStep | None = None

    def networks(self) -> dict[str, nn.Module]:
        if not self.nets:
            channels = self.recipe.data.channels
            self.nets["generator"] = ToyAutoencoder(channels, self.recipe.model)
            if self.recipe.toy.adversarial:
                self.nets["discriminator"] = ToyDiscriminator(channels,
                                                              self.recipe.model.disc_channels)
                self.gan = GanStep(self.nets["discriminator"], self.recipe.schedule, "lsgan",
                                   ctx=self.ctx)
        return self.nets

    def extra_state(self) -> dict[str, Any]:
        """The GAN schedule's resolved phase boundaries (phases that last `until`)."""
        return {"gan": self.gan.state_dict()} if self.gan is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.gan is not None:
            self.gan.load_state_dict(state.get("gan") or {})

    def optimizers(self) -> list[OptimizerSpec]:
        steps = self.recipe.train.max_steps
        specs = []
        if "discriminator" in self.nets:  # the discriminator updates first
            specs.append(build_spec("discriminator", self.recipe.optim.discriminator,
                                    {"discriminator": self.nets["discriminator"]}, steps))
        specs.append(build_spec("generator", self.recipe.optim.generator,
                                {"generator": self.nets["generator"]}, steps))
        return specs

    def _length(self, seconds: float) -> int:
        stride = 2**self.recipe.model.layers
        return segment_length(seconds, self.recipe.data.sample_rate, stride)

    def train_loader(self) -> ToyLoader:
        d = self.recipe.data
        dataset = ToyDataset(self.recipe, self._length(d.segment_seconds), self.ctx.overfit)
        return ToyLoader(dataset, d.batch_size, self.recipe.seed, d.num_workers,
                         self.ctx.rank, self.ctx.world_size)

    def train_step(self, batch: dict[str, torch.Tensor], step: int, updater: Any
                   ) -> dict[str, Any]:
        clean, noisy = batch["audio"], batch["noisy"]
        if step in self.recipe.toy.nan_at_steps:
            noisy = torch.full_like(noisy, float("nan"))
        gen = self.nets["generator"]
        if "discriminator" not in self.nets:  # reconstruction only
            recon = F.l1_loss(gen(noisy).float(), clean)
            updater.update("generator", recon)
            return {"loss/recon": recon.detach()}
        assert self.gan is not None  # built with the discriminator
        plan = self.gan.plan(step, self.recipe.weights())
        if plan.generator:
            out = gen(noisy)
        else:
            with torch.no_grad():
                out = gen(noisy)
        return self.gan.run(plan, clean, out, updater,
                            lambda: {"recon": F.l1_loss(out.float(), clean)}, TOY_TERMS)

    def validate(self, step: int) -> Validation:
        d, toy = self.recipe.data, self.recipe.toy
        length = self._length(d.valid_seconds)
        items = [synth_item(np.random.default_rng([self.recipe.seed, 10**9, i]), d.channels,
                            length, d.sample_rate, toy.gain_db, toy.noise)
                 for i in range(d.valid_count)]
        clean = torch.stack([it["audio"] for it in items]).to(self.ctx.device)
        noisy = torch.stack([it["noisy"] for it in items]).to(self.ctx.device)
        out = self.nets["generator"](noisy).float()
        err = (out - clean).pow(2).mean(dim=(1, 2))
        snr = 10 * torch.log10(clean.pow(2).mean(dim=(1, 2)) / err.clamp_min(1e-12))
        audio = {}
        for i in range(min(toy.valid_clips, d.valid_count)):
            audio[f"clip{i:02d}_ref"] = clean[i].cpu().numpy()
            audio[f"clip{i:02d}_out"] = out[i].cpu().numpy()
        return Validation(
            metrics={"l1": float((out - clean).abs().mean()), "snr_db": float(snr.mean())},
            audio=audio,
            sample_rate=d.sample_rate,
        )

    def ema_networks(self) -> list[str]:
        return ["generator"]
