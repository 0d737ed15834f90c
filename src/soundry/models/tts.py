"""Codec-token text-to-speech over every codebook level at once (`task: tts`).

One transformer reads, left to right (one position each)::

    [text tokens ...] [prompt frames ...] [SEP] [target frames or pattern steps ...]

- Text: UTF-8 bytes of the text (or of its phonemes, `text.frontend: phonemes`), through
  `ByteTokenizer`; left-padded in a batch.
- Prompt: codes [B, K, P] of another clip of the target voice, embedded one frame per
  position by the `AudioEncoder`; left-padded. The null condition of classifier-free
  guidance is the empty text and no prompt.
- SEP: one learned vector. The duration head reads the transformer's output here (and,
  with `duration.kind: tokens`, at every text token): the frame count of the target, from
  text and prompt only (in `nar` mode the prefix never attends to the target, so the count
  cannot be read off the sequence length).
- Target, `mode: nar`: the target's frames with masked cells replaced by MASK,
  bidirectional attention; `mode: ar`: the target's pattern steps (parallel: one frame of
  every level per step; or delay), causal attention, EOS ends the utterance.
- Each segment adds its own learned type vector and a position within the segment: its
  fraction (i + 1/2) / n of the segment's n valid positions, as sinusoids at geometric
  frequencies through a linear map. Text and target fractions make the monotonic, roughly
  proportional alignment of speech to text easy to express. Rotary positions run over the
  valid positions of the whole sequence. A target's n is its true length in training and
  the planned length (duration head x scale) in generation.

AudioEncoder: per-level embeddings plus a level-position vector, a small residual MLP per
level vector, then learned softmax weights over levels sum them into one vector per frame.
AudioDecoder: a pre-norm residual MLP, then one head per level, or one shared head fed the
hidden state plus a learned per-level query.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from soundry.config import Strict
from soundry.errors import ConfigError, SoundryError
from soundry.models.lm import ByteTokenizer, Conditioning
from soundry.models.patterns import (
    ParallelPatternConfig,
    Pattern,
    PatternConfig,
    SpecialTokens,
    build_pattern,
)
from soundry.nn.transformer import KVCache, RMSNorm, Transformer, TransformerConfig

log = logging.getLogger(__name__)

SEGMENT_TEXT, SEGMENT_PROMPT, SEGMENT_SEP, SEGMENT_TARGET = 0, 1, 2, 3


# ----------------------------------------------------------------------------- configs


class TTSTextConfig(Strict):
    """Text front end: `bytes` (UTF-8 of the text) or `phonemes` (espeak-ng phonemes through
    the `phonemizer` package, in `language`), at most `max_bytes` bytes."""

    frontend: Literal["bytes", "phonemes"] = "bytes"
    language: str = "en-us"
    max_bytes: int = Field(256, ge=1)


class DurationConfig(Strict):
    """The duration head: `regression` on log-frames (L1) read at SEP; `tokens`, the same
    L1 on log-frames of a sum: every text token's own frame count (from its output state)
    times a rate read at SEP (which sees text and prompt: the voice's pace); or `digits`
    (the frame count as `digits` decimal digits, one 10-way classification each, at SEP).
    Trained with `weight` from step `start_step` on, in parallel with the token loss."""

    kind: Literal["regression", "tokens", "digits"] = "regression"
    digits: int = Field(4, ge=1, le=6)
    weight: float = Field(1.0, ge=0)
    start_step: int = Field(0, ge=0)


class NARConfig(Strict):
    """Masked (`mode: nar`) training and demasking.

    mask_unit: in training, mask whole frames (all levels) or each level's cells
      independently. Inference: `steps` demasking steps on the cosine schedule, keeping the
      most confident units (`confidence: frame` sums the log-probabilities over levels;
      `cell` ranks cells), with `confidence_noise` x temperature Gumbel noise on the
      confidences.
    """

    mask_unit: Literal["frame", "cell"] = "frame"
    steps: int = Field(25, ge=1)
    confidence: Literal["frame", "cell"] = "frame"
    confidence_noise: float = Field(1.0, ge=0)


class SamplingConfig(Strict):
    """Default generation settings of both modes: `temperature` (NAR: annealed linearly to
    0 over the demasking steps; AR: constant, with `top_k`), guidance scale `cfg_scale`
    against the null text and prompt (1: off) and guidance rescale `cfg_rescale` (NAR;
    0: plain guidance)."""

    temperature: float = Field(1.0, ge=0)
    top_k: int | None = Field(50, ge=1)
    cfg_scale: float = Field(2.0, ge=0)
    cfg_rescale: float = Field(0.7, ge=0, le=1)


class TTSConfig(Strict):
    """A TTS model over `levels` codebooks of `card` codes.

    loss_weights: `uniform`, `decreasing` (level k weighs K - k) or one weight per level.
    uncond_frac: fraction of training items whose text and prompt are both dropped (the
      null condition classifier-free guidance compares against).
    max_duration_factor: an AR generation that emits no EOS stops at this multiple of the
      predicted duration, with a warning.
    ar_input_mask: AR training only: each teacher-forced input step of an item becomes MASK
      (every level) with this probability, drawn from the item's seed. At 50 frames/s the
      next frame can mostly be read off the previous one; with part of the history hidden
      the model must read the text (and learns to continue from imperfect history).
    ar_input_mask_span: the hidden steps come in runs of this many (the history cut into
      spans at a random offset, each span hidden with probability `ar_input_mask`): frame
      t-2 tells nearly as much as t-1, so single hidden steps leave the frame before them.
    code_digits: the codes are mixed-radix numbers with these digit sizes (an FSQ codec's
      levels, e.g. [16, 16] for 256 codes): the heads predict digits (see AudioDecoder).
    text_stretch: each target position also reads the text token at its own fraction of
      the text (the text stretched uniformly over the target, as E2/F5-TTS fill the text
      to the audio's length): a prior of monotonic, even-paced alignment that attention
      then corrects, which small models on little data need to learn to read at all.
    """

    mode: Literal["ar", "nar"] = "nar"
    levels: int = Field(4, ge=1)
    card: int = Field(1024, ge=2)
    transformer: TransformerConfig = Field(
        default_factory=lambda: TransformerConfig(causal=False))
    pattern: PatternConfig = Field(default_factory=ParallelPatternConfig)
    shared_head: bool = False
    code_digits: list[int] | None = None
    text_stretch: bool = False
    mlp_hidden: int | None = Field(None, ge=1)
    loss_weights: Literal["uniform", "decreasing"] | list[float] = "uniform"
    text: TTSTextConfig = Field(default_factory=TTSTextConfig)
    duration: DurationConfig = Field(default_factory=DurationConfig)
    nar: NARConfig = Field(default_factory=NARConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    uncond_frac: float = Field(0.1, ge=0.0, le=1.0)
    max_duration_factor: float = Field(2.0, gt=1.0)
    ar_input_mask: float = Field(0.0, ge=0.0, lt=1.0)
    ar_input_mask_span: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> TTSConfig:
        if self.mode == "ar" and not self.transformer.causal:
            raise ValueError("model.mode: ar predicts the next step and needs "
                             "model.transformer.causal: true")
        if self.mode == "nar" and self.transformer.causal:
            raise ValueError("model.mode: nar demasks with bidirectional attention and needs "
                             "model.transformer.causal: false")
        if self.code_digits is not None and (
                min(self.code_digits, default=0) < 2 or math.prod(self.code_digits) != self.card):
            raise ValueError(f"model.code_digits {self.code_digits} must be sizes >= 2 whose "
                             f"product is model.card ({self.card})")
        if isinstance(self.loss_weights, list):
            if len(self.loss_weights) != self.levels:
                raise ValueError(f"model.loss_weights has {len(self.loss_weights)} entries "
                                 f"for {self.levels} levels")
            if min(self.loss_weights) < 0 or sum(self.loss_weights) <= 0:
                raise ValueError("model.loss_weights must be >= 0 with a positive sum")
        return self


def level_weights(spec: str | Sequence[float], levels: int) -> torch.Tensor:
    """Per-level loss weights [K], summing to 1: uniform, decreasing (K - k) or a list."""
    if spec == "uniform":
        w = torch.ones(levels)
    elif spec == "decreasing":
        w = torch.arange(levels, 0, -1, dtype=torch.float32)
    else:
        w = torch.tensor(list(spec), dtype=torch.float32)
    return w / w.sum()


# ----------------------------------------------------------------------------- text


class TextFrontend:
    """Text -> byte-tokenizer ids, through phonemes when configured (cached per text)."""

    def __init__(self, cfg: TTSTextConfig) -> None:
        self.cfg = cfg
        self.tokenizer = ByteTokenizer(cfg.max_bytes)
        self._backend = None
        self._cache: dict[str, str] = {}

    def __getstate__(self) -> dict:
        # the espeak backend holds a loaded C library: copies (EMA, pickling) open their own
        state = dict(self.__dict__)
        state["_backend"] = None
        return state

    def _phonemes(self, text: str) -> str:
        if text in self._cache:
            return self._cache[text]
        if self._backend is None:
            try:
                from phonemizer.backend import EspeakBackend
            except ImportError:
                raise ConfigError("model.text.frontend: phonemes needs the `phonemizer` "
                                  "package (pip install phonemizer) and espeak-ng "
                                  "(apt-get install espeak-ng)") from None
            try:
                # its word-count check warns on every punctuated line: log errors only
                quiet = logging.getLogger("soundry.phonemizer")
                quiet.setLevel(logging.ERROR)
                self._backend = EspeakBackend(self.cfg.language, preserve_punctuation=True,
                                              with_stress=True, logger=quiet)
            except RuntimeError as exc:
                raise ConfigError(f"model.text.frontend: phonemes: espeak-ng backend for "
                                  f"'{self.cfg.language}' failed: {exc}") from None
        out = self._backend.phonemize([text], strip=True)[0]
        if len(self._cache) < 100_000:
            self._cache[text] = out
        return out

    def string(self, text: str) -> str:
        """What the model reads for `text` (the text itself, or its phonemes)."""
        text = (text or "").strip()
        if not text or self.cfg.frontend == "bytes":
            return text
        return self._phonemes(text)

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, L] left-padded, valid [B, L])."""
        return self.tokenizer.batch([self.string(t) for t in texts])


# ----------------------------------------------------------------------------- blocks


class AudioEncoder(nn.Module):
    """Token ids [B, K, T] (codes, EOS, PAD, BOS, MASK) -> one vector per frame [B, T, dim].

    Each level has its own embedding rows and a level-position vector; a residual MLP shared
    by the levels refines each level vector; learned softmax weights sum the levels."""

    def __init__(self, levels: int, n_input: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(levels * n_input, dim)
        self.level_position = nn.Parameter(torch.zeros(levels, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.level_logits = nn.Parameter(torch.zeros(levels))
        self.register_buffer("offsets", torch.arange(levels).view(1, levels, 1) * n_input,
                             persistent=False)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        nn.init.normal_(self.level_position, 0.0, 0.02)

    def level_weights(self) -> torch.Tensor:
        """[K] softmax weights of the levels."""
        return torch.softmax(self.level_logits, dim=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.embed(ids + self.offsets) + self.level_position[None, :, None, :]
        v = v + self.mlp(v)  # [B, K, T, D]
        return torch.einsum("bktd,k->btd", v, self.level_weights().to(v.dtype))


def digit_matrix(digits: Sequence[int]) -> torch.Tensor:
    """[sum(digits), prod(digits)] float one-hot: row (j, v) is 1 for the codes whose digit j
    is v, codes being mixed-radix numbers with the first digit least significant (the way
    FSQ numbers its grid)."""
    codes = torch.arange(math.prod(digits))
    rows, base = [], 1
    for n in digits:
        rows.append(F.one_hot((codes // base) % n, n).T)
        base *= n
    return torch.cat(rows).float()


class AudioDecoder(nn.Module):
    """Hidden states [B, S, dim] -> logits [B, K, S, V]: a pre-norm residual MLP, then one
    head per level, or one shared head reading hidden + a learned per-level query.

    digits: for codes that are mixed-radix numbers (FSQ grids), the heads predict each
    digit and a code's logit is the sum of its digits' logits (a factorised distribution:
    classes sharing a digit share evidence). Classes past the codes (EOS) keep their own
    logits."""

    def __init__(self, levels: int, n_output: int, dim: int, hidden: int, shared: bool,
                 card: int | None = None, digits: Sequence[int] | None = None) -> None:
        super().__init__()
        self.levels, self.n_output, self.shared = levels, n_output, shared
        self.norm = RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.card = card if card is not None else n_output
        width = n_output
        if digits:
            self.register_buffer("digits", digit_matrix(digits), persistent=False)
            width = sum(digits) + n_output - self.card
        else:
            self.digits = None
        self.width = width
        if shared:
            self.level_query = nn.Parameter(torch.zeros(levels, dim))
            nn.init.normal_(self.level_query, 0.0, 0.02)
            self.head = nn.Linear(dim, width)
        else:
            self.head = nn.Linear(dim, levels * width)
        nn.init.normal_(self.head.weight, 0.0, 0.02)
        nn.init.zeros_(self.head.bias)

    def _expand(self, raw: torch.Tensor) -> torch.Tensor:
        if self.digits is None:
            return raw
        n_digit = self.digits.shape[0]
        codes = raw[..., :n_digit] @ self.digits.to(raw.dtype)
        return torch.cat([codes, raw[..., n_digit:]], dim=-1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = hidden.shape
        if self.shared:
            x = hidden[:, None] + self.level_query[None, :, None, :]  # [B, K, S, D]
            return self._expand(self.head(x + self.mlp(self.norm(x))))
        x = hidden + self.mlp(self.norm(hidden))
        raw = self.head(x).view(batch, steps, self.levels, self.width)
        return self._expand(raw).transpose(1, 2)


class DurationHead(nn.Module):
    """Duration from the prefix's output states: SEP hidden [B, dim] (and, for `tokens`,
    the text's hidden [B, L, dim] with its valid mask [B, L]) -> log-frames [B]
    (`regression`, `tokens`) or digit logits [B, D, 10] (`digits`).

    `tokens` sums a non-negative frame count per valid text token (softplus of a small MLP
    read-out) and adds a log-rate from SEP: the total then grows with the text by
    construction, where a single read-out at SEP has to count the text's tokens through
    attention (its rotary distance to the text mixes text and prompt lengths).
    """

    def __init__(self, cfg: DurationConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        out = cfg.digits * 10 if cfg.kind == "digits" else 1
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))
        self.per_token = None
        if cfg.kind == "tokens":
            self.per_token = nn.Sequential(RMSNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                           nn.Linear(dim, 1))

    def forward(self, sep: torch.Tensor, text: torch.Tensor | None = None,
                text_valid: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(sep)
        if self.cfg.kind == "regression":
            return out[:, 0]
        if self.per_token is not None:
            if text is None or text_valid is None:
                raise ValueError("duration kind 'tokens' needs the text's hidden states")
            each = F.softplus(self.per_token(text)[..., 0].float())  # frames per token [B, L]
            # masked_fill, not a product: a padded position's output may be anything
            total = each.masked_fill(~text_valid, 0.0).sum(-1)
            return torch.log(total + 1e-3) + out[:, 0].float()
        return out.view(-1, self.cfg.digits, 10)

    def digits_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Frame counts [B] -> their decimal digits [B, D], most significant first
        (counts above 10^D - 1 are clamped)."""
        d = self.cfg.digits
        frames = frames.long().clamp(0, 10**d - 1)
        powers = 10 ** torch.arange(d - 1, -1, -1, device=frames.device)
        return (frames[:, None] // powers) % 10

    def loss(self, out: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Mean loss against true frame counts [B]."""
        if self.cfg.kind != "digits":
            return (out - torch.log(frames.float().clamp(min=1.0))).abs().mean()
        target = self.digits_of(frames)
        return F.cross_entropy(out.reshape(-1, 10).float(), target.reshape(-1))

    def frames(self, out: torch.Tensor) -> torch.Tensor:
        """Predicted frame counts [B] (float; at least 1)."""
        if self.cfg.kind != "digits":
            return out.float().exp().clamp(min=1.0)
        digits = out.argmax(-1)
        powers = 10 ** torch.arange(self.cfg.digits - 1, -1, -1, device=out.device)
        return (digits * powers).sum(-1).float().clamp(min=1.0)


class SegmentPosition(nn.Module):
    """Fractions [B, L] in [0, 1] -> vectors [B, L, dim]: sin/cos at `n_freq` geometric
    frequencies from 1/2 to 64 cycles per segment, through a linear map."""

    def __init__(self, dim: int, n_freq: int = 16) -> None:
        super().__init__()
        freqs = math.pi * torch.logspace(math.log10(0.5), math.log10(64.0), n_freq)
        self.register_buffer("freqs", freqs, persistent=False)
        self.proj = nn.Linear(2 * n_freq, dim, bias=False)
        nn.init.normal_(self.proj.weight, 0.0, 0.02)

    def forward(self, frac: torch.Tensor) -> torch.Tensor:
        angles = frac.float()[..., None] * self.freqs
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


def fractions(valid: torch.Tensor) -> torch.Tensor:
    """valid [B, L] bool -> [B, L]: (i + 1/2) / n of each valid position (i its rank among
    the row's n valid ones); 0 at padding."""
    rank = valid.long().cumsum(1) - 1
    count = valid.long().sum(1, keepdim=True).clamp(min=1)
    return torch.where(valid, (rank.float() + 0.5) / count.float(), torch.zeros_like(rank,
                                                                              dtype=torch.float))


def stretch_text(text: torch.Tensor, valid: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
    """Text vectors [B, L, D] (left-padded, `valid` [B, L]) read at fractions [B, S] of each
    row's valid tokens -> [B, S, D]: position s gets token floor(frac x n) of the n (a
    uniform stretch of the text over the target)."""
    n = valid.long().sum(1, keepdim=True).clamp(min=1)
    first = valid.long().argmax(1, keepdim=True)  # left padding: the first valid position
    rank = (frac.clamp(0, 1 - 1e-6) * n).floor().long().clamp(max=n - 1)
    index = (first + rank).clamp(max=text.shape[1] - 1)
    return text.gather(1, index[..., None].expand(-1, -1, text.shape[2]))


def step_fractions(start: int, length: int, totals: torch.Tensor) -> torch.Tensor:
    """Fractions [B, length] of target positions start..start+length-1 out of `totals` [B]."""
    idx = torch.arange(start, start + length, device=totals.device, dtype=torch.float)
    return ((idx[None, :] + 0.5) / totals.float().clamp(min=1)[:, None]).clamp(max=1.5)


@dataclass
class TTSLoss:
    """loss: weighted token loss (+ duration); per-level tensors [K] carry no gradient."""

    loss: torch.Tensor
    token_loss: torch.Tensor
    level_loss: torch.Tensor
    level_accuracy: torch.Tensor
    level_count: torch.Tensor
    duration_loss: torch.Tensor
    duration_error: torch.Tensor  # mean |predicted - true| / true frames
    mask_ratio: torch.Tensor | None = None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        out = {f"{prefix}loss": float(self.token_loss),
               f"{prefix}duration_loss": float(self.duration_loss),
               f"{prefix}duration_error": float(self.duration_error)}
        for k in range(len(self.level_loss)):
            out[f"{prefix}loss/level_{k}"] = float(self.level_loss[k])
            out[f"{prefix}accuracy/level_{k}"] = float(self.level_accuracy[k])
        return out


# ----------------------------------------------------------------------------- model


class TTSModel(nn.Module):
    """Text + voice prompt -> codec codes of every level (see the module docstring).

    For `mode: ar` it offers the interface `soundry.generate.sampling.generate` drives
    (`pattern`, `tokens`, `forward`, `prefill`, `decode`, `new_cache`,
    `null_conditioning`), so AR decoding shares the token LM's KV cache and batched CFG.
    """

    def __init__(self, cfg: TTSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokens = SpecialTokens(cfg.card)
        self.pattern: Pattern = build_pattern(cfg.pattern, cfg.levels, cfg.card)
        self.frontend = TextFrontend(cfg.text)
        dim = cfg.transformer.dim
        hidden = cfg.mlp_hidden or 2 * dim
        self.audio_in = AudioEncoder(cfg.levels, self.tokens.n_input, dim, hidden)
        self.audio_out = AudioDecoder(cfg.levels, self.tokens.n_output, dim, hidden,
                                      cfg.shared_head, cfg.card, cfg.code_digits)
        self.text_embed = nn.Embedding(ByteTokenizer.VOCAB, dim)
        self.segment = nn.Embedding(4, dim)
        self.position = SegmentPosition(dim)
        self.text_stretch = nn.Linear(dim, dim, bias=False) if cfg.text_stretch else None
        if self.text_stretch is not None:
            nn.init.normal_(self.text_stretch.weight, 0.0, 0.02)
        self.transformer = Transformer(cfg.transformer)
        self.duration = DurationHead(cfg.duration, dim)
        self.register_buffer("loss_weights", level_weights(cfg.loss_weights, cfg.levels),
                             persistent=False)
        nn.init.normal_(self.text_embed.weight, 0.0, 0.02)
        nn.init.normal_(self.segment.weight, 0.0, 0.02)
        self._plan: torch.Tensor | None = None

    # -- conditioning ----------------------------------------------------------------------

    def make_conditioning(
        self,
        texts: Sequence[str | None],
        prompt: torch.Tensor | None = None,
        prompt_valid: torch.Tensor | None = None,
        seeds: Sequence[int] | None = None,
        train: bool = False,
    ) -> Conditioning:
        """Texts [B] and prompt codes [B, K, P] (left-padded; `prompt_valid` [B, P]).

        With `train`, an item's text and prompt are both dropped with probability
        `uncond_frac`, drawn from `random.Random(seed)`.
        """
        strings = [t or "" for t in texts]
        keep = torch.ones(len(strings), dtype=torch.bool)
        if train and self.cfg.uncond_frac > 0:
            if seeds is None or len(seeds) < len(strings):
                raise ValueError("training conditioning needs one seed per item")
            for i, seed in enumerate(seeds):
                if random.Random(int(seed) + 7).random() < self.cfg.uncond_frac:
                    keep[i] = False
                    strings[i] = ""
        ids, valid = self.frontend.batch(strings)
        if prompt is not None:
            if prompt_valid is None:
                prompt_valid = torch.ones(prompt.shape[0], prompt.shape[2], dtype=torch.bool)
            prompt_valid = prompt_valid & keep.to(prompt_valid.device)[:, None]
        return Conditioning(ids, valid, prompt, prompt_valid)

    def null_conditioning(self, batch: int, like: Conditioning | None = None) -> Conditioning:
        """The unconditional input of guidance: the empty text ([BOS, EOS], as a dropped
        training text reads) and no prompt (`like`'s prompt positions all padding, so the
        rows batch together with `like`'s)."""
        ids, valid = self.frontend.batch([""] * batch)
        if like is None:
            return Conditioning(ids, valid)
        device = like.text.device
        ids, valid = ids.to(device), valid.to(device)
        if like.prompt is None:
            return Conditioning(ids, valid)
        prompt = torch.zeros_like(like.prompt)
        return Conditioning(ids, valid, prompt, torch.zeros(prompt.shape[0], prompt.shape[2],
                                                            dtype=torch.bool, device=device))

    # -- sequence --------------------------------------------------------------------------

    def embed_prefix(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """[text | prompt | SEP] -> (vectors [B, P, dim], valid [B, P])."""
        seg = self.segment.weight
        valid = cond.text_valid
        x = self.text_embed(cond.text) + seg[SEGMENT_TEXT] + self.position(fractions(valid))
        if cond.prompt is not None:
            pvalid = cond.prompt_valid
            if pvalid is None:
                pvalid = torch.ones(cond.prompt.shape[0], cond.prompt.shape[2],
                                    dtype=torch.bool, device=cond.prompt.device)
            px = (self.audio_in(cond.prompt) + seg[SEGMENT_PROMPT]
                  + self.position(fractions(pvalid)))
            x = torch.cat([x, px.to(x.dtype)], dim=1)
            valid = torch.cat([valid, pvalid.to(valid.device)], dim=1)
        sep = seg[SEGMENT_SEP].expand(x.shape[0], 1, -1)
        x = torch.cat([x, sep.to(x.dtype)], dim=1)
        valid = torch.cat([valid, valid.new_ones(x.shape[0], 1)], dim=1)
        return x, valid

    def embed_target(self, ids: torch.Tensor, totals: torch.Tensor, start: int = 0,
                     cond: Conditioning | None = None) -> torch.Tensor:
        """Target ids [B, K, S] at positions start.. of `totals` [B] -> [B, S, dim]
        (with `text_stretch`, plus the projected embedding of the text token at the same
        fraction of the text as each position's fraction of the target)."""
        frac = step_fractions(start, ids.shape[2], totals.to(ids.device))
        x = self.audio_in(ids) + self.segment.weight[SEGMENT_TARGET] + self.position(frac)
        if self.text_stretch is not None and cond is not None:
            x = x + self.text_stretch(stretch_text(self.text_embed(cond.text), cond.text_valid,
                                                   frac))
        return x

    def _run(self, cond: Conditioning, ids: torch.Tensor, totals: torch.Tensor,
             target_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix + target ids [B, K, S] (of `totals` [B] positions each) -> (target hidden
        [B, S, dim], prefix hidden [B, P, dim]: text, prompt, SEP; see `duration_out`)."""
        px, pvalid = self.embed_prefix(cond)
        tx = self.embed_target(ids, totals, cond=cond)
        x = torch.cat([px, tx.to(px.dtype)], dim=1)
        if target_valid is None:
            target_valid = pvalid.new_ones(ids.shape[0], ids.shape[2])
        valid = torch.cat([pvalid, target_valid.to(pvalid.device)], dim=1)
        attend = None
        if not self.cfg.transformer.causal:
            # the prefix never sees the target: the duration read at SEP depends on text and
            # prompt only (not on the target's length), and prefix states do not change
            # while demasking
            n_prefix, total = px.shape[1], x.shape[1]
            q = torch.arange(total, device=x.device)[:, None]
            k = torch.arange(total, device=x.device)[None, :]
            attend = ~((q < n_prefix) & (k >= n_prefix))[None]
        hidden = self.transformer(x, valid=valid, attend=attend)
        n_prefix = px.shape[1]
        return hidden[:, n_prefix:], hidden[:, :n_prefix]

    # -- AR interface (soundry.generate.sampling.generate) ---------------------------------

    def plan(self, frames: torch.Tensor | None) -> None:
        """Set the planned target lengths [B] (frames) that AR generation's positions are
        fractions of (None: the duration head's prediction). Rows of a guided batch (2B)
        reuse the B plans."""
        self._plan = None if frames is None else frames.detach().long().cpu()

    def _step_totals(self, cond: Conditioning) -> torch.Tensor:
        """Pattern steps of each row's planned length [rows]."""
        rows = cond.batch
        frames = self._plan
        if frames is None:
            frames = self.predict_frames(cond).round().long().cpu()
        if len(frames) != rows:
            if rows % len(frames):
                raise ValueError(f"{len(frames)} planned lengths for {rows} rows")
            frames = frames.repeat(rows // len(frames))
        steps = [self.pattern.n_steps(int(n)) for n in frames.tolist()]
        return torch.tensor(steps, device=cond.text.device)

    def forward(self, seq: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """AR: input steps [B, K, S] -> logits [B, K, S, V] predicting each next step."""
        hidden, _ = self._run(cond, seq, self._step_totals(cond))
        return self.audio_out(hidden)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.transformer.new_cache(batch, max_len)

    def prefill(self, cond: Conditioning, first: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run the prefix and the first step(s) [B, K, n] into `cache`; logits [B, K, V]."""
        px, pvalid = self.embed_prefix(cond)
        totals = self._step_totals(cond)
        x = torch.cat([px, self.embed_target(first, totals, cond=cond).to(px.dtype)], dim=1)
        valid = torch.cat([pvalid, pvalid.new_ones(first.shape[0], first.shape[2])], dim=1)
        hidden = self.transformer(x, valid=valid, cache=cache)
        cache.tts_start = px.shape[1]  # type: ignore[attr-defined]
        cache.tts_totals = totals  # type: ignore[attr-defined]
        cache.tts_cond = cond  # type: ignore[attr-defined]
        return self.audio_out(hidden[:, -1:])[:, :, 0]

    def decode(self, step: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One step of ids [B, K, 1] after the cached ones -> logits [B, K, V]."""
        start = cache.length - cache.tts_start  # type: ignore[attr-defined]
        x = self.embed_target(step, cache.tts_totals, start,  # type: ignore[attr-defined]
                              cond=cache.tts_cond)  # type: ignore[attr-defined]
        hidden = self.transformer(x, cache=cache)
        return self.audio_out(hidden)[:, :, 0]

    @property
    def max_len(self) -> int:
        return self.cfg.transformer.max_len

    # -- duration --------------------------------------------------------------------------

    @torch.no_grad()
    def predict_frames(self, cond: Conditioning) -> torch.Tensor:
        """Predicted target frame counts [B] (float) from text and prompt alone."""
        px, pvalid = self.embed_prefix(cond)
        hidden = self.transformer(px, valid=pvalid)
        return self.duration.frames(self.duration_out(hidden, cond))

    def duration_out(self, prefix: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The duration head's output from the prefix's hidden states [B, P, dim] (text
        first, SEP last) of `cond`."""
        n_text = cond.text.shape[1]
        return self.duration(prefix[:, -1], prefix[:, :n_text], cond.text_valid)

    # -- losses ----------------------------------------------------------------------------

    def token_loss(self, logits: torch.Tensor, target: torch.Tensor, counted: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy of logits [B, K, S, V] against ids [B, K, S] on `counted` cells.

        Returns (loss: per-level means combined by the level weights over levels with any
        counted cell, level_loss [K], level_accuracy [K], level_count [K])."""
        logp = F.log_softmax(logits.float(), dim=-1)
        safe = torch.where(counted, target, torch.zeros_like(target)).clamp(max=logp.shape[-1] - 1)
        nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        mask = counted.float()
        count = mask.sum(dim=(0, 2))
        level_loss = (nll * mask).sum(dim=(0, 2)) / count.clamp(min=1.0)
        weights = self.loss_weights.to(level_loss.device) * (count > 0).float()
        loss = (weights * level_loss).sum() / weights.sum().clamp(min=1e-8)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == target).float() * mask).sum(dim=(0, 2))
            acc = acc / count.clamp(min=1.0)
        return loss, level_loss.detach(), acc, count

    def _duration_terms(self, prefix: torch.Tensor, cond: Conditioning, frames: torch.Tensor,
                        use: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss to add: the duration loss, or 0 before it is trained; its value; mean
        relative error of the predicted frame counts)."""
        out = self.duration_out(prefix, cond)
        loss = self.duration.loss(out, frames)
        with torch.no_grad():
            pred = self.duration.frames(out.detach())
            err = ((pred - frames.float()).abs() / frames.float().clamp(min=1.0)).mean()
        return (loss if use else loss * 0.0), loss.detach(), err

    def mask_history(self, inputs: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """AR inputs [B, K, S] with each step after the first (BOS) replaced by MASK on
        every level with probability `ar_input_mask` (in runs of `ar_input_mask_span`
        steps), drawn from each item's seed; special tokens (PAD, EOS) stay as they are."""
        rate = self.cfg.ar_input_mask
        if rate <= 0:
            return inputs
        if len(seeds) < inputs.shape[0]:
            raise ValueError("masking the AR history needs one seed per item")
        steps = inputs.shape[2]
        hidden = torch.zeros(inputs.shape[0], steps, dtype=torch.bool)
        span = self.cfg.ar_input_mask_span
        for b in range(inputs.shape[0]):
            rng = np.random.default_rng([int(seeds[b]), 13])
            if span == 1:
                hidden[b, 1:] = torch.from_numpy(rng.random(steps - 1) < rate)
                continue
            offset = int(rng.integers(span))
            runs = rng.random((steps - 1 + offset) // span + 1) < rate
            hidden[b, 1:] = torch.from_numpy(np.repeat(runs, span)[offset:offset + steps - 1])
        hide = hidden.to(inputs.device)[:, None, :] & (inputs < self.cfg.card)
        return torch.where(hide, torch.full_like(inputs, self.tokens.mask), inputs)

    def ar_loss(self, codes: torch.Tensor, lengths: torch.Tensor, cond: Conditioning,
                level_mask: torch.Tensor | None = None, duration: bool = True,
                seeds: Sequence[int] | None = None) -> TTSLoss:
        """Teacher-forced AR loss of whole utterances codes [B, K, T] (`lengths` [B]).

        level_mask: [B, K] bool, the levels each item's loss counts (None: all).
        seeds: one per item; with them (training) part of the input history is masked
        (`ar_input_mask`); without, inputs are the true codes (validation)."""
        seq = self.pattern.build(codes, lengths=lengths, ends=True)
        totals = torch.tensor([self.pattern.n_steps(int(n)) for n in lengths.tolist()],
                              device=codes.device)
        inputs = seq[:, :, :-1]
        if seeds is not None:
            inputs = self.mask_history(inputs, seeds)
        hidden, prefix = self._run(cond, inputs, totals)
        logits = self.audio_out(hidden)
        target = seq[:, :, 1:]
        counted = target < self.tokens.n_output  # codes and EOS
        if level_mask is not None:
            counted = counted & level_mask[:, :, None].to(counted.device)
        loss, level_loss, acc, count = self.token_loss(logits, target, counted)
        dur_loss, dur_value, dur_err = self._duration_terms(prefix, cond, lengths, duration)
        total = loss + self.cfg.duration.weight * dur_loss
        return TTSLoss(total, loss.detach(), level_loss, acc, count, dur_value, dur_err)

    def mask_cells(self, lengths: torch.Tensor, frames: int, seeds: Sequence[int],
                   unit: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training masks: per item u ~ U(0, 1) from its seed, ratio r = cos(u pi / 2), and
        ceil(r x n) of its n valid frames masked (at least one) at random: all levels of a
        frame (`unit: frame`), or each level's frames drawn independently (`cell`).

        Returns (masked [B, K, T] bool, ratios [B])."""
        unit = unit or self.cfg.nar.mask_unit
        levels = self.cfg.levels
        masked = torch.zeros(len(seeds), levels, frames, dtype=torch.bool)
        ratios = torch.zeros(len(seeds))
        for b, seed in enumerate(seeds):
            rng = np.random.default_rng([int(seed), 11])
            n = int(lengths[b])
            r = math.cos(float(rng.random()) * math.pi / 2)
            ratios[b] = r
            count = min(n, max(1, math.ceil(r * n)))
            if unit == "frame":
                chosen = rng.permutation(n)[:count]
                masked[b, :, chosen] = True
            else:
                for k in range(levels):
                    masked[b, k, rng.permutation(n)[:count]] = True
        return masked, ratios

    def nar_logits(self, ids: torch.Tensor, target_valid: torch.Tensor, cond: Conditioning
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked target ids [B, K, T] (MASK where unknown, valid [B, T]) -> (logits
        [B, K, T, V], prefix hidden [B, P, dim]: `duration_out` reads it)."""
        totals = target_valid.long().sum(1)
        hidden, prefix = self._run(cond, ids, totals, target_valid)
        return self.audio_out(hidden), prefix

    def nar_loss(self, codes: torch.Tensor, lengths: torch.Tensor, cond: Conditioning,
                 seeds: Sequence[int], level_mask: torch.Tensor | None = None,
                 duration: bool = True) -> TTSLoss:
        """Masked-token loss of codes [B, K, T]: only masked, valid cells count."""
        batch, _, frames = codes.shape
        device = codes.device
        masked, ratios = self.mask_cells(lengths, frames, seeds)
        masked = masked.to(device)
        valid = torch.arange(frames, device=device)[None, :] < lengths.to(device)[:, None]
        ids = torch.where(masked, torch.full_like(codes, self.tokens.mask), codes)
        ids = torch.where(valid[:, None, :], ids, torch.full_like(codes, self.tokens.pad))
        logits, prefix = self.nar_logits(ids, valid, cond)
        counted = masked & valid[:, None, :]
        if level_mask is not None:
            counted = counted & level_mask[:, :, None].to(device)
        loss, level_loss, acc, count = self.token_loss(logits[..., : self.cfg.card], codes,
                                                       counted)
        dur_loss, dur_value, dur_err = self._duration_terms(prefix, cond, lengths.to(device),
                                                            duration)
        total = loss + self.cfg.duration.weight * dur_loss
        return TTSLoss(total, loss.detach(), level_loss, acc, count, dur_value, dur_err,
                       ratios.mean())


# ----------------------------------------------------------------------------- export


def tts_export_config(cfg: TTSConfig, codec: dict | None = None, **meta: object) -> dict:
    """config.json body (without kind/version) of a TTS export."""
    from soundry.config import to_dict

    return {"model": to_dict(cfg), "codec": dict(codec or {}), **meta}


def export_tts(model: TTSModel, out_dir: str | Path, codec: dict | None = None,
               **meta: object) -> Path:
    """Write a TTS export (safetensors + config.json)."""
    from soundry.models.export import save_export

    out_dir = Path(out_dir)
    save_export(out_dir, "tts", tts_export_config(model.cfg, codec, **meta), model.state_dict())
    return out_dir


def load_tts(config: dict, state: dict[str, torch.Tensor]) -> TTSModel:
    """Loader of kind 'tts' exports: the model in eval mode, with `codec_record` (how to
    open its codec) and `export_meta` (frame and sample rate, voices)."""
    from soundry.config import validate

    if "model" not in config:
        raise SoundryError("tts export config.json has no 'model' section")
    cfg = validate(TTSConfig, config["model"], source="export config.json: model")
    model = TTSModel(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SoundryError(
            "the export's weights do not match its config: "
            + (f"missing {', '.join(missing[:4])} " if missing else "")
            + (f"unexpected {', '.join(unexpected[:4])}" if unexpected else ""))
    model.codec_record = dict(config.get("codec", {}))
    model.export_meta = {k: v for k, v in config.items() if k not in ("model", "codec")}
    return model.eval()


def _register_export_kind() -> None:
    from soundry.models.export import EXPORT_KINDS

    if "tts" not in EXPORT_KINDS:
        EXPORT_KINDS.register("tts")(load_tts)


_register_export_kind()
