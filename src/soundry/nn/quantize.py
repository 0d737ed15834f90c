"""Residual quantizers over a latent sequence [B, D, F]: RVQ (DAC-style) and FSQ.

A residual quantizer is a stack of K stages. Stage i quantizes what the stages before it left
over (`residual -= stage_output`), and the quantized latent is the sum of the stage outputs,
so any prefix of the K code levels decodes to a coarser latent (bitrate is chosen at
inference by the number of levels).

VQ stage (DAC's "improved VQGAN" tricks, each marked where it happens below):
- factorized codes: a 1x1 conv projects the D-dim latent to a small `codebook_dim` (8) where
  the lookup happens, and another projects the chosen code back to D;
- L2-normalised lookup: nearest code by cosine similarity of normalised vectors (the code
  vector itself is used unnormalised);
- straight-through estimator: forward uses the code, backward copies the gradient to the
  projected latent;
- losses (per item, mean over dims and frames): commitment ||z_e - sg(z_q)||^2 trains the
  encoder, codebook ||sg(z_e) - z_q||^2 trains the codebook. They are returned unweighted;
  recipes weight them (DAC: 0.25 and 1).

Quantizer dropout (training mode only): a fraction `dropout` of the items of a batch use
n ~ U{1..K} levels instead of K, so the decoder learns to work at every bitrate. Levels past
an item's count are computed but masked out of its output and losses.

Training steps. A forward pass in training mode with gradients enabled is a *counted* pass:
it adds to the usage counters and may restart codes. Passes without gradients (a
discriminator-only phase, where the generator only supplies fakes) change nothing. The
trainer passes the optimizer step number (`forward(z, step=...)`), so restarts follow
optimizer steps, not forward passes: several micro-batches of one step restart at most once.
Without `step`, each counted pass is one step (standalone use). Random draws keyed by the
step (quantizer dropout, bypass) repeat across the micro-batches of one step.

Data-dependent initialisation (VQ, `init="data"`): on the first counted pass, before any
lookup, each stage's codebook is set to projected latents of that batch (stage by stage, so
stage i sees the residual left by the initialised stages before it). A random N(0, 1)
codebook in a factorized space is far from the encoder's latents; under cosine lookup a
handful of codes then win every frame, and the decoder learns to depend on those few. A
later mass restart then changes almost every code the decoder sees at once, which is a
discontinuity training may not survive (seen: commitment loss 3 -> 18 000, an output pinned
at the rail). Starting from data keeps the codebook where the latents are from step one.

Dead-code restart (VQ, optional): each stage counts how often each code is chosen; every
`restart_every` training steps, codes chosen fewer than `dead_code_threshold` times in that
window are replaced by projected latents of the current batch, in the raw (unnormalised)
space where the code vectors, the commitment and codebook losses and `out_proj` live. The
choice is identical on every distributed rank:

1. usage counts are summed over ranks (all_reduce), so every rank sees the same dead set;
2. each rank contributes a fixed number of candidate latents (all_gather, in rank order), so
   every rank holds the same candidate pool;
3. the candidates for the dead codes are drawn with a generator seeded by (seed, step) only,
   without replacement while the pool lasts; a candidate used twice is jittered (0.1 of the
   pool's spread) so the copies do not tie forever under argmax.

Without torch.distributed (or with one process) steps 1 and 2 are local, and the same seed,
step and data give the same restart. After a restart the optimizer's moments for the
replaced rows are stale; they decay within a few hundred steps.

FSQ stage (Mentzer et al. 2023): project to len(levels) dims, bound each dim with a tanh to
`levels[j]` values, round with a straight-through estimator, project back. The code is the
mixed-radix number of the per-dim values; there is no codebook and no auxiliary loss.

Semantic codecs (level 0 distilled from teacher features) have two more choices:
- a *plain* level-0 VQ stage (`project=False`): no factorising projections, the lookup is in
  the full latent space (EnCodec/SpeechTokenizer style). Factorised, L2-normalised 8-dim
  codes are reported to resist distillation: the head then has to read meaning out of a
  point on an 8-dim sphere.
- a *split* quantizer (`split=True`, Mimi): level 0 and the residual stack both quantize
  the encoder's latent z; stage 1 starts from z, not from z minus level 0's output. Level
  0 then holds a semantic summary and levels 1.. the acoustics, side by side; the decoder
  still sums every level's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from soundry.nn.conv import Conv1d
from soundry.nn.distributed import distributed as _distributed
from soundry.nn.distributed import rank as _rank
from soundry.nn.distributed import world_size as _world
from soundry.nn.keyed_random import item_uniforms, local_ids
from soundry.nn.keyed_random import mix as _mix


@dataclass
class StageOutput:
    """One stage's result. out [B, D, F]; codes [B, F]; latents [B, d, F]; losses [B]."""

    out: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor


@dataclass
class QuantizerOutput:
    """Result of a residual quantizer.

    quantized: sum of the used stages' outputs [B, D, F] (what the decoder consumes).
    codes: [B, K, F] long, K = the levels computed (all in training, else the levels asked).
    latents: projected latents of every computed stage, concatenated [B, K * d, F].
    commitment_loss, codebook_loss: scalars, summed over levels, mean over items.
    levels: [B] long, the number of levels each item used.
    level_outputs: each computed stage's quantized output [B, D, F] (unmasked by dropout;
      `level_outputs[0]` is level 0's vector, e.g. for a distillation head).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    levels: torch.Tensor
    level_outputs: list[torch.Tensor] = field(default_factory=list)


class VQStage(nn.Module):
    """Factorized, L2-normalised vector quantizer of a [B, dim, F] residual."""

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int,
        weight_norm: bool = True,
        lookup: str = "cosine",
        project: bool = True,
    ) -> None:
        super().__init__()
        if lookup not in ("cosine", "euclidean"):
            raise ValueError(f"lookup must be 'cosine' or 'euclidean', got {lookup!r}")
        if not project and codebook_dim != dim:
            raise ValueError(f"an unprojected VQ stage looks up in the latent space: "
                             f"codebook_dim must be {dim}, got {codebook_dim}")
        self.lookup_kind = lookup
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        # project=False: a plain (non-factorised) stage, codes live in the latent space
        self.in_proj: nn.Module = (Conv1d(dim, codebook_dim, 1, weight_norm=weight_norm)
                                   if project else nn.Identity())
        self.out_proj: nn.Module = (Conv1d(codebook_dim, dim, 1, weight_norm=weight_norm)
                                    if project else nn.Identity())
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        # Codes chosen since the last restart (for dead-code detection); saved for exact resume.
        self.register_buffer("usage", torch.zeros(codebook_size))

    def lookup(self, z_e: torch.Tensor) -> torch.Tensor:
        """Nearest code of each frame. z_e [B, d, F] -> codes [B, F].

        cosine (DAC): the largest dot product of L2-normalised vectors. euclidean: the
        smallest ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2, i.e. the largest 2 z.c - ||c||^2.
        """
        b, d, f = z_e.shape
        flat = z_e.transpose(1, 2).reshape(b * f, d).float()
        book = self.codebook.weight.float()
        if self.lookup_kind == "cosine":
            # on unit vectors the nearest neighbour is the largest dot product
            scores = F.normalize(flat, dim=1) @ F.normalize(book, dim=1).t()
        else:
            scores = 2 * flat @ book.t() - book.pow(2).sum(dim=1)[None]
        return scores.argmax(dim=1).reshape(b, f)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> code vectors [B, d, F] (unnormalised, as trained)."""
        return self.codebook(codes).transpose(1, 2)

    def forward(self, residual: torch.Tensor) -> StageOutput:
        z_e = self.in_proj(residual)
        codes = self.lookup(z_e)
        z_q = self.embed(codes).to(z_e.dtype)
        commitment = (z_e - z_q.detach()).pow(2).mean(dim=(1, 2))
        codebook = (z_q - z_e.detach()).pow(2).mean(dim=(1, 2))
        # Straight-through: the value of z_q, the gradient of z_e.
        z_st = z_e + (z_q - z_e).detach()
        return StageOutput(self.out_proj(z_st), codes, z_e, commitment, codebook)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> this stage's output [B, dim, F]."""
        return self.out_proj(self.embed(codes))


class FSQStage(nn.Module):
    """Finite scalar quantizer of a [B, dim, F] residual with `levels[j]` values per dim."""

    def __init__(self, dim: int, levels: list[int], weight_norm: bool = True) -> None:
        super().__init__()
        if any(n < 2 for n in levels):
            raise ValueError(f"FSQ levels must all be >= 2, got {levels}")
        self.levels = list(levels)
        self.codebook_size = math.prod(levels)
        self.in_proj = Conv1d(dim, len(levels), 1, weight_norm=weight_norm)
        self.out_proj = Conv1d(len(levels), dim, 1, weight_norm=weight_norm)
        lv = torch.tensor(levels, dtype=torch.float64)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), dim=0)
        self.register_buffer("_levels", lv.float()[None, :, None], persistent=False)
        self.register_buffer("_half", (lv // 2).float()[None, :, None], persistent=False)
        self.register_buffer("_basis", basis[None, :, None], persistent=False)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash z [B, n, F] so that rounding yields exactly `levels[j]` values per dim."""
        # (1 + eps), not (1 - eps): for an even level count the shift is atanh(0.5 /
        # half_width), which needs half_width > 0.5 (NaN for levels of 2 otherwise). Rounding
        # the slightly wider range still gives exactly `levels` values.
        eps = 1e-3
        half_width = (self._levels - 1) * (1 + eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_width)
        return torch.tanh(z + shift) * half_width - offset

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Projected z [B, n, F] -> grid values in [-1, 1] (straight-through rounding)."""
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half

    def values_to_codes(self, values: torch.Tensor) -> torch.Tensor:
        """Grid values [B, n, F] -> codes [B, F] (mixed radix, first dim least significant)."""
        digits = torch.round(values * self._half + self._half).long()
        return (digits * self._basis).sum(dim=1)

    def codes_to_values(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> grid values [B, n, F]."""
        digits = (codes[:, None, :] // self._basis) % self._levels.long()
        return (digits.float() - self._half) / self._half

    def forward(self, residual: torch.Tensor) -> StageOutput:
        z = self.in_proj(residual)
        values = self.quantize(z)
        zero = residual.new_zeros(residual.shape[0])
        codes = self.values_to_codes(values.detach())
        return StageOutput(self.out_proj(values), codes, z, zero, zero)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, F] -> this stage's output [B, dim, F]."""
        return self.out_proj(self.codes_to_values(codes))


class ResidualQuantizer(nn.Module):
    """K residual stages (VQ or FSQ) with quantizer dropout and optional dead-code restart.

    `seed` seeds quantizer dropout (with the step and rank) and restarts (with the step);
    set it from the run's seed.
    """

    def __init__(
        self,
        stages: list[nn.Module],
        dropout: float = 0.0,
        dead_code_threshold: float = 0.0,
        restart_every: int = 100,
        restart_candidates: int = 256,
        seed: int = 0,
        init: str = "random",
        bypass: float = 0.0,
        bypass_steps: int = 0,
        split: bool = False,
    ) -> None:
        super().__init__()
        if init not in ("random", "data"):
            raise ValueError(f"init must be 'random' or 'data', got {init!r}")
        if not stages:
            raise ValueError("a residual quantizer needs at least one stage")
        self.stages = nn.ModuleList(stages)
        self.dropout = float(dropout)
        self.dead_code_threshold = float(dead_code_threshold)
        self.restart_every = int(restart_every)
        self.restart_candidates = int(restart_candidates)
        self.seed = int(seed)
        self.init = init
        if not 0.0 <= bypass <= 1.0:
            raise ValueError(f"bypass must be in [0, 1], got {bypass}")
        self.bypass = float(bypass)
        self.bypass_steps = int(bypass_steps)
        # Mimi's split: stage 1 quantizes z itself, beside level 0 (see the module docstring)
        self.split = bool(split) and len(stages) > 1
        # The last counted training step, and whether the data-dependent init has run (both
        # saved, so a resumed run neither re-initialises nor shifts its restart steps).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        if isinstance(self.stages[0], VQStage):  # FSQ has no codebook to initialise
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def n_codebooks(self) -> int:
        return len(self.stages)

    @property
    def codebook_size(self) -> int:
        return int(self.stages[0].codebook_size)

    @property
    def has_losses(self) -> bool:
        """True for VQ stages (commitment and codebook losses); FSQ has none."""
        return isinstance(self.stages[0], VQStage)

    @property
    def restarts_enabled(self) -> bool:
        return self.dead_code_threshold > 0 and isinstance(self.stages[0], VQStage)

    def mark_initialized(self) -> None:
        """Record that the codebooks hold trained (loaded) values: no data-dependent init."""
        if hasattr(self, "initialized"):
            self.initialized.fill_(True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # type: ignore[override]
        # Weights saved before the `initialized` flag existed are trained weights: load them
        # as initialised (a data-dependent init would overwrite the loaded codebooks).
        # An FSQ quantizer saved with the flag (it has no codebook) loads without it.
        key = prefix + "initialized"
        if hasattr(self, "initialized") and key not in state_dict:
            state_dict[key] = torch.ones((), dtype=torch.bool)
        elif not hasattr(self, "initialized"):
            state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- levels ------------------------------------------------------------------------------

    def _check_levels(self, n_levels: int | None) -> int:
        if n_levels is None:
            return self.n_codebooks
        if not 1 <= int(n_levels) <= self.n_codebooks:
            raise ValueError(f"n_levels must be in 1..{self.n_codebooks}, got {n_levels}")
        return int(n_levels)

    def draw_levels(self, batch: int, step: int, item_ids: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Levels per item [batch] for quantizer dropout at `step` (training).

        Each item is dropped with probability `dropout` and then gets n ~ U{1..K}; the others
        get K. The draws of an item depend on (seed, step, its id) only (`item_ids`: the
        batch's global item indices; None: per-rank stand-ins), so runs, resumes and any
        number of processes repeat them exactly.
        """
        ids = local_ids(batch, _rank()) if item_ids is None else item_ids
        u = item_uniforms(ids, self.seed, step, 0x51D, count=2)
        levels = torch.full((batch,), self.n_codebooks, dtype=torch.long)
        drop = u[:, 0] < self.dropout
        drawn = 1 + (u[:, 1] * self.n_codebooks).long().clamp(max=self.n_codebooks - 1)
        return torch.where(drop, drawn, levels)

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self, z: torch.Tensor, n_levels: int | None = None, step: int | None = None,
        item_ids: torch.Tensor | None = None,
    ) -> QuantizerOutput:
        """Quantize z [B, D, F].

        Training: every level is computed; items use the levels drawn by quantizer dropout
        (or `n_levels` for all items when given). Eval: only the first `n_levels` (default
        all) are computed. `step` is the optimizer step this pass belongs to (see the module
        docstring); None counts each counted pass as a step. `item_ids` [B]: the items'
        global indices, which key their dropout and bypass draws (see `draw_levels`).
        """
        b = z.shape[0]
        counted = self.training and torch.is_grad_enabled()
        new_step = False
        if counted:
            step = int(self.steps) + 1 if step is None else int(step)
            new_step = step != int(self.steps)
            self.steps.fill_(step)
        init_now = (
            counted
            and self.init == "data"
            and isinstance(self.stages[0], VQStage)
            and not bool(self.initialized)
        )
        if self.training:
            if n_levels is None:
                levels = self.draw_levels(b, int(self.steps), item_ids).to(z.device)
            else:
                levels = torch.full((b,), self._check_levels(n_levels), device=z.device)
            n_compute = self.n_codebooks
        else:
            n_compute = self._check_levels(n_levels)
            levels = torch.full((b,), n_compute, dtype=torch.long, device=z.device)

        residual = z
        quantized = torch.zeros_like(z)
        commitment = z.new_zeros(())
        codebook = z.new_zeros(())
        codes, latents, outs = [], [], []
        for i, stage in enumerate(self.stages[:n_compute]):
            if init_now:
                self._init_stage(stage, residual, i)
            res = stage(residual)
            active = (levels > i).to(res.out.dtype)
            quantized = quantized + res.out * active[:, None, None]
            residual = self._next_residual(i, z, residual, res.out)
            commitment = commitment + (res.commitment * active).mean()
            codebook = codebook + (res.codebook * active).mean()
            codes.append(res.codes)
            latents.append(res.latents)
            outs.append(res.out)

        out = QuantizerOutput(
            quantized=self._bypass(z, quantized, item_ids) if self.training and self.bypass
            else quantized,
            codes=torch.stack(codes, dim=1),
            latents=torch.cat(latents, dim=1),
            commitment_loss=commitment,
            codebook_loss=codebook,
            levels=levels,
            level_outputs=outs,
        )
        if init_now:
            self.initialized.fill_(True)
        if counted:
            self._after_counted_pass(out, restart=new_step)
        return out

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n_levels: int | None = None) -> torch.Tensor:
        """Codes [B, n_levels, F] of z [B, D, F] (no dropout, whatever the mode)."""
        n = self._check_levels(n_levels)
        residual = z
        codes = []
        for i, stage in enumerate(self.stages[:n]):
            res = stage(residual)
            residual = self._next_residual(i, z, residual, res.out)
            codes.append(res.codes)
        return torch.stack(codes, dim=1)

    def _next_residual(self, i: int, z: torch.Tensor, residual: torch.Tensor,
                       out: torch.Tensor) -> torch.Tensor:
        """What stage i + 1 quantizes: the residual, or z itself after a split level 0."""
        if self.split and i == 0:
            return z
        return residual - out

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K', F] with K' <= K (a prefix of the levels) -> quantized [B, D, F]."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.n_codebooks:
            raise ValueError(
                f"codes must be [batch, levels <= {self.n_codebooks}, frames], got "
                f"{tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        codes = codes.long()
        out = self.stages[0].decode_codes(codes[:, 0])
        for i in range(1, codes.shape[1]):
            out = out + self.stages[i].decode_codes(codes[:, i])
        return out

    def bypass_at(self, step: int) -> float:
        """The bypass fraction at training step `step`: `bypass`, or with `bypass_steps`, a
        linear decay from `bypass` at step 0 to 0 at step `bypass_steps`."""
        if not self.bypass_steps:
            return self.bypass
        return self.bypass * max(0.0, 1.0 - step / self.bypass_steps)

    def _bypass(self, z: torch.Tensor, quantized: torch.Tensor,
                item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Training: each item passes z unquantized with probability `bypass_at(step)`
        (keyed by (seed, step, item id) like quantizer dropout)."""
        b = z.shape[0]
        step = int(self.steps)
        ids = local_ids(b, _rank()) if item_ids is None else item_ids
        u = item_uniforms(ids, self.seed, step, 0xB1A5)[:, 0]
        keep = (u < self.bypass_at(step)).to(z.device)
        return torch.where(keep[:, None, None], z, quantized)

    # -- dead-code restart -------------------------------------------------------------------

    @torch.no_grad()
    def _init_stage(self, stage: VQStage, residual: torch.Tensor, index: int) -> None:
        """Set a stage's codebook to projected latents of this batch (same on every rank)."""
        z_e = stage.in_proj(residual).detach()  # [B, d, F]
        latents = z_e.permute(0, 2, 1).reshape(1, -1, z_e.shape[1])  # [1, N, d]
        per_rank = max(self.restart_candidates, -(-stage.codebook_size // _world()))
        pool = self._shared_pool(latents, int(self.steps), 0x1417 + index, per_rank)[0]
        gen = torch.Generator().manual_seed(_mix(self.seed, int(self.steps), 0x1417, index))
        weight = stage.codebook.weight
        weight.copy_(_draw(pool, weight.shape[0], gen).to(weight))

    @torch.no_grad()
    def _after_counted_pass(self, out: QuantizerOutput, restart: bool) -> None:
        if not self.restarts_enabled:
            return
        for i, stage in enumerate(self.stages):
            active = out.levels > i
            if active.any():
                used = out.codes[:, i][active].reshape(-1)
                stage.usage += torch.bincount(used, minlength=stage.codebook_size).to(stage.usage)
        if restart and int(self.steps) % self.restart_every == 0:
            dims = [s.codebook_dim for s in self.stages]
            b, _, f = out.latents.shape
            if len(set(dims)) == 1:
                d = dims[0]
                per_stage = out.latents.detach().reshape(b, self.n_codebooks, d, f)
                self.restart_dead_codes(
                    per_stage.permute(1, 0, 3, 2).reshape(self.n_codebooks, -1, d))
            else:  # a plain level 0 beside factorised levels: one pool a stage
                parts = out.latents.detach().split(dims, dim=1)
                self.restart_dead_codes([p.permute(0, 2, 1).reshape(-1, p.shape[1])
                                         for p in parts])

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor | list[torch.Tensor]) -> list[int]:
        """Replace dead codes by candidate latents; returns the number replaced per stage.

        latents: [K, N, d] projected latents of this rank's batch, per stage (or a list of
        K [N, d_k] when the stages' code dims differ). The replaced
        rows and their new values are the same on every rank (see the module docstring).
        Usage counters restart at zero.
        """
        step = int(self.steps)
        usage = torch.stack([s.usage for s in self.stages])  # [K, codebook_size]
        if _distributed():
            dist.all_reduce(usage, op=dist.ReduceOp.SUM)
        if isinstance(latents, torch.Tensor):
            pool = self._shared_pool(latents, step, salt=0xCA4D)  # [K, world * candidates, d]
        else:
            pool = [self._shared_pool(x[None], step, salt=0xCA4D + k)[0]
                    for k, x in enumerate(latents)]
        gen = torch.Generator().manual_seed(_mix(self.seed, step, 0xDEAD))
        replaced = []
        for stage, stage_usage, stage_pool in zip(self.stages, usage, pool, strict=True):
            dead = torch.nonzero(stage_usage < self.dead_code_threshold).flatten()
            if dead.numel():
                weight = stage.codebook.weight
                new = _draw(stage_pool, dead.numel(), gen)
                weight[dead.to(weight.device)] = new.to(weight)
            replaced.append(int(dead.numel()))
            stage.usage.zero_()
        return replaced

    def _shared_pool(
        self, latents: torch.Tensor, step: int, salt: int, per_rank: int | None = None
    ) -> torch.Tensor:
        """The same candidate pool on every rank: [K, world * per_rank, d].

        Each rank offers a fixed-size random subset of its latents [K, N, d] (without
        replacement while N lasts; `per_rank` defaults to `restart_candidates`, the same on
        every rank, so the all_gather sizes match); the subsets are gathered in rank order.
        """
        k, n, d = latents.shape
        gen = torch.Generator().manual_seed(_mix(self.seed, step, _rank(), salt))
        idx = _indices(n, per_rank or self.restart_candidates, gen).to(latents.device)
        pool = latents[:, idx].float().contiguous()
        if _distributed():
            gathered = [torch.empty_like(pool) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, pool)
            pool = torch.cat(gathered, dim=1)
        return pool


def _indices(n: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` indices into range(n): a random permutation, repeated when count > n."""
    reps = -(-count // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:count]


def _draw(pool: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` rows from the distinct rows of pool [N, d], without replacement while they last.

    A pool can hold copies (a batch with fewer latents than candidates). Exact copies of one
    vector tie under argmax and all but one would never be chosen, so once the distinct rows
    are used up every further row is a jittered copy (Gaussian, 0.1 x the pool's spread).
    """
    distinct = torch.unique(pool, dim=0)
    n = distinct.shape[0]
    rows = distinct[_indices(n, count, gen).to(pool.device)].clone()
    if count > n:
        spread = distinct.std(dim=0, keepdim=True) if n > 1 else distinct.abs() + 1e-3
        noise = torch.randn(count - n, pool.shape[1], generator=gen).to(pool)
        rows[n:] += 0.1 * spread.clamp_min(1e-6) * noise
    return rows
