"""One adversarial training step, shared by every system with a discriminator.

A task computes its generator's output, then hands real and generated signals to
`GanStep.run` with its own (non-adversarial) loss terms::

    plan = self.gan.plan(step, self.recipe.losses.weights())
    fake = generator(x) if plan.generator else no_grad(generator)(x)
    logs = self.gan.run(plan, real=x, fake=fake, updater=updater,
                        generator_terms=lambda: {"mel": mel_loss(fake, x)}, terms=TERMS)

What `run` does, in order:

1. discriminator update (phases with `discriminator: true`): real and *detached* generated
   audio go through the discriminator as one batch (fewer, larger convolutions); its
   loss (lsgan or hinge) goes to `updater.update("discriminator", ...)`. The real half's
   feature maps are kept, detached, for feature matching;
2. without a discriminator update but with adversarial losses, real audio goes through the
   discriminator once under `no_grad` for the same purpose;
3. generator update (phases with `generator: true`): the task's terms, then with
   `adversarial: true` the generated audio through the *frozen* discriminator (no weight
   gradients are computed) for the adversarial and feature-matching terms (against the
   pre-update real features, as DAC), all weighted once by `LossTerms.total` and sent to
   `updater.update("generator", ...)`.

Weights come from the recipe, overridden by the current phase's `weights:` and with the
adversarial and feature-matching weights scaled by the phase's ramp (`GanScheduleConfig`).

Signals are [B, C, T] tensors or `SpectrogramCache`s of them (so STFTs a reconstruction loss
computed are shared with a multi-resolution discriminator). With a `window` (samples), the
discriminator sees one random window of each item instead, the same one of real and fake,
drawn from (seed, step) so that a resumed run draws the same windows. A discriminator is called as
`disc(audio, spec)` (spec: a `SpectrogramCache` of audio) and returns a list of
`DiscOutput`, one per sub-discriminator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from soundry.audio.dsp import SpectrogramCache
from soundry.losses.adversarial import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from soundry.losses.terms import ADVERSARIAL_TERMS, LossTerms
from soundry.nn.disc_output import DiscOutput, split_outputs
from soundry.nn.keyed_random import item_uniforms
from soundry.train.gan_schedule import GanScheduleConfig, PhaseConfig, PhaseTimer
from soundry.train.sections import section
from soundry.train.task import TaskContext, Updater, frozen

Signal = torch.Tensor | SpectrogramCache


@dataclass(frozen=True)
class GanPlan:
    """What one step does: its phase and the loss weights in force."""

    phase: PhaseConfig
    weights: dict[str, float]
    step: int = 0  # the engine's 1-based step (seeds the discriminator windows)

    @property
    def generator(self) -> bool:
        return self.phase.generator

    @property
    def discriminator(self) -> bool:
        return self.phase.discriminator

    @property
    def adversarial(self) -> bool:
        """The generator sees adversarial and feature-matching terms this step."""
        return self.phase.generator and self.phase.adversarial


class GanStep:
    """The shared discriminator/generator update of a GAN-trained system.

    `discriminator`: the network behind the optimizer named `disc_optimizer`; the generator's
    optimizer is `gen_optimizer`. `kind`: the adversarial objective (lsgan or hinge).
    `ctx`: the task's context, whose `progress` and `max_steps` place phases that last
    `until` a fraction of the run; their resolved steps are in `state_dict()`, which the
    task puts in its checkpoints' extra state.
    """

    terms = ADVERSARIAL_TERMS

    def __init__(
        self,
        discriminator: nn.Module,
        schedule: GanScheduleConfig,
        kind: Literal["lsgan", "hinge"] = "lsgan",
        gen_optimizer: str = "generator",
        disc_optimizer: str = "discriminator",
        sample_rate: int | None = None,
        seed: int = 0,
        ctx: TaskContext | None = None,
    ) -> None:
        self.discriminator = discriminator
        self.schedule = schedule
        self.ctx = ctx
        self.timer = PhaseTimer(schedule)
        self.kind = kind
        self.gen_optimizer = gen_optimizer
        self.disc_optimizer = disc_optimizer
        # the discriminators' window in samples (schedule.discriminator_seconds)
        self.window = schedule.window_samples(sample_rate) if sample_rate else None
        self.seed = seed

    def plan(self, step: int, weights: Mapping[str, float], resolve: bool = True) -> GanPlan:
        """The plan of the engine's (1-based) `step`, from the recipe's loss `weights`.
        `resolve`: `step` is the step being trained now, which places time-defined phase
        boundaries; pass False to ask about another step without changing them."""
        # The engine numbers optimizer steps from 1; schedules count from 0.
        if self.ctx is not None:  # read each time: the engine fills the context late
            self.timer.progress, self.timer.max_steps = self.ctx.progress, self.ctx.max_steps
        phase = self.timer.phase_at(step - 1, resolve)
        current = dict(weights)
        current.update(phase.weights)
        ramp = self.timer.ramp(step - 1)
        for name in self.terms.names:
            if name in current:
                current[name] *= ramp
        return GanPlan(phase, current, step)

    def state_dict(self) -> dict[str, Any]:
        """The phase boundaries resolved so far (JSON-serialisable)."""
        return self.timer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.timer.load_state_dict(state)

    def windows(self, real: SpectrogramCache, fake: SpectrogramCache, step: int,
                item_ids: torch.Tensor | None = None
                ) -> tuple[SpectrogramCache, SpectrogramCache]:
        """Real and fake cut to the same random `window` of each item (or as they are).

        Offsets are uniform over the item's valid starts, one per item (row), keyed by (seed,
        step, item id): independent of the global RNG, reproducible, and the same for an item
        whatever batch or process holds it. `item_ids` [rows]: the rows' global ids (see
        `soundry.nn.keyed_random.fold_ids`); None: the row numbers.
        """
        length = real.shape[-1]
        if self.window is None or self.window >= length:
            return real, fake
        rows = real.shape[0]
        ids = torch.arange(rows) if item_ids is None else item_ids
        u = item_uniforms(ids, self.seed, step, 0x3D0A)[:, 0]
        starts = (u * (length - self.window + 1)).long().clamp(max=length - self.window)
        index = (starts[:, None] + torch.arange(self.window)).to(real.audio.device)

        def cut(x: torch.Tensor) -> SpectrogramCache:
            return SpectrogramCache(x.gather(-1, index[:, None, :].expand(*x.shape[:2], -1)))

        return cut(real.audio), cut(fake.audio)

    def _score(self, signal: SpectrogramCache) -> list[DiscOutput]:
        return self.discriminator(signal.audio, signal)

    def run(
        self,
        plan: GanPlan,
        real: Signal,
        fake: Signal,
        updater: Updater,
        generator_terms: Callable[[], dict[str, torch.Tensor]],
        terms: LossTerms,
        item_ids: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """One step; returns the detached values to log (loss/d, loss/g, loss/<term>).

        `generator_terms()` is called after the discriminator update and only when the
        generator trains; it returns the task's unweighted terms. `terms` are the task's
        declared terms (they must include this step's adversarial ones). `item_ids`: the
        global ids of the signals' rows, keying the discriminator windows (`windows`).
        """
        real_s = real if isinstance(real, SpectrogramCache) else SpectrogramCache(real)
        fake_s = fake if isinstance(fake, SpectrogramCache) else SpectrogramCache(fake)
        real_s, fake_s = self.windows(real_s, fake_s, plan.step, item_ids)
        logs: dict[str, Any] = {}
        real_outs: list[DiscOutput] | None = None
        if plan.discriminator:
            with section("discriminator"):
                both = SpectrogramCache.cat([real_s, fake_s.detach()])
                outs = self._score(both)
                real_outs, fake_outs = split_outputs(outs, [real_s.shape[0], fake_s.shape[0]])
                loss_d = discriminator_loss(real_outs, fake_outs, self.kind)
            updater.update(self.disc_optimizer, loss_d)
            logs["loss/d"] = loss_d.detach()
            real_outs = [o.detached() for o in real_outs]
        elif plan.adversarial:
            with torch.no_grad(), section("discriminator"):
                real_outs = self._score(real_s)
        if not plan.generator:
            return logs

        with section("losses"):
            values = dict(generator_terms())
        if plan.adversarial:
            assert real_outs is not None
            with frozen(self.discriminator), section("discriminator"):
                fake_outs = self._score(fake_s)
            with section("losses"):
                values["adversarial"] = generator_adversarial_loss(fake_outs, self.kind)
                values["feature_matching"] = feature_matching_loss(real_outs, fake_outs)
        loss_g = terms.total(values, plan.weights)
        updater.update(self.gen_optimizer, loss_g)
        logs["loss/g"] = loss_g.detach()
        for name, value in values.items():
            logs[f"loss/{name}"] = value.detach()
        return logs
