"""A transformer language model over codec tokens, conditioned on text or tags.

Input sequence (one transformer position each), left to right::

    [condition bytes ...] [prompt frames ...] [BOS step] [step 1] ... [step S-1]

- Conditioning: tags or free text as UTF-8 bytes (`ByteTokenizer`), a prefix of the
  sequence. For classifier-free guidance, a fraction `uncond_frac` of training items gets
  the null condition (the empty text), which is also what the unconditional rows of guided
  generation see.
- Audio prompt (optional): codes [B, K, Tp] embedded one frame per position (all levels of
  a frame together), marked by a learned prompt vector; never in the loss.
- Audio steps: a codebook pattern (`soundry.models.patterns`) lays codes [B, K, T] out as
  steps [B, K, S]. Each level has its own embedding table (audio codes + EOS/PAD/BOS/MASK)
  plus a level-position vector; the K level vectors of a step are summed with learned
  softmax weights (or plainly).
- Output: K predictions (audio codes + EOS) per step, from one head per level or one shared
  head with a per-level bias.

Prefix rows of different lengths are left-padded; padding is masked out of attention and out
of rotary positions, so a row computes the same whatever it is batched with.

Loss: cross-entropy per level over the cells holding an audio code or EOS (PAD, BOS and MASK
never count; EOS always does), weighted by per-level weights; per-level loss, accuracy and
output entropy are returned for logging.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from soundry.config import Strict
from soundry.models.patterns import (
    DelayPatternConfig,
    Pattern,
    PatternConfig,
    SpecialTokens,
    build_pattern,
)
from soundry.nn.inductor import prepare_compile
from soundry.nn.quant import quantize_linears
from soundry.nn.transformer import KVCache, Transformer, TransformerConfig, project

# ----------------------------------------------------------------------------- configs


class TextConfig(Strict):
    """Byte-level conditioning text: at most `max_bytes` bytes of each text are kept."""

    max_bytes: int = Field(256, ge=1)
    shuffle_tags: bool = True


class TokenLMConfig(Strict):
    """A token LM over `levels` codebooks of `card` codes each.

    loss_weights: one per level (normalised to sum 1); default equal.
    level_combine: 'softmax' (learned softmax weights over levels) or 'sum'.
    uncond_frac: fraction of training items whose condition is replaced by the null one.
    """

    levels: int = Field(4, ge=1)
    card: int = Field(1024, ge=2)
    pattern: PatternConfig = Field(default_factory=DelayPatternConfig)
    transformer: TransformerConfig = Field(default_factory=TransformerConfig)
    level_combine: Literal["softmax", "sum"] = "softmax"
    shared_head: bool = False
    loss_weights: list[float] | None = None
    text: TextConfig = Field(default_factory=TextConfig)
    uncond_frac: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> TokenLMConfig:
        if self.loss_weights is not None:
            if len(self.loss_weights) != self.levels:
                raise ValueError(
                    f"loss_weights has {len(self.loss_weights)} entries for {self.levels} levels"
                )
            if min(self.loss_weights) < 0 or sum(self.loss_weights) <= 0:
                raise ValueError("loss_weights must be >= 0 with a positive sum")
        return self


# ----------------------------------------------------------------------------- text


class ByteTokenizer:
    """UTF-8 bytes 0..255, then BOS (256), EOS (257), PAD (258). The null text is [BOS, EOS]."""

    BOS = 256
    EOS = 257
    PAD = 258
    VOCAB = 259

    def __init__(self, max_bytes: int = 256) -> None:
        self.max_bytes = max_bytes

    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")[: self.max_bytes]
        return [self.BOS, *data, self.EOS]

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, L] left-padded with PAD, valid [B, L] bool)."""
        encoded = [self.encode(t) for t in texts]
        width = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), width), self.PAD, dtype=torch.long)
        valid = torch.zeros((len(encoded), width), dtype=torch.bool)
        for row, seq in enumerate(encoded):
            if seq:
                ids[row, width - len(seq) :] = torch.tensor(seq)
                valid[row, width - len(seq) :] = True
        return ids, valid


def condition_text(
    text: str | None = None,
    tags: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> str:
    """The conditioning string: tags joined by ', ' (shuffled when `rng` is given), then text."""
    parts = []
    if tags:
        tags = [str(t).strip() for t in tags if str(t).strip()]
        if rng is not None:
            tags = list(tags)
            rng.shuffle(tags)
        if tags:
            parts.append(", ".join(tags))
    if text:
        parts.append(text.strip())
    return " | ".join(parts)


# ----------------------------------------------------------------------------- conditioning


@dataclass
class Conditioning:
    """Prefix inputs of a batch.

    text: [B, L] byte ids, left-padded; text_valid: [B, L] bool.
    prompt: [B, K, Tp] codes or None; prompt_valid: [B, Tp] bool (left-padded) or None.
    """

    text: torch.Tensor
    text_valid: torch.Tensor
    prompt: torch.Tensor | None = None
    prompt_valid: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.text.shape[0]

    @property
    def length(self) -> int:
        """Number of prefix positions."""
        return self.text.shape[1] + (self.prompt.shape[2] if self.prompt is not None else 0)

    def to(self, device: torch.device | str) -> Conditioning:
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Conditioning(
            move(self.text), move(self.text_valid), move(self.prompt), move(self.prompt_valid)
        )

    @staticmethod
    def concat(parts: Sequence[Conditioning]) -> Conditioning:
        """Stack batches, left-padding texts and prompts to common lengths."""

        def left_pad(t: torch.Tensor, width: int, value: int | bool) -> torch.Tensor:
            return F.pad(t, (width - t.shape[-1], 0), value=value)

        width = max(p.text.shape[1] for p in parts)
        text = torch.cat([left_pad(p.text, width, ByteTokenizer.PAD) for p in parts])
        text_valid = torch.cat([left_pad(p.text_valid, width, False) for p in parts])
        if all(p.prompt is None for p in parts):
            return Conditioning(text, text_valid)
        ref = next(p.prompt for p in parts if p.prompt is not None)
        plen = max(p.prompt.shape[2] for p in parts if p.prompt is not None)
        prompts, valids = [], []
        for p in parts:
            if p.prompt is None:
                prompts.append(ref.new_zeros(p.batch, ref.shape[1], plen))
                valids.append(torch.zeros(p.batch, plen, dtype=torch.bool, device=ref.device))
            else:
                pv = p.prompt_valid
                if pv is None:
                    pv = torch.ones(p.batch, p.prompt.shape[2], dtype=torch.bool)
                prompts.append(left_pad(p.prompt, plen, 0))
                valids.append(left_pad(pv.to(ref.device), plen, False))
        return Conditioning(text, text_valid, torch.cat(prompts), torch.cat(valids))


@dataclass
class LossOutput:
    """loss: weighted mean over levels; per-level tensors are [K] (no gradient)."""

    loss: torch.Tensor
    level_loss: torch.Tensor
    level_accuracy: torch.Tensor
    level_entropy: torch.Tensor
    level_count: torch.Tensor
    logits: torch.Tensor | None = field(default=None, repr=False)
    eos_count: torch.Tensor | None = None  # EOS targets counted by the loss (scalar)
    eos_prob: torch.Tensor | None = None  # mean predicted EOS probability on them

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat scalars for logging: loss, loss/level_k, accuracy/level_k, entropy/level_k."""
        out = {f"{prefix}loss": float(self.loss.detach())}
        for k in range(len(self.level_loss)):
            out[f"{prefix}loss/level_{k}"] = float(self.level_loss[k])
            out[f"{prefix}accuracy/level_{k}"] = float(self.level_accuracy[k])
            out[f"{prefix}entropy/level_{k}"] = float(self.level_entropy[k])
        return out


# ----------------------------------------------------------------------------- model


class TokenLM(nn.Module):
    """Transformer LM over codebook-pattern sequences with a text/tag/prompt prefix."""

    def __init__(self, cfg: TokenLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pattern: Pattern = build_pattern(cfg.pattern, cfg.levels, cfg.card)
        self.tokens = SpecialTokens(cfg.card)
        self.tokenizer = ByteTokenizer(cfg.text.max_bytes)
        dim = cfg.transformer.dim
        levels = cfg.levels
        n_in, n_out = self.tokens.n_input, self.tokens.n_output

        # One table holding every level's rows: a single lookup embeds all K levels.
        self.audio_embed = nn.Embedding(levels * n_in, dim)
        self.register_buffer(
            "level_offsets", torch.arange(levels).view(1, levels, 1) * n_in, persistent=False
        )
        self.level_position = nn.Parameter(torch.zeros(levels, dim))
        self.level_logits = nn.Parameter(torch.zeros(levels))
        self.text_embed = nn.Embedding(ByteTokenizer.VOCAB, dim)
        self.prompt_marker = nn.Parameter(torch.zeros(dim))
        self.transformer = Transformer(cfg.transformer)
        if cfg.shared_head:
            self.head = nn.Linear(dim, n_out, bias=False)
            self.head_level_bias = nn.Parameter(torch.zeros(levels, n_out))
        else:
            self.head = nn.Linear(dim, levels * n_out, bias=False)
        weights = torch.tensor(cfg.loss_weights or [1.0] * levels, dtype=torch.float32)
        self.register_buffer("loss_weights", weights / weights.sum(), persistent=False)
        for emb in (self.audio_embed, self.text_embed, self.head):
            nn.init.normal_(emb.weight, 0.0, 0.02)
        nn.init.normal_(self.level_position, 0.0, 0.02)
        nn.init.normal_(self.prompt_marker, 0.0, 0.02)

    # -- conditioning ----------------------------------------------------------------------

    def make_conditioning(
        self,
        texts: Sequence[str | None] | None = None,
        tags: Sequence[Sequence[str] | None] | None = None,
        seeds: Sequence[int] | None = None,
        train: bool = False,
        prompt: torch.Tensor | None = None,
        prompt_valid: torch.Tensor | None = None,
    ) -> Conditioning:
        """Conditioning for a batch of texts and/or tag lists.

        With `train`, each item's tags are shuffled (if enabled) and its condition is
        dropped with probability `uncond_frac`, both drawn from `random.Random(seeds[i])`,
        so the choices depend only on the item's seed.
        """
        n = len(texts) if texts is not None else len(tags) if tags is not None else 0
        if prompt is not None:
            n = max(n, prompt.shape[0])
        if train and (seeds is None or len(seeds) < n):
            raise ValueError("training conditioning needs one seed per item")
        strings = []
        for i in range(n):
            rng = random.Random(seeds[i]) if (train and seeds is not None) else None
            text = texts[i] if texts is not None else None
            tag = tags[i] if tags is not None else None
            if rng is not None and rng.random() < self.cfg.uncond_frac:
                strings.append("")
                continue
            shuffle = rng if (rng is not None and self.cfg.text.shuffle_tags) else None
            strings.append(condition_text(text, tag, shuffle))
        ids, valid = self.tokenizer.batch(strings)
        if prompt is not None and prompt_valid is None:
            prompt_valid = torch.ones(prompt.shape[0], prompt.shape[2], dtype=torch.bool)
        return Conditioning(ids, valid, prompt, prompt_valid)

    def null_conditioning(self, batch: int, like: Conditioning | None = None) -> Conditioning:
        """The unconditional input: empty text; keeps `like`'s audio prompt if it has one."""
        ids, valid = self.tokenizer.batch([""] * batch)
        if like is None:
            return Conditioning(ids, valid)
        return Conditioning(
            ids.to(like.text.device), valid.to(like.text.device), like.prompt, like.prompt_valid
        )

    # -- embeddings ------------------------------------------------------------------------

    def level_weights(self) -> torch.Tensor:
        """[K] weights combining the level embeddings of a step."""
        if self.cfg.level_combine == "sum":
            return torch.ones_like(self.level_logits)
        return torch.softmax(self.level_logits, dim=0)

    def embed_steps(self, seq: torch.Tensor) -> torch.Tensor:
        """Token ids [B, K, S] -> step vectors [B, S, dim]."""
        vectors = self.audio_embed(seq + self.level_offsets)  # [B, K, S, D]
        vectors = vectors + self.level_position[None, :, None, :]
        return torch.einsum("bksd,k->bsd", vectors, self.level_weights().to(vectors.dtype))

    def embed_prefix(self, cond: Conditioning | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Conditioning -> (vectors [B, P, dim], valid [B, P]), or None without a prefix."""
        if cond is None:
            return None
        x = self.text_embed(cond.text)
        valid = cond.text_valid
        if cond.prompt is not None:
            prompt = self.embed_steps(cond.prompt) + self.prompt_marker
            pvalid = cond.prompt_valid
            if pvalid is None:
                pvalid = torch.ones(prompt.shape[:2], dtype=torch.bool, device=prompt.device)
            x = torch.cat([x, prompt.to(x.dtype)], dim=1)
            valid = torch.cat([valid, pvalid], dim=1)
        return x, valid

    def quantize_int8(self) -> TokenLM:
        """Int8 weight-only projections (`soundry.nn.quant`): a quarter of float32's weight
        bytes read per decoding step. Inference only; returns self."""
        if self.training:
            raise ValueError("int8 weights are for inference: call .eval() first")
        quantize_linears(self)
        return self

    def compile_decode(self) -> str | None:
        """torch.compile the one-step decoding pass (`decode`; shapes dynamic in the cache
        length, so one compilation serves every step). Returns None, or why it stayed
        eager (no C++ compiler for CPU kernels). The first generation pays the
        compilation (~10-25 s on a 2-core CPU for a 512-wide, 8-layer LM)."""
        reason = prepare_compile(next(self.parameters()).device)
        if reason is not None:
            return reason
        self.decode = torch.compile(self.decode, dynamic=True)  # type: ignore[method-assign]
        return None

    def heads(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden [B, S, dim] -> logits [B, K, S, V] (V = card + 1: audio codes and EOS)."""
        batch, steps, _ = hidden.shape
        n_out = self.tokens.n_output
        logits = project(hidden, self.head)
        if self.cfg.shared_head:
            return logits[:, None] + self.head_level_bias[None, :, None, :]
        return logits.view(batch, steps, self.cfg.levels, n_out).transpose(1, 2)

    # -- forward ---------------------------------------------------------------------------

    def forward(self, seq: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """Input steps [B, K, S] -> logits [B, K, S, V] predicting each next step."""
        x = self.embed_steps(seq)
        prefix = self.embed_prefix(cond)
        valid = None
        if prefix is not None:
            px, pvalid = prefix
            x = torch.cat([px.to(x.dtype), x], dim=1)
            valid = torch.cat([pvalid, pvalid.new_ones(seq.shape[0], seq.shape[2])], dim=1)
        hidden = self.transformer(x, valid=valid)
        return self.heads(hidden[:, hidden.shape[1] - seq.shape[2] :])

    def loss(
        self, seq: torch.Tensor, cond: Conditioning | None = None, keep_logits: bool = False,
        denominator: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> LossOutput:
        """Teacher-forced loss of full pattern sequences [B, K, S] (from `pattern.build`)."""
        logits = self(seq[:, :, :-1], cond)
        return self.loss_from_logits(logits, seq[:, :, 1:], keep_logits, denominator)

    def loss_from_logits(
        self, logits: torch.Tensor, target: torch.Tensor, keep_logits: bool = False,
        denominator: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> LossOutput:
        """logits [B, K, S, V] against target ids [B, K, S]; only audio and EOS cells count.

        Each level's loss is its summed NLL over its counted cells. `denominator` maps this
        batch's counts [K] to what to divide by (default: the counts): data-parallel
        training passes the counts of the whole global batch divided by the number of
        processes, so that averaging the processes' gradients gives the token-weighted mean
        over the global batch, as one process with the whole batch computes it.
        """
        n_out = logits.shape[-1]
        levels = logits.shape[1]
        counted = target < n_out  # audio codes and EOS; PAD/BOS/MASK are >= n_out
        logp = F.log_softmax(logits.float(), dim=-1)
        safe_target = torch.where(counted, target, torch.zeros_like(target))
        nll = -logp.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # [B, K, S]
        mask = counted.float()
        count = mask.sum(dim=(0, 2))  # [K]
        shared = count if denominator is None else denominator(count)
        level_loss = (nll * mask).sum(dim=(0, 2)) / shared.clamp(min=1e-8)
        denom = count.clamp(min=1.0)
        weights = self.loss_weights.to(level_loss.device)[:levels]
        present = (shared > 0).float()  # a level with no counted cell adds nothing
        total = (weights * present * level_loss).sum() / (weights * present).sum().clamp(min=1e-8)
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).float() * mask
            accuracy = correct.sum(dim=(0, 2)) / denom
            entropy = -(logp.exp() * logp).sum(-1)
            level_entropy = (entropy * mask).sum(dim=(0, 2)) / denom
            # EOS (the last output class) among the counted targets: how often the loss
            # teaches the model to stop, and the probability it gives the stop there
            is_eos = counted & (target == n_out - 1)
            eos_count = is_eos.sum().float()
            eos_prob = (logp[..., n_out - 1].exp() * is_eos).sum() / eos_count.clamp(min=1.0)
        return LossOutput(
            loss=total,
            level_loss=level_loss.detach(),
            level_accuracy=accuracy,
            level_entropy=level_entropy,
            level_count=count,
            logits=logits if keep_logits else None,
            eos_count=eos_count,
            eos_prob=eos_prob,
        )

    # -- incremental decoding --------------------------------------------------------------

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A KV cache for `batch` rows of up to `max_len` positions (prefix + steps)."""
        return self.transformer.new_cache(batch, max_len)

    def prefill(
        self, cond: Conditioning | None, first: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """Run the prefix and the first step(s) [B, K, n] into `cache`; logits [B, K, V] of
        the last step."""
        x = self.embed_steps(first)
        prefix = self.embed_prefix(cond)
        valid = None
        if prefix is not None:
            px, pvalid = prefix
            x = torch.cat([px.to(x.dtype), x], dim=1)
            valid = torch.cat([pvalid, pvalid.new_ones(first.shape[0], first.shape[2])], dim=1)
        hidden = self.transformer(x, valid=valid, cache=cache)
        return self.heads(hidden[:, -1:])[:, :, 0]

    def decode(self, step: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step of ids [B, K, 1] after the cached ones -> logits [B, K, V]."""
        hidden = self.transformer(self.embed_steps(step), cache=cache)
        return self.heads(hidden)[:, :, 0]


# ----------------------------------------------------------------------------- export


def lm_export_config(
    cfg: TokenLMConfig, codec: dict | None = None, **meta: float | int
) -> dict:
    """config.json body (without kind/version) of an LM export.

    codec: how to find the codec that decodes the tokens: {"type": "soundry" |
      "transformers", "path": export directory (relative paths are inside the LM export),
      "name", "levels"}; meta: e.g. frame_rate and sample_rate of the tokens.
    """
    from soundry.config import to_dict

    return {"model": to_dict(cfg), "codec": dict(codec or {}), **meta}


def export_lm(
    model: TokenLM,
    out_dir: str | Path,
    codec: dict | None = None,
    embed_codec: bool = False,
    **meta: float | int,
) -> Path:
    """Write an LM export; with `embed_codec`, a soundry codec is copied into
    `out_dir/codec` and recorded by that relative path, so the export stands alone."""
    from soundry.models.export import embed_recorded_codec, save_export

    out_dir = Path(out_dir)
    config = lm_export_config(model.cfg, dict(codec or {}), **meta)
    if embed_codec:
        config = embed_recorded_codec(config, out_dir)
    save_export(out_dir, "lm", config, model.state_dict())
    return out_dir


def load_lm(config: dict, state: dict[str, torch.Tensor]) -> TokenLM:
    """Loader of kind 'lm' exports: the TokenLM of `config["model"]` in eval mode; the
    codec record is kept as `model.codec_record`."""
    from soundry.config import validate
    from soundry.errors import SoundryError

    if "model" not in config:
        raise SoundryError("lm export config.json has no 'model' section")
    cfg = validate(TokenLMConfig, config["model"], source="export config.json: model")
    model = TokenLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SoundryError(
            "the export's weights do not match its config: "
            + (f"missing {', '.join(missing[:4])} " if missing else "")
            + (f"unexpected {', '.join(unexpected[:4])}" if unexpected else "")
        )
    model.codec_record = dict(config.get("codec", {}))
    model.export_meta = {k: v for k, v in config.items() if k not in ("model", "codec")}
    return model.eval()


def _register_export_kind() -> None:
    from soundry.models.export import EXPORT_KINDS

    if "lm" not in EXPORT_KINDS:
        EXPORT_KINDS.register("lm")(load_lm)


_register_export_kind()
