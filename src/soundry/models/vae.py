"""A one-shot sound VAE: one global latent vector per sound, with Real NVP flows.

    audio [B, C, T] -> codec encoder (channels folded into the batch) -> frames [B, C*E, F]
      -> batch norm per channel (`feature_norm`) -> pooling over time (attention or mean)
      -> h [B, H]
      -> Gaussian posterior q0(z0 | x) = N(mean(h), std(h)^2), z0 [B, D]
      -> posterior flow z_K = f(z0) (Real NVP; optionally conditioned on h) [training: z0 sampled]
    z_K -> linear "unpooling" to a seed [B * C, E', F] -> codec decoder (optionally
      FiLM/AdaIN-modulated by z_K) -> audio [B, C, T]
      (optionally times an amplitude envelope: a log-gain per frame, a linear map of z_K)

Against posterior collapse, two choices at initialisation: the encoder's frames are batch
normalised, so posterior means differ between sounds by far more than the small initial
posterior std (an untrained codec encoder's frames barely differ), and the unpooling and
FiLM maps start at zero, so the decoder starts from its learned seed and takes z in only
along directions that lower the loss (a random map would make z's spread noise that the
untrained decoder's gradient first removes).

The prior p(z) is N(0, I) or a learned flow prior (`soundry.nn.flows.FlowPrior`). With a
posterior flow the KL is a one-sample Monte-Carlo estimate, log q0(z0) - log|det df/dz0| -
log p(z_K); without it (and p = N(0, I)) the closed form. By default (`prior_training:
detached`) the KL is taken to N(0, I) and the prior flow is fitted to the detached latents
(the sampling prior models the aggregate posterior); `joint` puts the learned prior in the
KL. `variational: false` gives a plain autoencoder (latent = mean, no KL); its prior flow,
if any, is fitted to the detached latents.

The network works on a fixed length: `seconds` at `sample_rate`, rounded up to whole frames
(`n_samples`); shorter input is zero-padded at the end, longer input trimmed (a one-shot is
its start). Stereo: the encoder and decoder see each channel as a batch item, but the latent
is one per sound (the channels' frame features are concatenated before pooling and the seed
holds every channel); `stereo: midside` codes mid (L+R)/2 and side (L-R)/2 instead of L, R.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from soundry.config import Strict
from soundry.errors import SoundryError
from soundry.models.codec import Decoder, Encoder, zero_conv_biases
from soundry.models.codec_config import CodecConfig
from soundry.models.export import EXPORT_KINDS, load_folded
from soundry.nn.conv import from_channels_last, remove_weight_norm, to_channels_last
from soundry.nn.distributed import GlobalBatchNorm1d, global_moments
from soundry.nn.flows import (
    FlowPrior,
    RealNVP,
    gaussian_kl_per_dim,
    gaussian_log_prob,
    standard_normal_log_prob,
)
from soundry.nn.pqmf import PQMF


class FlowConfig(Strict):
    """A Real NVP flow: `layers` affine couplings (0: no flow)."""

    layers: int = Field(4, ge=0)
    hidden: int = Field(256, ge=1)
    scale: Literal["tanh", "softplus"] = "tanh"
    actnorm: bool = True
    mixing: Literal["alternate", "permute"] = "alternate"
    # posterior flow only: condition the couplings on the pooled encoder features. Off by
    # default: with it the input reaches z_K through the couplings' shifts, the base
    # posterior's means stop carrying the sound (no active units) and the prior fits a
    # point mass
    context: bool = False
    # prior flow only: standardise the latents by running batch statistics before the
    # couplings (`soundry.nn.flows.RunningStandardize`). The latents move while the encoder
    # trains; a prior fitted to them by gradient alone (ActNorm from the first batch) grew
    # ~100x too sharp, and its NLL of the moved latents jumped from -400 to 1e7 nats
    standardize: bool = False


class VAENetConfig(CodecConfig):
    """The encoder/decoder: the codec's blocks (`model.net`, any codec `preset:`).

    `latent_dim` here is the frame features' width (encoder output, decoder seed); the
    bottleneck is the VAE's own, so `quantizer` must stay `{type: none}` and `causal` false.
    """

    @model_validator(mode="after")
    def _vae_net(self) -> VAENetConfig:
        if self.quantizer.type != "none":
            raise ValueError("model.net.quantizer: the VAE has its own bottleneck; leave it "
                             "out (or {type: none})")
        if self.causal:
            raise ValueError("model.net.causal: a one-shot VAE sees the whole sound; use false")
        return self


def _net_default() -> VAENetConfig:
    return VAENetConfig(quantizer={"type": "none"})  # type: ignore[arg-type]


class VAEModelConfig(Strict):
    """The `model:` section of a VAE recipe."""

    sample_rate: int = Field(44100, gt=0)
    channels: Literal[1, 2] = 1
    stereo: Literal["channels", "midside"] = "channels"
    seconds: float = Field(1.0, gt=0)
    latent_dim: int = Field(128, ge=2)
    variational: bool = True
    # the base posterior's std at initialisation: small, so the latent's signal is not
    # drowned by its sampling noise before the encoder has learned to spread the means
    # (at softplus(0) = 0.69 the decoder learns to ignore z: the posterior collapses)
    posterior_init_std: float = Field(0.005, gt=0, lt=1)
    pooling: Literal["attention", "mean"] = "attention"
    # batch-normalise the encoder's frames (per channel over batch and time) before pooling.
    # The codec's encoder, freshly initialised, outputs frames ~1e-3 in size whose spread over
    # sounds is ~1e-4: far below the posterior's sampling noise, so the decoder learns to
    # ignore z before the encoder can spread it (measured: no active unit after 475 steps)
    feature_norm: Literal["batch", "none"] = "batch"
    pooling_heads: int = Field(4, ge=1)
    modulation: Literal["none", "film", "adain"] = "none"
    # the decoder's waveform (before its tanh) scaled by an amplitude envelope, exp(log-gain
    # per frame) interpolated linearly between frame centres; the log-gains a linear map of z
    # ("latent") or a 1x1 conv of the decoder's first (frame-rate) features ("decoder"),
    # zero-initialised (the bias learns the data's mean decay). A conv
    # decoder trained on mel + waveform L1 renders a drum's tail 5-17 dB too quiet after
    # ~1300 steps (the log-mel distance weighs those frames as much as the attack); a gain
    # per frame reaches any decay in a few steps. Before the tanh, so peaks stay soft-limited
    envelope: Literal["none", "latent", "decoder"] = "none"
    # how the prior flow learns. "detached": the KL is taken to N(0, I) and the prior flow is
    # fitted to the detached latents (its own NLL term), so it models the aggregate posterior
    # without pulling on it. "joint": the ELBO's KL to the learned prior itself; measured on
    # drum hits, the prior tightens around the first, near-identical latents and its
    # gradient then holds every latent together (no active unit, all samples alike)
    prior_training: Literal["detached", "joint"] = "detached"
    # the prior's default sampling temperature (`sample`, `soundry sample` without
    # --temperature). A VAE decoder averages: around the data it decodes smoother hits than
    # the data's, and draws a little wider than the latents it saw decode sharper ones.
    # Validation logs the Frechet distance of samples to training sounds per temperature
    # (samples/frechet_t<T>) to choose it by
    sample_temperature: float = Field(1.0, gt=0)
    net: VAENetConfig = Field(default_factory=_net_default)
    # no ActNorm on the posterior side by default: fitted to a first batch of near-identical
    # latents it scales them (and the effective learning rate) up ~100x and training diverges
    posterior_flow: FlowConfig = Field(default_factory=lambda: FlowConfig(actnorm=False))
    prior_flow: FlowConfig = Field(
        default_factory=lambda: FlowConfig(layers=4, actnorm=False, standardize=True))

    @model_validator(mode="before")
    @classmethod
    def _net_rate(cls, data: Any) -> Any:
        # The net runs at the model's rate on one channel (channels are batch items) and
        # has no quantizer; say so once here instead of in every recipe.
        if isinstance(data, dict):
            data = dict(data)
            net = dict(data.get("net") or {})
            net.setdefault("sample_rate", data.get("sample_rate", 44100))
            net.setdefault("channels", 1)
            net.setdefault("quantizer", {"type": "none"})
            data["net"] = net
        return data

    @model_validator(mode="after")
    def _check(self) -> VAEModelConfig:
        if self.net.sample_rate != self.sample_rate:
            raise ValueError(f"model.net.sample_rate ({self.net.sample_rate}) must equal "
                             f"model.sample_rate ({self.sample_rate})")
        if self.net.channels != 1:
            raise ValueError("model.net.channels must be 1 (channels are folded into the batch)"
                             "; set model.channels")
        if self.stereo == "midside" and self.channels != 2:
            raise ValueError("model.stereo 'midside' needs model.channels 2")
        if self.posterior_flow.standardize:
            raise ValueError("model.posterior_flow.standardize: running statistics belong to "
                             "the prior flow (a density over latents); remove it")
        width = self.net.resolved_latent_dim * self.channels
        if self.pooling == "attention" and width % self.pooling_heads:
            raise ValueError(f"model.pooling_heads ({self.pooling_heads}) must divide the "
                             f"pooled width ({width} = net.latent_dim x channels)")
        return self

    @property
    def hop_length(self) -> int:
        return self.net.hop_length

    @property
    def frames(self) -> int:
        return max(1, math.ceil(self.seconds * self.sample_rate / self.hop_length))

    @property
    def n_samples(self) -> int:
        return self.frames * self.hop_length


@dataclass
class VAEOutput:
    """What `OneShotVAE.forward` returns (B sounds, D latent dims).

    audio: reconstruction [B, C, T] (T as the input). z: the latent the decoder consumed
    [B, D] (z_K). z0, mean, std: the base posterior's draw and parameters [B, D] (std None
    for a plain autoencoder). log_det: the posterior flow's log |det dz_K/dz0| [B].
    log_q0, log_prior: log q0(z0 | x) and log p(z_K) [B] (None for a plain autoencoder;
    p is N(0, I) unless `prior_training: joint`).
    """

    audio: torch.Tensor
    z: torch.Tensor
    z0: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor | None
    log_det: torch.Tensor
    log_q0: torch.Tensor | None
    log_prior: torch.Tensor | None

    def kl_per_dim(self) -> torch.Tensor:
        """Closed-form KL of the base posterior to N(0, 1) per dimension [B, D] (nats)."""
        if self.std is None:
            raise SoundryError("a plain autoencoder has no posterior (variational: false)")
        return gaussian_kl_per_dim(self.mean, self.std)

    def kl(self, exact: bool) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per item [B] (nats): the closed form when `exact` (no flows),
        else the one-sample estimate log q0(z0) - log_det - log p(z_K)."""
        if exact:
            return self.kl_per_dim().sum(dim=-1)
        assert self.log_q0 is not None and self.log_prior is not None
        return self.log_q0 - self.log_det - self.log_prior


class AttentionPool(nn.Module):
    """Multi-head attention pooling over time with one learned query per head:
    frames [B, W, F] -> [B, W] (each head's softmax over frames weighs its W / heads dims)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.score = nn.Conv1d(width, heads, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, w, f = x.shape
        weights = torch.softmax(self.score(x), dim=-1)  # [B, H, F]
        values = x.reshape(b, self.heads, w // self.heads, f)
        return torch.einsum("bhf,bhdf->bhd", weights, values).reshape(b, w)


class OneShotVAE(nn.Module):
    """The VAE of `VAEModelConfig`; see the module docstring. Public API: `forward`,
    `encode`, `decode`, `sample`, `interpolate`, `prior_log_prob`."""

    def __init__(self, cfg: VAEModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.channels
        self.latent_dim = cfg.latent_dim
        self.n_samples = cfg.n_samples
        self.frames = cfg.frames
        net = cfg.net
        feat = net.resolved_latent_dim
        width = feat * cfg.channels
        pqmf = PQMF(net.pqmf_bands, net.pqmf_taps) if net.pqmf_bands else None
        # built in this order: it fixes which random numbers initialise which weights
        self.encoder = Encoder(net, pqmf, feat)
        # eps far below the untrained encoder's frame variance (~1e-6), which it must not swamp
        self.feature_norm: nn.Module | None = (
            GlobalBatchNorm1d(width, eps=1e-6) if cfg.feature_norm == "batch" else None)
        self.pool: nn.Module | None = (
            AttentionPool(width, cfg.pooling_heads) if cfg.pooling == "attention" else None)
        hidden = max(width, cfg.latent_dim)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.SiLU())
        n_out = 2 * cfg.latent_dim if cfg.variational else cfg.latent_dim
        self.to_posterior = nn.Linear(hidden, n_out)
        if cfg.variational:
            with torch.no_grad():  # softplus(b) + 1e-4 = posterior_init_std, for every sound
                target = max(cfg.posterior_init_std - 1e-4, 1e-6)
                self.to_posterior.bias[cfg.latent_dim:] = math.log(math.expm1(target))
                self.to_posterior.weight[cfg.latent_dim:].zero_()
        self.posterior_flow = _flow(cfg.posterior_flow, cfg.latent_dim,
                                    hidden if cfg.posterior_flow.context else 0, seed=1)
        self.prior = FlowPrior(_flow(cfg.prior_flow, cfg.latent_dim, 0, seed=2),
                               standardize=cfg.prior_flow.standardize)
        self.unpool = nn.Linear(cfg.latent_dim, cfg.channels * feat * cfg.frames)
        # zero-initialised, as FiLM below: the decoder starts from its learned seed (the
        # bias) and takes in z only along directions that lower the loss; a random map would
        # make z's spread noise to the untrained decoder, whose gradient then removes it
        nn.init.zeros_(self.unpool.weight)
        self.decoder = Decoder(net, pqmf)
        self.modulation = cfg.modulation
        self.film = nn.ModuleList()
        if cfg.modulation != "none":
            for block in self.decoder.blocks:
                ch = block.res[0].conv1.out_channels
                film = nn.Linear(cfg.latent_dim, 2 * ch)
                nn.init.zeros_(film.weight)  # starts unmodulated (gain 1, shift 0)
                nn.init.zeros_(film.bias)
                self.film.append(film)
        self.envelope: nn.Module | None = None
        if cfg.envelope == "latent":
            self.envelope = nn.Linear(cfg.latent_dim, cfg.channels * cfg.frames)
        elif cfg.envelope == "decoder":
            self.envelope = nn.Conv1d(self.decoder.stem.out_channels, 1, 1)
        if self.envelope is not None:
            nn.init.zeros_(self.envelope.weight)  # starts flat (gain 1), as unpool and FiLM
            nn.init.zeros_(self.envelope.bias)
        zero_conv_biases(self)  # as the codec does

    # -- shapes ----------------------------------------------------------------------------

    @property
    def exact_kl(self) -> bool:
        """True when the KL has a closed form (no posterior flow, KL taken to N(0, I))."""
        return self.posterior_flow.n_layers == 0 and not self.prior_in_kl

    @property
    def prior_in_kl(self) -> bool:
        """True when the KL is taken to the learned prior (`prior_training: joint`)."""
        return self.prior.learned and self.config.prior_training == "joint"

    @property
    def prior_fitted_apart(self) -> bool:
        """True when the prior flow learns from detached latents (its own NLL term)."""
        return self.prior.learned and not self.prior_in_kl

    def fit_length(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, n_samples]: zero-padded at the end or trimmed."""
        if audio.dim() != 3:
            raise SoundryError(f"VAE input must be [batch, channels, time], got "
                               f"{tuple(audio.shape)}")
        if audio.shape[1] != self.channels:
            raise SoundryError(f"this VAE takes {self.channels} channel(s), the audio has "
                               f"{audio.shape[1]}")
        t = audio.shape[-1]
        if t < self.n_samples:
            return F.pad(audio, (0, self.n_samples - t))
        return audio[..., : self.n_samples]

    def _to_coded(self, audio: torch.Tensor) -> torch.Tensor:
        if self.config.stereo == "midside":
            left, right = audio[:, :1], audio[:, 1:]
            return torch.cat([(left + right) / 2, (left - right) / 2], dim=1)
        return audio

    def _from_coded(self, audio: torch.Tensor) -> torch.Tensor:
        if self.config.stereo == "midside":
            mid, side = audio[:, :1], audio[:, 1:]
            return torch.cat([mid + side, mid - side], dim=1).clamp(-1.0, 1.0)
        return audio

    # -- encoder ---------------------------------------------------------------------------

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features h [B, hidden] of audio [B, C, T] (any T)."""
        x = self._to_coded(self.fit_length(audio))
        b, c, t = x.shape
        dtype = next(self.encoder.parameters()).dtype
        frames = self.encoder(x.reshape(b * c, 1, t).to(dtype)).float()  # [B*C, E, F]
        frames = frames.reshape(b, c * frames.shape[1], frames.shape[2])
        if self.feature_norm is not None:
            # Batch norm divides the encoder's gradients by its frames' std (~1e-3 untrained),
            # so they would dwarf the decoder's and the generator's one clip would shrink
            # every update. Scaled back by that std here (the forward pass is unchanged),
            # they are what unit-scale frames would get; Adam's steps do not depend on it.
            # (The global batch's std, as the norm's; evaluation has no batch statistics.)
            if self.training and torch.is_grad_enabled():
                _, var, _ = global_moments(frames.detach(), (0, 2))
                scale = (var + self.feature_norm.eps).sqrt()
                frames = frames * scale + (frames * (1 - scale)).detach()
            frames = self.feature_norm(frames)
        pooled = self.pool(frames) if self.pool is not None else frames.mean(dim=-1)
        return self.head(pooled)

    def posterior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, std) of q0(z0 | x) [B, D] from features h (std None: plain autoencoder).
        std = softplus(pre-scale) + 1e-4, as the codec's VAE bottleneck."""
        out = self.to_posterior(h)
        if not self.config.variational:
            return out, None
        mean, pre = out.chunk(2, dim=-1)
        return mean, F.softplus(pre) + 1e-4

    def forward(self, audio: torch.Tensor, noise: torch.Tensor | None = None) -> VAEOutput:
        """Encode (sampling z0 in training mode, the mean in eval), flow, decode.

        `noise` [B, D]: the standard normal draw of the posterior sample (training keys it
        by item, `soundry.nn.keyed_random.item_normals`); None draws it here."""
        length = audio.shape[-1]
        h = self.features(audio)
        mean, std = self.posterior(h)
        if std is not None and self.training:
            eps = torch.randn_like(mean) if noise is None else noise.to(mean)
            z0 = mean + std * eps
        else:
            z0 = mean
        z, log_det = self.posterior_flow(z0, h)
        log_q0 = log_prior = None
        if std is not None:
            log_q0 = gaussian_log_prob(z0, mean, std)
            log_prior = self.prior_log_prob(z) if self.prior_in_kl \
                else standard_normal_log_prob(z)
        y = self.decode(z)
        if y.shape[-1] < length:
            y = F.pad(y, (0, length - y.shape[-1]))
        return VAEOutput(audio=y[..., :length], z=z, z0=z0, mean=mean, std=std,
                         log_det=log_det, log_q0=log_q0, log_prior=log_prior)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio [B, C, T] -> latents [B, D]: the posterior mean through the posterior flow
        (deterministic, whatever the mode)."""
        h = self.features(audio)
        mean, _ = self.posterior(h)
        z, _ = self.posterior_flow(mean, h)
        return z

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) [B] of latents [B, D] under the prior (nats)."""
        if self.prior.learned:
            return self.prior.log_prob(z)
        return standard_normal_log_prob(z)

    # -- decoder ---------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, D] -> audio [B, C, n_samples] in [-1, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise SoundryError(f"VAE latents must be [batch, {self.latent_dim}], got "
                               f"{tuple(z.shape)}")
        dec = self.decoder
        dtype = next(dec.parameters()).dtype
        b, c = z.shape[0], self.channels
        seed = self.unpool(z).reshape(b * c, -1, self.frames)
        x = dec.stem(to_channels_last(seed.to(dtype)))
        log_gain = self._log_gain(z, from_channels_last(x)) if self.envelope is not None else None
        zc = z.repeat_interleave(c, dim=0)  # each channel's item sees its sound's latent
        for i, block in enumerate(dec.blocks):
            x = block(x)
            if self.modulation != "none":
                if self.modulation == "adain":  # normalise each channel over time first
                    x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-5)
                gain, shift = self.film[i](zc).to(dtype)[:, :, None, None].chunk(2, dim=1)
                x = x * (1 + gain) + shift
        y = from_channels_last(dec.proj(dec.act(x)))
        if dec.synthesis is not None:
            y = dec.synthesis(y)
        if log_gain is not None:
            y = y * self._gain(log_gain).to(y.dtype)[..., : y.shape[-1]]
        y = torch.tanh(y) if dec.output_tanh else y
        y = y.float().reshape(b, c, -1)[..., : self.n_samples]
        return self._from_coded(y)

    def _log_gain(self, z: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        """Log-gains per frame [B * C, 1, F]: a linear map of z ("latent") or a 1x1 conv of
        the decoder's stem output [B * C, E, F] ("decoder")."""
        assert self.envelope is not None
        if self.config.envelope == "latent":
            return self.envelope(z).reshape(z.shape[0] * self.channels, 1, self.frames)
        return self.envelope(stem.float())

    def _gain(self, log_gain: torch.Tensor) -> torch.Tensor:
        # clamped to [-16, 4] (-139 to +35 dB) so an outlying latent cannot overflow the
        # waveform; align_corners=False holds frame f's value at the centre of its hop
        gain = torch.exp(log_gain.float().clamp(-16.0, 4.0))
        return F.interpolate(gain, size=self.n_samples, mode="linear", align_corners=False)

    def gain(self, z: torch.Tensor) -> torch.Tensor:
        """The amplitude envelope [B * C, 1, n_samples] of latents z [B, D] (`envelope` set):
        exp of a log-gain per frame, held at the frame centres and interpolated linearly
        between them; log-gains are clamped to [-16, 4] (-139 to +35 dB)."""
        if self.envelope is None:
            raise SoundryError("this VAE has no envelope (model.envelope: none)")
        b = z.shape[0]
        seed = self.unpool(z).reshape(b * self.channels, -1, self.frames)
        dtype = next(self.decoder.parameters()).dtype
        stem = from_channels_last(self.decoder.stem(to_channels_last(seed.to(dtype))))
        return self._gain(self._log_gain(z, stem))

    # -- generation ------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latents(self, n: int, temperature: float | None = None,
                       seed: int | None = None) -> torch.Tensor:
        """n latents [n, D] from the prior (seeded draws are the same on every device);
        temperature None: the model's `sample_temperature`."""
        if temperature is None:
            temperature = self.config.sample_temperature
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        if self.prior.learned:
            return self.prior.sample(n, temperature, gen)
        eps = torch.randn(n, self.latent_dim, generator=gen) * float(temperature)
        return eps.to(self.unpool.weight.device)

    @torch.no_grad()
    def sample(self, n: int, temperature: float | None = None, seed: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio [n, C, n_samples], latents [n, D]) drawn from the prior (temperature None:
        the model's `sample_temperature`)."""
        z = self.sample_latents(n, temperature, seed)
        return self.decode(z), z

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int = 9,
                    path: Literal["linear", "slerp"] = "linear"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk from sound a to sound b ([C, T] or [1, C, T] each) in `steps` decoded points,
        both ends included: (audio [steps, C, n_samples], latents [steps, D])."""
        if steps < 2:
            raise SoundryError("interpolation needs at least 2 steps (both ends)")
        ends = [x if x.dim() == 3 else x[None] for x in (a, b)]
        za, zb = self.encode(torch.cat([self.fit_length(x) for x in ends]))
        t = torch.linspace(0.0, 1.0, steps, device=za.device)[:, None]
        z = slerp(za, zb, t) if path == "slerp" else (1 - t) * za + t * zb
        return self.decode(z), z

    def remove_weight_norm(self) -> OneShotVAE:
        """Fold weight norm into plain weights (same outputs); returns self."""
        remove_weight_norm(self)
        return self


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between vectors a, b [D] at fractions t [K, 1] -> [K, D]
    (norms interpolated linearly; falls back to linear for (anti)parallel ends)."""
    na, nb = a.norm(), b.norm()
    ua, ub = a / na.clamp(min=1e-8), b / nb.clamp(min=1e-8)
    omega = torch.arccos((ua * ub).sum().clamp(-1.0, 1.0))
    if float(torch.sin(omega).abs()) < 1e-4:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    direction = (torch.sin((1 - t) * omega) / so) * ua + (torch.sin(t * omega) / so) * ub
    return direction * ((1 - t) * na + t * nb)


@torch.no_grad()
def encode_set(vae: OneShotVAE, x: torch.Tensor, chunk: int = 8) -> dict[str, torch.Tensor]:
    """Posterior of sounds [N, C, T] in chunks: mean, std (base), z (through the flow),
    log_det, reconstruction audio [N, C, T] (CPU float32)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        h = vae.features(xb)
        mean, std = vae.posterior(h)
        z, log_det = vae.posterior_flow(mean, h)
        got = {"mean": mean, "z": z, "log_det": log_det,
               "audio": vae.decode(z)[..., : xb.shape[-1]]}
        if std is not None:
            got["std"] = std
        for k, v in got.items():
            parts.setdefault(k, []).append(v.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _flow(cfg: FlowConfig, dim: int, context_dim: int, seed: int) -> RealNVP:
    return RealNVP(dim, cfg.layers, cfg.hidden, context_dim, cfg.scale, cfg.actnorm,
                   cfg.mixing, seed=seed)


def build_vae(cfg: VAEModelConfig) -> OneShotVAE:
    """A randomly initialised VAE for a validated `VAEModelConfig`."""
    return OneShotVAE(cfg)


# ----------------------------------------------------------------------------- export


def vae_export_config(vae: OneShotVAE) -> dict[str, Any]:
    """The config.json body (without kind/version) of a VAE export."""
    from soundry.config import to_dict

    cfg = vae.config
    return {
        "model": to_dict(cfg),
        "sample_rate": cfg.sample_rate,
        "channels": cfg.channels,
        "latent_dim": cfg.latent_dim,
        "n_samples": cfg.n_samples,
        "seconds": cfg.n_samples / cfg.sample_rate,
    }


@EXPORT_KINDS.register("vae")
def load_vae_export(config: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the VAE of `config["model"]`, load `state` (folded or not), fold, eval mode."""
    from soundry.config import validate

    if "model" not in config:
        raise SoundryError("VAE export config.json has no 'model' section")
    cfg = validate(VAEModelConfig, config["model"], source="export config.json: model")
    vae = build_vae(cfg)
    load_folded(vae, state, cfg.net.weight_norm)
    return vae.eval()


__all__ = ["FlowConfig", "OneShotVAE", "VAEModelConfig", "VAEOutput", "build_vae", "encode_set",
           "load_vae_export", "slerp", "vae_export_config"]
