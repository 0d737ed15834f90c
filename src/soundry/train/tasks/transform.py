"""Audio-to-audio systems (`task: transform`): a generator (`soundry.models.transform`) maps
degraded audio to clean audio: denoising, bandwidth extension, de-clipping, de-reverb,
codec-artifact removal, pitch un-shifting.

Data are pairs: `batch["input"]` (degraded) and `batch["audio"]` (the clean target), from
paired folders or made on the fly by `data.degrade`. One step: the generator's forward
pass, then the shared adversarial step (`soundry.train.gan.GanStep`) with the terms of
`TRANSFORM_TERMS` (mel, STFT, waveform L1, adversarial, feature matching), phased by the
schedule as in the codec. `gan: false` trains with the reconstruction terms alone (no
discriminator is built): a GAN run and a non-GAN run of one recipe are one override apart.

Validation on fixed pairs (`build_valid_pairs`): SI-SDR of the output and of the input
against the target (`si_sdr_gain` is the headline), mel and STFT distance of both (PESQ and
STOI of both with `valid.speech_metrics`, when installed), and
two artifact measures of the output: `onset_pop` (energy of its first 10 ms over the
target's, dB) and `spectral_line` (largest time-averaged log-spectral excess over the
target, dB). Audio: (input, output, target) triples.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from soundry.audio.dsp import SpectrogramCache
from soundry.config import Strict
from soundry.data.config import DataConfig
from soundry.losses.config import (
    AdversarialLossConfig,
    MelLossConfig,
    STFTLossConfig,
    WeightConfig,
)
from soundry.losses.spectral import MelLoss, MultiResolutionSTFTLoss, spectral_terms
from soundry.losses.terms import ADVERSARIAL_TERMS, LossTerm, LossTerms
from soundry.models.discriminators import DiscriminatorConfig, build_discriminator
from soundry.models.transform import (
    TransformModel,
    TransformModelConfig,
    build_transform,
    transform_export_config,
)
from soundry.nn.keyed_random import fold_ids
from soundry.train.gan import GanStep
from soundry.train.gan_schedule import GanScheduleConfig, PhaseConfig
from soundry.train.optim import build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec, Task, TaskContext, Updater, Validation
from soundry.train.tasks.codec import CodecOptimConfig, fold_channels, safe_name

log = logging.getLogger(__name__)

TRANSFORM_TERMS = LossTerms([
    LossTerm("mel", 15.0, "multi-scale log-mel L1 (DAC's MelSpectrogramLoss)"),
    LossTerm("stft", 0.0, "multi-resolution log/linear STFT magnitude L1"),
    LossTerm("waveform", 1.0, "waveform L1 (keeps the output aligned with the target)"),
]) + ADVERSARIAL_TERMS


class TransformLossConfig(Strict):
    """Every loss term of a transform step and its weight (mel 0 turns it off)."""

    mel: MelLossConfig = Field(default_factory=MelLossConfig)
    stft: STFTLossConfig = Field(default_factory=STFTLossConfig)
    waveform: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=1.0))
    adversarial: AdversarialLossConfig = Field(default_factory=AdversarialLossConfig)
    feature_matching: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=2.0))

    def weights(self) -> dict[str, float]:
        return {name: float(getattr(self, name).weight) for name in TRANSFORM_TERMS.names}


class TransformValidConfig(Strict):
    """What validation logs."""

    audio_clips: int = Field(4, ge=0)  # (input, output, target) triples logged as audio
    # PESQ (wide-band) and STOI of output and input, for speech, when `pesq` / `pystoi` are
    # installed (the [eval] extra); a missing one is skipped with a notice
    speech_metrics: bool = False


class TransformRecipe(RecipeBase):
    """A transform recipe: paired data, model, discriminator, losses, schedule, optimizers.
    `gan: false` drops the discriminator (one reconstruction-only phase)."""

    task: Literal["transform"] = "transform"
    loss_terms: ClassVar[LossTerms] = TRANSFORM_TERMS
    gan: bool = True
    data: DataConfig = Field(default_factory=lambda: DataConfig(degrade={}))
    model: TransformModelConfig = Field(default_factory=TransformModelConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    losses: TransformLossConfig = Field(default_factory=TransformLossConfig)
    schedule: GanScheduleConfig = Field(default_factory=GanScheduleConfig)
    optim: CodecOptimConfig = Field(default_factory=CodecOptimConfig)
    valid: TransformValidConfig = Field(default_factory=TransformValidConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TransformRecipe:
        d, m = self.data, self.model
        if not d.paired:
            raise ValueError("a transform learns degraded -> clean pairs: give paired sources "
                             "(`target:`) or a `data.degrade` section")
        if m.sample_rate != d.sample_rate or m.channels != d.channels:
            raise ValueError(f"model (sample_rate {m.sample_rate}, channels {m.channels}) and "
                             f"data ({d.sample_rate}, {d.channels}) must agree")
        if not self.gan and not any(self.losses.weights()[k] for k in ("mel", "stft",
                                                                          "waveform")):
            raise ValueError("gan: false leaves no loss: give mel, stft or waveform a weight")
        return self

    def effective_schedule(self) -> GanScheduleConfig:
        """The schedule in force: `schedule`, or one reconstruction phase when gan is off."""
        if self.gan:
            return self.schedule
        return GanScheduleConfig(phases=[PhaseConfig(name="recon", discriminator=False,
                                                     adversarial=False)])


@register_task("transform")
class TransformTask(Task):
    """Trains an audio-to-audio generator (against discriminators unless gan is off)."""

    recipe_class = TransformRecipe

    def __init__(self, recipe: TransformRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        with torch.random.fork_rng(devices=[]):  # weights from the run's seed alone
            torch.manual_seed(recipe.seed)
            self.generator: TransformModel = build_transform(recipe.model)
            self.discriminator = build_discriminator(recipe.discriminator,
                                                     recipe.model.sample_rate) \
                if recipe.gan else None
        self.gan = GanStep(self.discriminator or torch.nn.Identity(),
                           recipe.effective_schedule(), recipe.losses.adversarial.type,
                           sample_rate=recipe.model.sample_rate, seed=recipe.seed, ctx=ctx)
        self._losses: tuple[MelLoss, MultiResolutionSTFTLoss] | None = None
        self._valid: list[tuple[str, np.ndarray, np.ndarray]] | None = None
        self._speech: list[str] | None = None

    # -- Task interface --------------------------------------------------------------------

    def networks(self) -> dict[str, torch.nn.Module]:
        nets: dict[str, torch.nn.Module] = {"generator": self.generator}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    def optimizers(self) -> list[OptimizerSpec]:
        steps, optim = self.recipe.train.max_steps, self.recipe.optim
        return [build_spec(name, getattr(optim, name), {name: net}, steps)
                for name, net in reversed(list(self.networks().items()))]

    def train_loader(self) -> Any:
        from soundry.data.loader import build_train_loader

        return build_train_loader(self.recipe.data, seed=self.recipe.seed, hop=1,
                                  overfit=self.ctx.overfit, rank=self.ctx.rank,
                                  world_size=self.ctx.world_size)

    def extra_state(self) -> dict[str, Any]:
        """The GAN schedule's resolved phase boundaries (phases that last `until`)."""
        return {"gan": self.gan.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.gan.load_state_dict(state.get("gan") or {})

    def ema_networks(self) -> list[str]:
        return ["generator"]

    # -- training --------------------------------------------------------------------------

    def weights_at(self, step: int) -> dict[str, float]:
        """Loss weights in force at 0-based schedule `step`."""
        return self.gan.plan(step + 1, self.recipe.losses.weights(), resolve=False).weights

    def _recon_losses(self) -> tuple[MelLoss, MultiResolutionSTFTLoss]:
        if self._losses is None:
            sr = self.recipe.model.sample_rate
            self._losses = (MelLoss(self.recipe.losses.mel, sr),
                            MultiResolutionSTFTLoss(self.recipe.losses.stft, sr))
        return self._losses

    def train_step(self, batch: Any, step: int, updater: Updater) -> dict[str, Any]:
        target, degraded = batch["audio"], batch["input"]
        plan = self.gan.plan(step, self.recipe.losses.weights())
        with section("generator/forward"):
            if plan.generator:
                y = self.generator(degraded)
            else:
                with torch.no_grad():
                    y = self.generator(degraded)
        mel, stft = self._recon_losses()
        real = SpectrogramCache(fold_channels(target))
        fake = SpectrogramCache(fold_channels(y))

        def generator_terms() -> dict[str, torch.Tensor]:
            return spectral_terms(plan.weights, fake, real, mel, stft)

        return self.gan.run(plan, real, fake, updater, generator_terms, TRANSFORM_TERMS,
                            item_ids=fold_ids(batch.get("index"), target.shape[1]))

    # -- validation ------------------------------------------------------------------------

    def valid_pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        if self._valid is None:
            from soundry.data.loader import build_valid_pairs

            self._valid = build_valid_pairs(self.recipe.data, hop=1)
        return self._valid

    def speech_metrics(self) -> list[str]:
        """The installed ones of PESQ and STOI when `valid.speech_metrics` (else none)."""
        if self._speech is None:
            from soundry.eval.extra_metrics import availability

            self._speech = []
            if self.recipe.valid.speech_metrics:
                for name, missing in availability().items():
                    if name in ("pesq", "stoi"):
                        if missing:
                            log.warning("validation: %s skipped: %s", name, missing)
                        else:
                            self._speech.append(name)
        return self._speech

    @torch.no_grad()
    def validate(self, step: int) -> Validation:
        gen = self.generator
        device = next(gen.parameters()).device
        scores: dict[str, list[float]] = {}
        audio: dict[str, Any] = {}
        for i, (name, noisy, clean) in enumerate(self.valid_pairs()):
            x = torch.from_numpy(noisy)[None].to(device)
            y = gen(x)[0].float().cpu()
            got = pair_scores(torch.from_numpy(clean), torch.from_numpy(noisy), y,
                              gen.sample_rate)
            got.update(speech_scores(self.speech_metrics(), clean, noisy, y.numpy(),
                                     gen.sample_rate))
            for key, value in got.items():
                scores.setdefault(key, []).append(value)
            if i < self.recipe.valid.audio_clips:
                stem = safe_name(name, i)
                audio[f"{stem}_in"] = noisy
                audio[f"{stem}_out"] = y.numpy()
                audio[f"{stem}_ref"] = clean
        metrics = {k: float(np.nanmean(v)) for k, v in scores.items()}
        return Validation(metrics=metrics, audio=audio, sample_rate=gen.sample_rate)


def pair_scores(target: torch.Tensor, degraded: torch.Tensor, output: torch.Tensor,
                sample_rate: int) -> dict[str, float]:
    """Metrics of one (target, degraded input, output) triple of [C, T] clips: SI-SDR, mel
    and STFT distance of the output and of the input (`input_*`), the SI-SDR gain, and the
    output's onset pop and spectral line (dB)."""
    from soundry.eval.metrics import (
        mel_distance,
        onset_pop,
        si_sdr,
        spectral_line,
        stft_distance,
    )

    out = {
        "si_sdr": si_sdr(target, output),
        "input_si_sdr": si_sdr(target, degraded),
        "mel_distance": mel_distance(target, output, sample_rate),
        "input_mel_distance": mel_distance(target, degraded, sample_rate),
        "stft_distance": stft_distance(target, output),
        "input_stft_distance": stft_distance(target, degraded),
        "onset_pop_db": onset_pop(target, output, sample_rate),
        "spectral_line_db": spectral_line(target, output),
    }
    out["si_sdr_gain"] = out["si_sdr"] - out["input_si_sdr"]
    return {k: float(v) for k, v in out.items()}


def speech_scores(names: list[str], target: np.ndarray, degraded: np.ndarray,
                  output: np.ndarray, sample_rate: int) -> dict[str, float]:
    """The extra metrics `names` (e.g. pesq, stoi) of the output and of the input
    (`input_<name>`) against the target, clips [C, T]; a clip a scorer rejects gives NaN."""
    from soundry.eval.extra_metrics import compute_extra

    if not names:
        return {}
    out = compute_extra(names, target, output, sample_rate)
    out.update({f"input_{k}": v for k, v in
                compute_extra(names, target, degraded, sample_rate).items()})
    return out


@EXPORTERS.register("transform")
def export_transform_run(recipe: TransformRecipe, load_network: Any) -> tuple[str, dict, dict]:
    """The generator of a transform run as a `transform` export (weight norm folded)."""
    from soundry.nn.conv import remove_weight_norm

    model = build_transform(recipe.model)
    model.load_state_dict(load_network("generator"))
    remove_weight_norm(model)
    return "transform", transform_export_config(model), model.state_dict()


__all__ = ["TRANSFORM_TERMS", "TransformRecipe", "TransformTask", "pair_scores",
           "speech_scores"]
