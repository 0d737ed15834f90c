"""The one-shot VAE system (`task: vae`): `soundry.models.vae.OneShotVAE` trained with
reconstruction, a KL to its (flow) prior and, from a configurable step, discriminators.

One step (`VAETask.train_step`): the VAE's forward pass (z0 sampled from the posterior,
pushed through the posterior flow, decoded), then the shared adversarial step
(`soundry.train.gan.GanStep`) with the VAE's terms (`VAE_TERMS`): multi-scale mel and
waveform L1, and the KL weighted by beta, which rises on a log scale from `kl.start` to
`kl.weight` over `kl.warmup_steps` (a KL at full weight from step 0 collapses the
posterior before the decoder can use it). Free bits (`kl.free_bits`, nats per dimension)
floor each dimension's batch-mean base-posterior KL, so the loss stops pushing a dimension
below it. The prior flow learns the detached latents (`prior_nll`) with an optimizer of
its own (`optim.prior`) unless `model.prior_training: joint` puts it in the KL; a plain
autoencoder has no KL.

Validation: reconstruction metrics of the held-out items, the posterior's KL per dimension,
active units (Burda et al. 2016: dimensions whose posterior mean varies over the data with
variance above 0.01), the flows' mean log-determinant, the prior's NLL of the held-out
latents beside N(0, I)'s, and prior samples: silent count, diversity (mean pairwise mel
distance) beside the data's, novelty (each sample's nearest training item). Audio:
reconstructions, prior samples, a strip of all samples and an interpolation strip.
"""

from __future__ import annotations

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
from soundry.models.vae import (
    OneShotVAE,
    VAEModelConfig,
    build_vae,
    encode_set,
    vae_export_config,
)
from soundry.nn.flows import gaussian_kl_per_dim, standard_normal_log_prob
from soundry.nn.keyed_random import fold_ids, item_normals, local_ids
from soundry.train.gan import GanStep
from soundry.train.gan_schedule import GanScheduleConfig
from soundry.train.optim import AdamWConfig, OptimizerConfig, build_spec
from soundry.train.recipe import RecipeBase
from soundry.train.registry import EXPORTERS, register_task
from soundry.train.task import OptimizerSpec, Task, TaskContext, Updater, Validation
from soundry.train.tasks.codec import CodecOptimConfig, fold_channels, safe_name

VAE_TERMS = LossTerms([
    LossTerm("mel", 15.0, "multi-scale log-mel L1 (DAC's MelSpectrogramLoss)"),
    LossTerm("stft", 0.0, "multi-resolution log/linear STFT magnitude L1"),
    LossTerm("waveform", 1.0, "waveform L1"),
    LossTerm("kl", 0.01, "KL(q(z|x) || p(z)) in nats per sound (one-sample estimate with "
             "flows), free bits on the base posterior; its weight is beta, log-ramped"),
    LossTerm("prior_nll", 1.0, "the prior flow's NLL of the detached latents (nats per "
             "sound; unless model.prior_training is joint)"),
]) + ADVERSARIAL_TERMS

#: Burda et al.'s threshold on the variance over the data of a dimension's posterior mean
ACTIVE_VARIANCE = 0.01


class KLConfig(Strict):
    """beta (`weight`), its log-scale warm-up from `start`, and free bits per dimension."""

    weight: float = Field(0.01, ge=0)
    start: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(500, ge=0)
    free_bits: float = Field(0.0, ge=0)
    active_kl: float = Field(0.01, ge=0)  # validation: a dim with mean KL above this is "used"

    def beta(self, step: int) -> float:
        """beta at 0-based schedule step `step`: start * (weight / start) ** progress."""
        if self.weight == 0 or self.warmup_steps == 0 or self.start >= self.weight:
            return self.weight
        progress = min(1.0, max(0, step) / self.warmup_steps)
        return float(self.start * (self.weight / self.start) ** progress)


class PriorFitConfig(WeightConfig):
    """The prior flow's NLL term: its weight, and how many recent latents it learns from.

    `queue`: the NLL is taken over this step's detached latents and those of the steps
    before, up to `queue` sounds in all (each process queues ceil(queue / processes) of
    its own: the same latents as one process when `queue` is a multiple of the global
    batch and of the process count), so the
    prior's batch does not shrink with the data batch and one latent that lands where the
    prior has no mass moves it 1/queue as far (measured at batch 4: prior grad norms 1000x
    their median). The queue is not
    checkpointed; a resumed run refills it within queue / batch steps.
    """

    queue: int = Field(64, ge=1)


class VAELossConfig(Strict):
    """Every loss term of a VAE step and its weight."""

    mel: MelLossConfig = Field(default_factory=MelLossConfig)
    stft: STFTLossConfig = Field(default_factory=STFTLossConfig)
    waveform: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=1.0))
    kl: KLConfig = Field(default_factory=KLConfig)
    prior_nll: PriorFitConfig = Field(default_factory=PriorFitConfig)
    adversarial: AdversarialLossConfig = Field(default_factory=AdversarialLossConfig)
    feature_matching: WeightConfig = Field(default_factory=lambda: WeightConfig(weight=2.0))

    def weights(self) -> dict[str, float]:
        """Term name -> weight (the KL at its full weight; see `KLConfig.beta`)."""
        return {name: float(getattr(self, name).weight) for name in VAE_TERMS.names}


class VAEOptimConfig(CodecOptimConfig):
    """The codec's generator and discriminator optimizers, and one for the prior flow.

    The prior flow learns the detached latents with an optimizer and clip of its own: its
    NLL's gradient neither counts in the generator's grad norm (nor its clip), nor can a
    spike of it shrink the autoencoder's update.
    """

    prior: OptimizerConfig = Field(default_factory=lambda: AdamWConfig(
        lr=1e-3, betas=(0.9, 0.99), clip=100.0))


class VAEValidConfig(Strict):
    """What validation measures and logs."""

    samples: int = Field(16, ge=2)  # prior samples drawn (diversity, novelty)
    temperature: float | None = Field(None, gt=0)  # None: model.sample_temperature
    # the Frechet distance (log-mel frames) of samples to the training reference items at
    # each of these temperatures (samples/frechet_t<T>): what model.sample_temperature is
    # chosen by, without touching held-out data
    temperatures: list[float] = Field(default_factory=lambda: [0.75, 1.0, 1.25, 1.5, 2.0])
    reference_items: int = Field(64, ge=1)  # training items novelty is measured against
    interpolation_steps: int = Field(9, ge=2)
    audio_clips: int = Field(4, ge=0)  # reconstructions and prior samples logged as audio


class VAERecipe(RecipeBase):
    """A VAE recipe: data (one-shots), model, discriminator, losses, schedule, optimizers."""

    task: Literal["vae"] = "vae"
    loss_terms: ClassVar[LossTerms] = VAE_TERMS
    data: DataConfig = Field(default_factory=lambda: DataConfig(
        mode="oneshot", sample_rate=44100, segment_seconds=1.0, valid_seconds=1.0))
    model: VAEModelConfig = Field(default_factory=VAEModelConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    losses: VAELossConfig = Field(default_factory=VAELossConfig)
    schedule: GanScheduleConfig = Field(default_factory=GanScheduleConfig)
    optim: VAEOptimConfig = Field(default_factory=VAEOptimConfig)
    valid: VAEValidConfig = Field(default_factory=VAEValidConfig)

    @model_validator(mode="after")
    def _consistent(self) -> VAERecipe:
        d, m = self.data, self.model
        if d.mode != "oneshot":
            raise ValueError(f"data.mode '{d.mode}': the VAE learns whole one-shot sounds "
                             "from their start; use mode 'oneshot'")
        if m.sample_rate != d.sample_rate or m.channels != d.channels:
            raise ValueError(f"model (sample_rate {m.sample_rate}, channels {m.channels}) and "
                             f"data ({d.sample_rate}, {d.channels}) must agree")
        for key in ("segment_seconds", "valid_seconds"):
            if abs(getattr(d, key) - m.seconds) > 1e-9:
                raise ValueError(f"data.{key} ({getattr(d, key)}) must equal model.seconds "
                                 f"({m.seconds}): the VAE codes sounds of one length")
        if d.degrade is not None or d.paired:
            raise ValueError("data.degrade / paired sources: a VAE reconstructs its input; "
                             "remove them")
        windows = [*self.losses.mel.windows,
                   *[w for mem in self.discriminator.members for w in getattr(mem, "windows", [])]]
        if max(windows) // 2 >= m.n_samples:
            raise ValueError(f"model.seconds ({m.seconds}) is too short for the largest STFT "
                             f"window ({max(windows)})")
        return self


@register_task("vae")
class VAETask(Task):
    """Trains a one-shot VAE (its decoder against discriminators from the GAN phases on)."""

    recipe_class = VAERecipe

    def __init__(self, recipe: VAERecipe, ctx: TaskContext) -> None:
        super().__init__(recipe, ctx)
        with torch.random.fork_rng(devices=[]):  # weights from the run's seed alone
            torch.manual_seed(recipe.seed)
            self.generator: OneShotVAE = build_vae(recipe.model)
            self.discriminator = build_discriminator(recipe.discriminator,
                                                     recipe.model.sample_rate)
        self.gan = GanStep(self.discriminator, recipe.schedule, recipe.losses.adversarial.type,
                           sample_rate=recipe.model.sample_rate,
                           seed=recipe.seed, ctx=ctx)
        self._losses: tuple[MelLoss, MultiResolutionSTFTLoss] | None = None
        self._valid: list[tuple[str, np.ndarray]] | None = None
        self._reference: tuple[np.ndarray, list[torch.Tensor]] | None = None
        self._latents: torch.Tensor | None = None  # the prior's queue of recent latents

    # -- Task interface --------------------------------------------------------------------

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> list[OptimizerSpec]:
        """discriminator, generator and, when the prior flow learns apart, prior: each over
        its own parameters (the generator's leave out the prior flow's then)."""
        steps, optim, vae = self.recipe.train.max_steps, self.recipe.optim, self.generator
        specs = [build_spec("discriminator", optim.discriminator,
                            {"discriminator": self.discriminator}, steps)]
        if not vae.prior_fitted_apart:
            return [*specs, build_spec("generator", optim.generator, {"generator": vae}, steps)]
        parts = {f"generator.{name}": child for name, child in vae.named_children()
                 if name != "prior"}
        spec = build_spec("generator", optim.generator, parts, steps)
        prior = build_spec("prior", optim.prior, {"generator.prior": vae.prior}, steps)
        spec.networks = prior.networks = ["generator"]
        return [*specs, spec, prior]

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
        """Loss weights in force at 0-based schedule `step` (beta ramped, phase applied)."""
        weights = self.recipe.losses.weights()
        weights["kl"] = self.recipe.losses.kl.beta(step)
        return self.gan.plan(step + 1, weights, resolve=False).weights

    def _recon_losses(self, device: torch.device) -> tuple[MelLoss, MultiResolutionSTFTLoss]:
        if self._losses is None:
            sr = self.recipe.model.sample_rate
            self._losses = (MelLoss(self.recipe.losses.mel, sr),
                            MultiResolutionSTFTLoss(self.recipe.losses.stft, sr))
        return self._losses

    def kl_loss(self, out: Any) -> torch.Tensor:
        """The KL term (nats per sound, batch mean) with free bits on the base posterior."""
        kl0 = out.kl_per_dim()  # [B, D]
        per_dim = kl0.mean(dim=0)
        free = self.recipe.losses.kl.free_bits
        base = per_dim.clamp(min=free).sum() if free > 0 else per_dim.sum()
        if self.generator.exact_kl:
            return base
        # flows: the one-sample estimate minus its closed-form base part, plus the floored base
        return base + (out.kl(exact=False) - kl0.sum(dim=-1)).mean()

    def prior_batch(self, z: torch.Tensor) -> torch.Tensor:
        """This step's latents z [B, D] and the queue's, newest first, up to
        `losses.prior_nll.queue` rows; the queue keeps them for the next steps."""
        # each process queues its own share: `queue` sounds over all processes together
        size = max(-(-self.recipe.losses.prior_nll.queue // self.ctx.world_size), z.shape[0])
        queued = self._latents
        if queued is not None and queued.shape[1:] == z.shape[1:] and \
                queued.device == z.device:
            z = torch.cat([z, queued])
        self._latents = z[:size].detach()
        return self._latents

    def train_step(self, batch: Any, step: int, updater: Updater) -> dict[str, Any]:
        x = batch["audio"]
        weights = self.recipe.losses.weights()
        weights["kl"] = self.recipe.losses.kl.beta(step - 1)
        plan = self.gan.plan(step, weights)
        vae = self.generator
        ids = batch.get("index") if isinstance(batch, dict) else None
        if ids is None:
            ids = local_ids(x.shape[0], self.ctx.rank)
        # the posterior sample's draw keyed by item: the same on any number of processes
        noise = item_normals(ids, self.recipe.seed, step, 0x7AE, count=vae.latent_dim)
        if plan.generator:
            out = vae(x, noise=noise)
        else:
            with torch.no_grad():
                out = vae(x, noise=noise)
        mel, stft = self._recon_losses(x.device)
        real = SpectrogramCache(fold_channels(x))
        fake = SpectrogramCache(fold_channels(out.audio))

        def generator_terms() -> dict[str, torch.Tensor]:
            terms = spectral_terms(plan.weights, fake, real, mel, stft)
            if out.std is not None:
                terms["kl"] = self.kl_loss(out)
            if out.std is None and vae.prior.learned and not vae.prior_fitted_apart:
                # a plain autoencoder whose prior is "joint": no KL, so it learns here
                terms["prior_nll"] = -vae.prior.log_prob(out.z.detach()).mean()
            return terms

        logs = self.gan.run(plan, real, fake, updater, generator_terms, VAE_TERMS,
                            item_ids=fold_ids(ids, x.shape[1]))
        if vae.prior_fitted_apart:  # every step, whichever network the phase trains
            prior_nll = -vae.prior.log_prob(self.prior_batch(out.z.detach())).mean()
            updater.update("prior", self.recipe.losses.prior_nll.weight * prior_nll)
            logs["loss/prior_nll"] = prior_nll.detach()
        logs["beta"] = plan.weights["kl"]
        if out.std is not None:
            logs["kl/base"] = out.kl_per_dim().sum(dim=-1).mean().detach()
        if vae.posterior_flow.n_layers:
            logs["flow/log_det"] = out.log_det.mean().detach()
        return logs

    # -- validation ------------------------------------------------------------------------

    def valid_items(self) -> list[tuple[str, np.ndarray]]:
        if self._valid is None:
            from soundry.data.loader import build_valid_items

            self._valid = build_valid_items(self.recipe.data, hop=1)
        return self._valid

    def reference(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """(the log-mel frames, the mel features) of the starts of up to
        `valid.reference_items` training files, computed once."""
        if self._reference is None:
            from soundry.eval.set_metrics import log_mel_frames

            starts = training_starts(self.recipe.data, self.recipe.valid.reference_items,
                                     self.generator.n_samples)
            self._reference = (log_mel_frames(starts, self.recipe.model.sample_rate),
                               _features(self.recipe, starts))
        return self._reference

    @torch.no_grad()
    def validate(self, step: int) -> Validation:
        from soundry.eval.set_metrics import mean_pairwise_distance, nearest_distances

        vae, cfg = self.generator, self.recipe.valid
        device = next(vae.parameters()).device
        names = [n for n, _ in self.valid_items()]
        x = torch.stack([_fit(torch.from_numpy(c), vae.n_samples) for _, c in self.valid_items()])
        enc = encode_set(vae, x.to(device))
        metrics = reconstruction_metrics(x, enc["audio"], vae.sample_rate)
        metrics.update(latent_metrics(vae, enc, self.recipe.losses.kl.active_kl))

        samples, _ = vae.sample(cfg.samples, cfg.temperature, seed=self.recipe.seed)
        samples = samples.float().cpu()
        sample_f, data_f = _features(self.recipe, samples), _features(self.recipe, x)
        ref_frames, reference = self.reference()
        novelty = nearest_distances(sample_f, reference)
        rms = samples.square().mean(dim=(1, 2)).sqrt()
        metrics.update({
            "samples/silent": float((rms < 1e-3).sum()),
            "samples/diversity": mean_pairwise_distance(sample_f),
            "data/diversity": mean_pairwise_distance(data_f),
            "samples/nearest_median": float(np.median(novelty)),
            "samples/nearest_min": float(novelty.min()),
            "data/nearest_median": float(np.median(nearest_distances(data_f, reference))),
        })
        metrics.update(temperature_sweep(vae, ref_frames, cfg.temperatures, cfg.samples,
                                         self.recipe.seed))

        audio: dict[str, Any] = {}
        for i in range(min(cfg.audio_clips, len(names))):
            audio[f"{safe_name(names[i], i)}_ref"] = x[i].numpy()
            audio[f"{safe_name(names[i], i)}_out"] = enc["audio"][i].numpy()
        for i in range(min(cfg.audio_clips, cfg.samples)):
            audio[f"prior_{i:02d}"] = samples[i].numpy()
        audio["prior_strip"] = strip(samples[:8], vae.sample_rate)
        if len(names) >= 2:
            path, _ = vae.interpolate(x[0].to(device), x[1].to(device), cfg.interpolation_steps)
            audio["interp_strip"] = strip(path.float().cpu(), vae.sample_rate)
        return Validation(metrics=metrics, audio=audio, sample_rate=vae.sample_rate)


# ----------------------------------------------------------------------------- helpers


def _fit(clip: torch.Tensor, n: int) -> torch.Tensor:
    """[C, T] -> [C, n] (zero-padded or trimmed)."""
    if clip.shape[-1] < n:
        return torch.nn.functional.pad(clip, (0, n - clip.shape[-1]))
    return clip[..., :n]


def _features(recipe: VAERecipe, audio: torch.Tensor) -> list[torch.Tensor]:
    from soundry.eval.set_metrics import MelFeatures

    return MelFeatures(recipe.model.sample_rate)(audio)


def reconstruction_metrics(x: torch.Tensor, y: torch.Tensor, sample_rate: int
                           ) -> dict[str, float]:
    """Mean mel / STFT distance and L1 of reconstructions y of sounds x [N, C, T]."""
    from soundry.eval.metrics import l1, mel_distance, stft_distance

    scores: dict[str, list[float]] = {"mel_distance": [], "stft_distance": [], "l1": []}
    for ref, est in zip(x, y, strict=True):
        scores["mel_distance"].append(mel_distance(ref, est, sample_rate))
        scores["stft_distance"].append(stft_distance(ref, est, sample_rate))
        scores["l1"].append(l1(ref, est))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def latent_metrics(vae: OneShotVAE, enc: dict[str, torch.Tensor], active_kl: float = 0.01
                   ) -> dict[str, float]:
    """KL per dimension, active units, flow log-det and prior vs N(0, I) NLL (per dim)."""
    d = vae.latent_dim
    z = enc["z"]
    out: dict[str, float] = {"latent_dim": float(d)}
    if z.shape[0] >= 2:
        var = enc["mean"].var(dim=0)
        out["active_units"] = float((var > ACTIVE_VARIANCE).sum())
    if "std" in enc:
        kl = gaussian_kl_per_dim(enc["mean"], enc["std"]).mean(dim=0)
        out.update({"kl/total": float(kl.sum()), "kl/max_dim": float(kl.max()),
                    "kl/dims_used": float((kl > active_kl).sum())})
    if vae.posterior_flow.n_layers:
        out["flow/log_det"] = float(enc["log_det"].mean())
    device = next(vae.parameters()).device
    with torch.no_grad():
        prior = vae.prior_log_prob(z.to(device)).float().cpu()
    out["prior/nll_per_dim"] = float(-prior.mean() / d)
    out["prior/normal_nll_per_dim"] = float(-standard_normal_log_prob(z).mean() / d)
    return out


def temperature_sweep(vae: OneShotVAE, ref: np.ndarray, temperatures: list[float],
                      n: int, seed: int) -> dict[str, float]:
    """samples/frechet_t<T>: the Frechet distance (log-mel frame statistics) of n prior
    samples at each temperature T to reference frames (`log_mel_frames` of sounds)."""
    from soundry.eval.set_metrics import frechet_distance, log_mel_frames

    if not temperatures or len(ref) < 2:
        return {}
    out = {}
    for t in temperatures:
        samples, _ = vae.sample(n, t, seed=seed)
        frames = log_mel_frames(samples.float().cpu(), vae.sample_rate)
        out[f"samples/frechet_t{t:g}"] = frechet_distance(frames, ref) if len(frames) > 1 \
            else float("nan")
    return out


def strip(sounds: torch.Tensor, sample_rate: int, gap_seconds: float = 0.05) -> np.ndarray:
    """Sounds [K, C, T] one after another with short silences between: [C, K * (T + gap)]."""
    gap = np.zeros((sounds.shape[1], int(gap_seconds * sample_rate)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for s in sounds:
        parts += [s.numpy().astype(np.float32), gap]
    return np.concatenate(parts[:-1], axis=1) if parts else gap


def training_starts(cfg: DataConfig, count: int, n_samples: int) -> torch.Tensor:
    """The (normalised) starts [N, C, n_samples] of up to `count` training files, spread over
    the sources (round robin); files that fail to read are left out."""
    from soundry.data.datasets import normalization_gain, read_crop, round_robin
    from soundry.data.loader import load_sources
    from soundry.errors import DataError

    out = []
    for item in round_robin(load_sources(cfg).train):
        if len(out) >= count:
            break
        try:
            clip = read_crop(item.path, item, 0, n_samples, cfg.sample_rate, cfg.channels)
        except DataError:
            continue
        if np.isfinite(clip).all():
            out.append(torch.from_numpy(clip * normalization_gain(clip, cfg.sample_rate,
                                                                  cfg.loudness)))
    return torch.stack(out) if out else torch.zeros(0, cfg.channels, n_samples)


@EXPORTERS.register("vae")
def export_vae_run(recipe: VAERecipe, load_network: Any) -> tuple[str, dict, dict]:
    """The VAE of a run as a `vae` export (weight norm folded)."""
    vae = build_vae(recipe.model)
    vae.load_state_dict(load_network("generator"))
    vae.remove_weight_norm()
    return "vae", vae_export_config(vae), vae.state_dict()


__all__ = ["VAE_TERMS", "VAERecipe", "VAETask"]
