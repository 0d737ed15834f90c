"""The codec system: a DAC/EnCodec-class generator trained against discriminators.

One step (see `CodecTask.train_step`): the generator's forward pass x -> codes -> y
(quantizer dropout in training mode), then the shared adversarial step
(`soundry.train.gan.GanStep`: discriminator update on real x vs detached y, generator update
with the frozen discriminator) with the codec's own terms: reconstruction (mel, STFT,
waveform) and the quantizer's commitment and codebook losses (see `CODEC_TERMS`).

Stereo audio is folded into the batch ([B, C, T] -> [B*C, 1, T]) for losses and
discriminators, as for the generator.
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
from soundry.errors import SoundryError
from soundry.losses.config import CODEC_TERMS, CodecLossConfig
from soundry.losses.terms import LossTerms
from soundry.models.codec import CodecConfig, build_codec
from soundry.models.discriminators import DiscriminatorConfig, build_discriminator
from soundry.nn.keyed_random import fold_ids
from soundry.train.config import AdamWConfig, ExponentialSchedule, OptimizerConfig
from soundry.train.gan import GanStep
from soundry.train.gan_schedule import GanScheduleConfig
from soundry.train.optim import build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.sections import section
from soundry.train.task import OptimizerSpec, Task, TaskContext, Updater, Validation

log = logging.getLogger("soundry.train")


class CodecOptimConfig(Strict):
    """One optimizer per network (DAC: AdamW lr 1e-4, betas (0.8, 0.99), exponential decay)."""

    generator: OptimizerConfig = Field(default_factory=lambda: _dac_adamw(clip=1000.0))
    discriminator: OptimizerConfig = Field(default_factory=lambda: _dac_adamw(clip=10.0))


def _dac_adamw(clip: float) -> AdamWConfig:
    return AdamWConfig(
        lr=1e-4, betas=(0.8, 0.99), clip=clip, schedule=ExponentialSchedule(gamma=0.999996)
    )


class CodecValidConfig(Strict):
    """What validation measures and logs."""

    levels: list[int] = Field(default_factory=list)  # extra level counts to score (bitrates)
    audio_clips: int = Field(4, ge=0)  # validation clips whose audio is logged
    # classical codecs scored once on the same validation clips (e.g. "opus:6k,opus:12k",
    # through ffmpeg): RUN/valid/baselines.json, drawn as reference lines in the report
    baselines: str | None = None

    @model_validator(mode="after")
    def _check_baselines(self) -> CodecValidConfig:
        from soundry.audio.codecs import parse_baselines

        parse_baselines(self.baselines)  # a malformed spec fails at load, not at validation
        return self


class CodecRecipe(RecipeBase):
    """A codec recipe: data, model, discriminator, losses, schedule, optimizers."""

    task: Literal["codec"] = "codec"
    loss_terms: ClassVar[LossTerms] = CODEC_TERMS
    data: DataConfig = Field(default_factory=DataConfig)
    model: CodecConfig = Field(default_factory=CodecConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    losses: CodecLossConfig = Field(default_factory=CodecLossConfig)
    schedule: GanScheduleConfig = Field(default_factory=GanScheduleConfig)
    optim: CodecOptimConfig = Field(default_factory=CodecOptimConfig)
    valid: CodecValidConfig = Field(default_factory=CodecValidConfig)

    @model_validator(mode="after")
    def _consistent(self) -> CodecRecipe:
        if self.model.sample_rate != self.data.sample_rate:
            raise ValueError(
                f"model.sample_rate ({self.model.sample_rate}) must equal data.sample_rate "
                f"({self.data.sample_rate})"
            )
        if self.model.channels != self.data.channels:
            raise ValueError(
                f"model.channels ({self.model.channels}) must equal data.channels "
                f"({self.data.channels})"
            )
        segment = int(self.data.segment_seconds * self.data.sample_rate)
        windows = [*self.losses.mel.windows, *self.discriminator_windows()]
        if self.losses.stft.weight:
            windows += list(self.losses.stft.windows)
        if windows and segment <= max(windows) // 2:
            raise ValueError(
                f"data.segment_seconds ({self.data.segment_seconds} s = {segment} samples) "
                f"is too short for the largest STFT window ({max(windows)}); use more than "
                f"{max(windows) // 2 / self.data.sample_rate:.3f} s"
            )
        self._data_keys_act()
        if self.model.quantizer.type not in ("rvq", "fsq"):
            raise ValueError(
                f"model.quantizer.type '{self.model.quantizer.type}': a codec needs a "
                "quantizer (rvq or fsq) to make codes; continuous bottlenecks belong to "
                "autoencoder tasks"
            )
        n_levels = self.model.quantizer.n_codebooks
        bad = [n for n in self.valid.levels if not 1 <= n <= n_levels]
        if bad:
            raise ValueError(
                f"valid.levels {bad}: every entry must be a level count between 1 and the "
                f"codec's model.quantizer.n_codebooks ({n_levels})"
            )
        return self

    def _data_keys_act(self) -> None:
        """Data keys the codec would silently ignore are errors (every accepted key acts)."""
        from soundry.data.config import BucketConfig

        data = self.data
        if data.degrade is not None:
            raise ValueError(
                "data.degrade has no effect on a codec (it reconstructs its input); remove it, "
                "or train an audio-to-audio task for degraded -> clean pairs"
            )
        paired = [i for i, s in enumerate(data.sources) if s.target is not None]
        if paired:
            raise ValueError(
                f"data.sources[{paired[0]}].target: a codec reconstructs its input and would "
                "ignore paired targets; list the clean folder as a plain source instead"
            )
        if data.mode == "utterances":
            raise ValueError(
                "data.mode 'utterances' zero-pads each batch to its longest item and a codec "
                "would learn the padding as audio; use mode 'clips' (random crops) or "
                "'oneshot' (file starts)"
            )
        if data.bucket != BucketConfig():
            raise ValueError(
                "data.bucket only acts in data.mode 'utterances', which a codec does not use; "
                "remove it"
            )

    def discriminator_windows(self) -> list[int]:
        return [w for m in self.discriminator.members for w in getattr(m, "windows", [])]


def fold_channels(audio: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B*C, 1, T] (channels become batch items)."""
    b, c, t = audio.shape
    return audio.reshape(b * c, 1, t)


@register_task("codec")
class CodecTask(Task):
    """Trains a codec generator against its discriminators."""

    recipe_class = CodecRecipe

    def __init__(self, recipe: CodecRecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        # Initial weights come from the run's seed alone (the networks are built here, before
        # the engine seeds its RNGs), without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            self.generator = build_codec(recipe.model)
            self.discriminator = build_discriminator(
                recipe.discriminator, recipe.model.sample_rate
            )
        # Quantizer dropout and dead-code restarts draw from the run's seed (and the step).
        self.generator.quantizer.seed = recipe.seed
        self.gan = GanStep(self.discriminator, recipe.schedule, recipe.losses.adversarial.type,
                           sample_rate=recipe.model.sample_rate,
                           seed=recipe.seed, ctx=ctx)
        self._losses: Any = None  # built on first use, on the training device
        self._valid_items: list[tuple[str, np.ndarray]] | None = None
        self._baselines_done = False

    # -- Task interface --------------------------------------------------------------------

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> list[OptimizerSpec]:
        steps = self.recipe.train.max_steps
        return [
            build_spec(name, getattr(self.recipe.optim, name), {name: getattr(self, name)}, steps)
            for name in ("discriminator", "generator")
        ]

    def train_loader(self) -> Any:
        from soundry.data.loader import build_train_loader

        return build_train_loader(
            self.recipe.data,
            seed=self.recipe.seed,
            hop=self.generator.hop_length,
            overfit=self.ctx.overfit,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )

    def extra_state(self) -> dict[str, Any]:
        """The GAN schedule's resolved phase boundaries (phases that last `until`)."""
        return {"gan": self.gan.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.gan.load_state_dict(state.get("gan") or {})

    def ema_networks(self) -> list[str]:
        return ["generator"]

    # -- training --------------------------------------------------------------------------

    def losses(self, device: torch.device) -> Any:
        if self._losses is None:
            from soundry.losses.codec import CodecLosses

            self._losses = CodecLosses(self.recipe.losses, self.recipe.model.sample_rate)
        return self._losses.to(device)

    def compile(self, compile_fn: Any) -> list[str]:
        """The generator's and discriminator's forward passes and the reconstruction
        losses (mel, STFT, waveform terms on the shared spectrogram caches)."""
        names = super().compile(compile_fn)
        losses = self.losses(self.ctx.device)
        losses.reconstruction = compile_fn(losses.reconstruction)
        return [*names, "losses.reconstruction"]

    def weights_at(self, step: int) -> dict[str, float]:
        """Loss weights in force at 0-based schedule `step` (the engine's step `step + 1`)."""
        return self.gan.plan(step + 1, self.recipe.losses.weights(), resolve=False).weights

    def train_step(self, batch: Any, step: int, updater: Updater) -> dict[str, Any]:
        x = batch["audio"]
        plan = self.gan.plan(step, self.recipe.losses.weights())
        losses = self.losses(x.device)
        gen = self.generator
        ids = batch.get("index") if isinstance(batch, dict) else None
        with section("generator/forward"):
            if plan.generator:
                out = gen(x, step=step, item_ids=ids)
            else:  # discriminator-only phase: the generator only supplies fakes
                with torch.no_grad():
                    out = gen(x)
        # One spectrogram cache per signal: the mel/STFT losses and the multi-band
        # discriminator read the same STFTs instead of computing their own.
        real = SpectrogramCache(fold_channels(x))
        fake = SpectrogramCache(fold_channels(out.audio))

        def generator_terms() -> dict[str, torch.Tensor]:
            terms = losses.reconstruction(real, fake, plan.weights)
            if gen.quantizer.has_losses:  # FSQ has no auxiliary loss: not logged as zeros
                terms["commitment"] = out.commitment_loss
                terms["codebook"] = out.codebook_loss
            return terms

        return self.gan.run(plan, real, fake, updater, generator_terms, CODEC_TERMS,
                            item_ids=fold_ids(ids, x.shape[1]))

    # -- validation ------------------------------------------------------------------------

    def valid_items(self) -> list[tuple[str, np.ndarray]]:
        if self._valid_items is None:
            from soundry.data.loader import build_valid_items

            self._valid_items = build_valid_items(self.recipe.data, hop=self.generator.hop_length)
        return self._valid_items

    @torch.no_grad()
    def validate(self, step: int) -> Validation:
        from soundry.eval.metrics import codebook_usage

        gen = self.generator
        device = next(gen.parameters()).device
        levels = [gen.n_codebooks, *[n for n in self.recipe.valid.levels if n < gen.n_codebooks]]
        scores: dict[str, list[float]] = {}
        audio: dict[str, Any] = {}
        all_codes = []
        for i, (name, clip) in enumerate(self.valid_items()):
            x = torch.from_numpy(clip).to(device)[None]
            codes = gen.encode(x)
            all_codes.append(codes)
            for n in levels:
                y = gen.decode_codes(codes[:, :n])[..., : x.shape[-1]]
                suffix = "" if n == gen.n_codebooks else f"@{n}"
                for key, value in score_pair(x[0], y[0], gen.sample_rate).items():
                    scores.setdefault(key + suffix, []).append(value)
                if n == gen.n_codebooks and i < self.recipe.valid.audio_clips:
                    audio[f"{safe_name(name, i)}_ref"] = clip
                    audio[f"{safe_name(name, i)}_out"] = y[0].float().cpu().numpy()
        metrics = {k: float(np.mean(v)) for k, v in scores.items()}
        codes = torch.cat([c.reshape(-1, c.shape[1], c.shape[2]) for c in all_codes], dim=-1)
        usage = codebook_usage(codes, gen.codebook_size)
        metrics.update(summarize_usage(usage))
        # what usage can reach on this validation: min(1, frames / codebook size)
        metrics["code_frames"] = float(codes.shape[-1])
        metrics["codebook_size"] = float(gen.codebook_size)
        metrics["bitrate_kbps"] = gen.bitrate_kbps()
        if self.recipe.valid.baselines and not self._baselines_done:
            self._baselines_done = True
            write_valid_baselines(self.ctx.run_dir, self.recipe.valid.baselines,
                                  self.valid_items(), gen.sample_rate)
        return Validation(metrics=metrics, audio=audio, sample_rate=gen.sample_rate)


def write_valid_baselines(run_dir: Any, text: str, items: list[tuple[str, np.ndarray]],
                          sample_rate: int) -> dict[str, Any]:
    """Score the classical codecs `text` names (e.g. "opus:6k,opus:12k") on the validation
    clips with the validation's own metrics and write RUN/valid/baselines.json:
    {"baselines": {name: {"kbps", metric: mean}}, "skipped": {name: reason}}. A codec that
    cannot run (no ffmpeg, no encoder) is skipped with a warning, not an error."""
    import json
    from pathlib import Path

    from soundry.audio.codecs import check_encoders, parse_baselines, roundtrip

    out: dict[str, Any] = {"baselines": {}, "skipped": {}, "clips": len(items)}
    for spec in parse_baselines(text):
        try:
            check_encoders([spec])
            scores: dict[str, list[float]] = {}
            for _, clip in items:
                y = roundtrip(clip, sample_rate, spec)
                for key, value in score_pair(torch.from_numpy(clip), torch.from_numpy(y),
                                             sample_rate).items():
                    scores.setdefault(key, []).append(value)
        except SoundryError as exc:
            log.warning("validation baseline %s skipped: %s", spec.name, exc)
            out["skipped"][spec.name] = str(exc)
            continue
        out["baselines"][spec.name] = {"kbps": spec.kbps} | {
            k: float(np.mean(v)) for k, v in scores.items()}
    if run_dir is not None:
        path = Path(run_dir) / "valid" / "baselines.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
    return out


def score_pair(ref: torch.Tensor, est: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """Core reconstruction metrics of one clip [C, T]."""
    from soundry.eval.metrics import l1, mel_distance, si_sdr, stft_distance

    return {
        "mel_distance": float(mel_distance(ref, est, sample_rate)),
        "stft_distance": float(stft_distance(ref, est, sample_rate)),
        "si_sdr": float(si_sdr(ref, est)),
        "l1": float(l1(ref, est)),
    }


def summarize_usage(usage: dict[str, Any]) -> dict[str, float]:
    """Flatten per-level codebook usage into scalar metrics."""
    out: dict[str, float] = {}
    for key, values in usage.items():
        if isinstance(values, list | tuple | np.ndarray | torch.Tensor):
            vals = [float(v) for v in values]
            for level, v in enumerate(vals):
                out[f"{key}/l{level}"] = v
            out[f"{key}/mean"] = float(np.mean(vals)) if vals else 0.0
        else:
            out[key] = float(values)
    return out


def safe_name(name: str, index: int) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))[:40]
    return f"clip{index:02d}_{stem}" if stem else f"clip{index:02d}"


@EXPORTERS.register("codec")
def export_codec_run(recipe: CodecRecipe, load_network: Any) -> tuple[str, dict, dict]:
    """The generator of a codec run as a codec export (weight norm folded)."""
    from soundry.models.export import codec_export_config

    codec = build_codec(recipe.model)
    codec.load_state_dict(load_network("generator"))
    codec.remove_weight_norm()
    return "codec", codec_export_config(codec, folded=True), codec.state_dict()
