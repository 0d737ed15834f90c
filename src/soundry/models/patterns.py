"""Codebook patterns: how codes [B, K, T] are laid out as a model sequence [B, K, S].

A codec gives K levels (codebooks) per frame. A token LM predicts one *step* at a time; each
step holds one token per level, and a pattern decides which (level, frame) each cell of the
sequence holds:

- ``parallel``: all levels of frame t at step t + 1.
- ``delay``: level k of frame t at step t + 1 + delays[k] (MusicGen: delays 0, 1, ..., K-1),
  so a level is predicted knowing the lower levels of the same frame.
- ``flatten``: one level per step, frame by frame (K steps per frame).
- ``valle``: level 0 of every frame first, then levels 1..K-1 frame-parallel (the layout of
  VALL-E's AR + NAR stages as one sequence).

Every sequence starts with one step of BOS (the model's first input). Frame T (one past the
last frame) is the end: it holds EOS on level 0, and in ``parallel`` and ``delay`` on every
level (each at its own offset); the flatten and VALL-E layouts end with level 0's EOS. Cells
before a level's first frame hold BOS; cells after its end, or empty cells, hold PAD.

A layout is a table ``frame[k, s]`` (-1: BOS, -2: PAD, T: EOS, else the frame index), built
with array ops and cached per number of frames; `build` and `revert` are single gathers
through it. Token ids are those of `SpecialTokens`.

For generation, every pattern here is *prefix consistent*: the layouts for T and T' > T agree
on every cell up to the step where level 0 holds frame T. A generator can therefore follow
the layout for its maximum length and switch to the layout for T once level 0 emits EOS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from soundry.config import Strict
from soundry.errors import ConfigError
from soundry.registry import Registry

BOS_CELL = -1
PAD_CELL = -2


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids of one level: audio codes 0..card-1, then EOS, PAD, BOS, MASK.

    Embeddings have `n_input` rows; output heads predict `n_output` classes (audio + EOS),
    so PAD, BOS and MASK are never sampled.
    """

    card: int

    @property
    def eos(self) -> int:
        return self.card

    @property
    def pad(self) -> int:
        return self.card + 1

    @property
    def bos(self) -> int:
        return self.card + 2

    @property
    def mask(self) -> int:
        return self.card + 3

    @property
    def n_input(self) -> int:
        return self.card + 4

    @property
    def n_output(self) -> int:
        return self.card + 1


class Pattern(ABC):
    """A codebook layout for `n_levels` levels of codes in [0, card)."""

    name: str = ""

    def __init__(self, n_levels: int, card: int, cache_size: int = 512) -> None:
        if n_levels < 1:
            raise ConfigError(f"pattern '{self.name}': n_levels must be >= 1, got {n_levels}")
        self.n_levels = n_levels
        self.tokens = SpecialTokens(card)
        self._cache_size = cache_size
        self._layouts: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    # -- what each pattern defines -------------------------------------------------------

    @abstractmethod
    def n_steps(self, n_frames: int) -> int:
        """Sequence length S for `n_frames` frames (including the BOS step and the EOS)."""

    @abstractmethod
    def _frame_table(self, n_frames: int) -> np.ndarray:
        """int64 [K, S]: frame held by each cell (-1 BOS, -2 PAD, n_frames = EOS)."""

    # -- derived -------------------------------------------------------------------------

    def n_frames(self, n_steps: int) -> int:
        """Largest T whose sequence fits in `n_steps` steps."""
        lo, hi = 0, max(n_steps, 1)
        if self.n_steps(0) > n_steps:
            raise ValueError(f"{n_steps} steps are too few for any {self.name} sequence")
        while lo < hi:  # n_steps(T) is increasing in T
            mid = (lo + hi + 1) // 2
            if self.n_steps(mid) <= n_steps:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def layout(self, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached (frame [K, S], step [K, T + 1]) tables for `n_frames` frames.

        ``frame[k, s]`` is the frame in cell (k, s) (-1 BOS, -2 PAD, T = EOS);
        ``step[k, t]`` is the step holding frame t of level k (-1 if no cell holds it).
        """
        hit = self._layouts.get(n_frames)
        if hit is not None:
            self._layouts.move_to_end(n_frames)
            return hit
        frame = self._frame_table(n_frames)
        k_idx, s_idx = np.nonzero(frame >= 0)
        step = np.full((self.n_levels, n_frames + 1), -1, dtype=np.int64)
        step[k_idx, frame[k_idx, s_idx]] = s_idx
        out = (torch.from_numpy(frame), torch.from_numpy(step))
        self._layouts[n_frames] = out
        if len(self._layouts) > self._cache_size:
            self._layouts.popitem(last=False)
        return out

    def eos_step(self, n_frames: int) -> int:
        """Step at which level 0 holds the EOS of a `n_frames`-frame sequence."""
        return int(self.layout(n_frames)[1][0, n_frames])

    def _frames_per_item(self, lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
        """[B, K, S(n_frames)] frame tables, one per item length, PAD-padded on the right."""
        size = self.n_steps(n_frames)
        uniq, inverse = torch.unique(lengths.cpu(), return_inverse=True)
        tables = []
        for length in uniq.tolist():  # one table per distinct length in the batch
            frame = self.layout(length)[0]
            tables.append(torch.nn.functional.pad(frame, (0, size - frame.shape[1]), value=-2))
        return torch.stack(tables)[inverse]

    def build(
        self,
        codes: torch.Tensor,
        lengths: torch.Tensor | None = None,
        ends: torch.Tensor | bool = True,
    ) -> torch.Tensor:
        """Lay out codes [B, K, T] as a sequence [B, K, S(T)] of token ids.

        lengths: [B] valid frames per item (default T); frames past it are ignored.
        ends: [B] bool (or one bool); where False the item's audio goes on past the window,
          so its end cells hold PAD (not trained) instead of EOS.
        """
        batch, levels, n_frames = codes.shape
        self._check_levels(levels)
        tok = self.tokens
        device = codes.device
        specials = torch.tensor([tok.eos, tok.bos, tok.pad], dtype=codes.dtype, device=device)
        ext = torch.cat([codes, specials.view(1, 1, 3).expand(batch, levels, 3)], dim=2)
        col_eos, col_bos, col_pad = n_frames, n_frames + 1, n_frames + 2
        ends_t = torch.as_tensor(ends, dtype=torch.bool, device=device).expand(batch)
        if lengths is None and bool(ends_t.all()):
            frame = self.layout(n_frames)[0].to(device)
            index = torch.where(frame == BOS_CELL, col_bos, torch.where(frame < 0, col_pad, frame))
            return ext.gather(2, index.expand(batch, levels, -1))
        if lengths is None:
            lengths = torch.full((batch,), n_frames, dtype=torch.long)
        lengths = lengths.to(device=device, dtype=torch.long)
        if int(lengths.max()) > n_frames or int(lengths.min()) < 0:
            raise ValueError(f"lengths must lie in [0, {n_frames}], got {lengths.tolist()}")
        frame = self._frames_per_item(lengths, n_frames).to(device)
        length = lengths.view(batch, 1, 1)
        end_col = torch.where(ends_t.view(batch, 1, 1), col_eos, col_pad)
        index = torch.where(
            frame == length,
            end_col,
            torch.where(frame == BOS_CELL, col_bos, torch.where(frame < 0, col_pad, frame)),
        )
        return ext.gather(2, index)

    def revert(
        self, seq: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence [B, K, S] -> (codes [B, K, T], valid [B, K, T] bool).

        Without `lengths`, T is the largest number of frames that fits in S steps; with
        `lengths` [B], each item is read through its own layout and T = max(lengths). A cell
        is valid when it holds an audio code (not EOS/PAD/BOS/MASK); invalid codes are 0.
        """
        batch, levels, size = seq.shape
        self._check_levels(levels)
        if lengths is None:
            n_frames = self.n_frames(size)
            step = self.layout(n_frames)[1][:, :n_frames].to(seq.device)
            index = step.expand(batch, levels, -1)
        else:
            lengths = lengths.to(dtype=torch.long)
            n_frames = int(lengths.max()) if len(lengths) else 0
            if self.n_steps(n_frames) > size:
                raise ValueError(f"{size} steps cannot hold {n_frames} frames")
            rows = []
            for length in lengths.tolist():
                step = self.layout(length)[1][:, :length]
                rows.append(torch.nn.functional.pad(step, (0, n_frames - length), value=-1))
            index = torch.stack(rows).to(seq.device) if rows else seq.new_zeros(0, levels, 0)
        present = index >= 0
        codes = seq.gather(2, index.clamp(min=0))
        valid = present & (codes >= 0) & (codes < self.tokens.card)
        if lengths is not None:
            frames = torch.arange(n_frames, device=seq.device)
            valid &= frames.view(1, 1, -1) < lengths.to(seq.device).view(-1, 1, 1)
        return torch.where(valid, codes, torch.zeros_like(codes)), valid

    def _check_levels(self, levels: int) -> None:
        if levels != self.n_levels:
            raise ValueError(f"{self.name} pattern has {self.n_levels} levels, codes have {levels}")


class ParallelPattern(Pattern):
    """All levels of frame t at step t + 1."""

    name = "parallel"

    def n_steps(self, n_frames: int) -> int:
        return n_frames + 2

    def _frame_table(self, n_frames: int) -> np.ndarray:
        frame = np.arange(-1, n_frames + 1, dtype=np.int64)
        return np.broadcast_to(frame, (self.n_levels, n_frames + 2)).copy()


class DelayPattern(Pattern):
    """Level k of frame t at step t + 1 + delays[k]; level 0 must have the smallest delay."""

    name = "delay"

    def __init__(self, n_levels: int, card: int, delays: list[int] | None = None) -> None:
        super().__init__(n_levels, card)
        delays = list(range(n_levels)) if delays is None else list(delays)
        if len(delays) != n_levels:
            raise ConfigError(f"delay pattern: {len(delays)} delays for {n_levels} levels")
        if min(delays) < 0:
            raise ConfigError(f"delay pattern: delays must be >= 0, got {delays}")
        if delays[0] != min(delays):
            # Level 0 decides the end; no level may run ahead of it.
            raise ConfigError(f"delay pattern: level 0 needs the smallest delay, got {delays}")
        self.delays = delays

    def n_steps(self, n_frames: int) -> int:
        return n_frames + 2 + max(self.delays)

    def _frame_table(self, n_frames: int) -> np.ndarray:
        steps = np.arange(self.n_steps(n_frames), dtype=np.int64)
        frame = steps[None, :] - 1 - np.asarray(self.delays, dtype=np.int64)[:, None]
        frame = np.where(frame < 0, BOS_CELL, frame)
        return np.where(frame > n_frames, PAD_CELL, frame)


class FlattenPattern(Pattern):
    """One level per step: step 1 + t K + k holds level k of frame t; then level 0's EOS."""

    name = "flatten"

    def n_steps(self, n_frames: int) -> int:
        return n_frames * self.n_levels + 2

    def _frame_table(self, n_frames: int) -> np.ndarray:
        levels = self.n_levels
        steps = np.arange(self.n_steps(n_frames), dtype=np.int64)
        j = steps - 1
        frame_of_step, level_of_step = j // levels, j % levels
        level = np.arange(levels, dtype=np.int64)[:, None]
        owned = (level_of_step[None, :] == level) & (j[None, :] >= 0)
        frame = np.where(owned, frame_of_step[None, :], PAD_CELL)
        # The last step (j = T K) holds only level 0's EOS: the other levels end with frame T-1.
        return np.where(j[None, :] < level, BOS_CELL, frame)


class VallePattern(Pattern):
    """Level 0 at steps 1..T+1 (with EOS), then levels 1..K-1 of frame t at step T + 2 + t."""

    name = "valle"

    def n_steps(self, n_frames: int) -> int:
        return 2 * n_frames + 2 if self.n_levels > 1 else n_frames + 2

    def _frame_table(self, n_frames: int) -> np.ndarray:
        steps = np.arange(self.n_steps(n_frames), dtype=np.int64)
        first = steps - 1
        first = np.where(first < 0, BOS_CELL, np.where(first > n_frames, PAD_CELL, first))
        rest = steps - (n_frames + 2)
        rest = np.where(rest < 0, BOS_CELL, rest)
        table = np.broadcast_to(rest, (self.n_levels, len(steps))).copy()
        table[0] = first
        return table


# ----------------------------------------------------------------------------- configs

PATTERNS: Registry[type[Pattern]] = Registry("pattern")
PATTERNS.register("parallel")(ParallelPattern)
PATTERNS.register("delay")(DelayPattern)
PATTERNS.register("flatten")(FlattenPattern)
PATTERNS.register("valle")(VallePattern)


class ParallelPatternConfig(Strict):
    type: Literal["parallel"] = "parallel"


class DelayPatternConfig(Strict):
    """`delays`: one per level, level 0 smallest; default 0, 1, ..., K-1 (MusicGen)."""

    type: Literal["delay"] = "delay"
    delays: list[int] | None = None


class FlattenPatternConfig(Strict):
    type: Literal["flatten"] = "flatten"


class VallePatternConfig(Strict):
    type: Literal["valle"] = "valle"


PatternConfig = Annotated[
    ParallelPatternConfig | DelayPatternConfig | FlattenPatternConfig | VallePatternConfig,
    Field(discriminator="type"),
]


def build_pattern(cfg: Strict, n_levels: int, card: int) -> Pattern:
    """The pattern named by `cfg.type` for `n_levels` levels of codes in [0, card)."""
    cls = PATTERNS.get(cfg.type)  # type: ignore[attr-defined]
    if isinstance(cfg, DelayPatternConfig):
        return DelayPattern(n_levels, card, cfg.delays)
    return cls(n_levels, card)
