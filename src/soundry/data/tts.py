"""TTS training items from token shards: whole utterances, their text, a voice prompt.

Each item is one whole utterance (never a crop: its text covers all of it). Its prompt is
a random window of 1-3 s (`prompt_seconds`) of another training clip of the same speaker,
both drawn from the generator of (seed, epoch, index), so a resume rebuilds the same
batches. An item whose speaker has no other clip, or that has no speaker id, gets no
prompt. Batches hold utterances of similar duration (`DurationBucketSampler`: buckets,
batch order shuffled every epoch, never sorted by duration).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from soundry.config import Strict
from soundry.data.samplers import (
    DurationBucketSampler,
    EpochBatchSampler,
    FixedItemsSampler,
    ItemKey,
    ShardedSampler,
    item_rng,
)
from soundry.data.tokens import TokenIndex, TokenLoader, collate_tokens, split_items
from soundry.errors import DataError

log = logging.getLogger(__name__)


class TTSDataConfig(Strict):
    """Token shards of transcribed speech (`soundry tokenize` of an LJSpeech folder or a
    manifest with text and speaker ids).

    max_seconds / min_seconds: utterances outside are left out of training (logged).
    valid_count: utterances held out for validation (their speakers' other clips stay in
      training: validation reads unseen sentences in training voices).
    """

    path: str = ""
    max_seconds: float = Field(12.0, gt=0)
    min_seconds: float = Field(0.3, ge=0)
    prompt_seconds: tuple[float, float] = (1.0, 3.0)
    bucket_seconds: float = Field(0.5, gt=0)
    max_batch_seconds: float = Field(48.0, gt=0)
    max_batch_size: int | None = Field(16, ge=1)
    num_workers: int = Field(0, ge=0)
    valid_count: int = Field(8, ge=0)

    @model_validator(mode="after")
    def _check(self) -> TTSDataConfig:
        lo, hi = self.prompt_seconds
        if not 0 < lo <= hi:
            raise ValueError(f"tokens.prompt_seconds must be 0 < min <= max, got {lo}, {hi}")
        return self


def speaker_pool(index: TokenIndex, items: Sequence[int]) -> dict[str, list[int]]:
    """Speaker id -> index positions of its items (items without a speaker are left out)."""
    pool: dict[str, list[int]] = defaultdict(list)
    for i in items:
        speaker = index.items[i].speaker
        if speaker:
            pool[speaker].append(i)
    return dict(pool)


def prompt_window(index: TokenIndex, pool: dict[str, list[int]], position: int,
                  rng: np.random.Generator, seconds: tuple[float, float],
                  levels: int) -> np.ndarray:
    """Codes [levels, P] of a random window of another clip by the speaker of item
    `position` (P = 0 when there is none)."""
    item = index.items[position]
    others = [j for j in pool.get(item.speaker or "", []) if j != position]
    if not others:
        return np.zeros((levels, 0), dtype=np.int64)
    j = others[int(rng.integers(len(others)))]
    frames = index.items[j].frames
    want = max(1, round(float(rng.uniform(*seconds)) * index.frame_rate))
    length = min(want, frames)
    offset = int(rng.integers(0, frames - length + 1))
    return np.asarray(index.codes(j, offset, length)[:levels], dtype=np.int64)


class TTSDataset(torch.utils.data.Dataset):
    """Whole utterances keyed by `ItemKey` (item = position in `items`), with prompts from
    `pool` (speaker -> index positions)."""

    def __init__(self, index: TokenIndex, items: Sequence[int], pool: dict[str, list[int]],
                 seed: int, levels: int, prompt_seconds: tuple[float, float]) -> None:
        if levels > index.levels:
            raise DataError(f"the model uses {levels} levels; the tokens in {index.root} "
                            f"have {index.levels}")
        self.index, self.items, self.pool = index, list(items), pool
        self.seed, self.levels, self.prompt_seconds = int(seed), int(levels), prompt_seconds

    def __len__(self) -> int:
        return len(self.items)

    def durations(self) -> list[float]:
        rate = self.index.frame_rate
        return [self.index.items[i].frames / rate for i in self.items]

    def __getitem__(self, key: ItemKey) -> dict[str, Any]:
        position = self.items[key.item]
        item = self.index.items[position]
        rng = item_rng(self.seed, key.epoch, key.index)
        codes = np.asarray(self.index.codes(position)[: self.levels], dtype=np.int64)
        prompt = prompt_window(self.index, self.pool, position, rng, self.prompt_seconds,
                               self.levels)
        return {"codes": codes, "offset": 0, "frames": item.frames, "end": True,
                "text": item.text or "", "tags": list(item.tags), "speaker": item.speaker,
                "seed": int(rng.integers(0, 2**62)), "id": item.id, "prompt": prompt}


def collate_tts(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`collate_tokens` plus prompt [B, K, P] (left-padded) and prompt_valid [B, P]."""
    batch = collate_tokens(items)
    levels = items[0]["codes"].shape[0]
    width = max(it["prompt"].shape[1] for it in items)
    prompt = torch.zeros(len(items), levels, width, dtype=torch.long)
    valid = torch.zeros(len(items), width, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it["prompt"].shape[1]
        if n:
            prompt[b, :, width - n:] = torch.from_numpy(it["prompt"])
            valid[b, width - n:] = True
    batch["prompt"], batch["prompt_valid"] = prompt, valid
    return batch


def usable_items(index: TokenIndex, items: Sequence[int], cfg: TTSDataConfig) -> list[int]:
    """Items with a transcript whose duration lies in [min_seconds, max_seconds]."""
    rate = index.frame_rate
    keep = [i for i in items if index.items[i].text
            and cfg.min_seconds <= index.items[i].frames / rate <= cfg.max_seconds]
    dropped = len(items) - len(keep)
    if dropped:
        log.warning("tts data: %d of %d utterances left out (no transcript, or outside "
                    "%.1f-%.1f s)", dropped, len(items), cfg.min_seconds, cfg.max_seconds)
    if not keep:
        raise DataError(f"{index.root}: no utterance with a transcript between "
                        f"{cfg.min_seconds} and {cfg.max_seconds} s")
    return keep


def tts_split(index: TokenIndex, cfg: TTSDataConfig) -> tuple[list[int], list[int]]:
    """(train, valid) positions of usable utterances."""
    train, valid = split_items(index, cfg.valid_count)
    usable = set(usable_items(index, range(len(index.items)), cfg))
    return [i for i in train if i in usable], [i for i in valid if i in usable]


def build_tts_loader(cfg: TTSDataConfig, seed: int, levels: int, index: TokenIndex,
                     overfit: int | None = None, rank: int = 0,
                     world_size: int = 1) -> TokenLoader:
    """The TTS training loader (the engine's `TrainLoader`)."""
    train, _ = tts_split(index, cfg)
    if overfit:
        train = usable_items(index, range(len(index.items)), cfg)
    pool = speaker_pool(index, train)
    no_prompt = sum(1 for i in train
                    if len(pool.get(index.items[i].speaker or "", [])) < 2)
    if no_prompt:
        log.warning("tts data: %d of %d utterances have no other clip of their speaker and "
                    "train without a voice prompt", no_prompt, len(train))
    dataset = TTSDataset(index, train, pool, seed, levels, cfg.prompt_seconds)
    sampler: EpochBatchSampler = DurationBucketSampler(
        dataset.durations(), cfg.max_batch_seconds, cfg.bucket_seconds, cfg.max_batch_size,
        seed)
    if overfit:
        count = min(int(overfit), len(train))
        sampler = FixedItemsSampler(sampler, count, min(count, cfg.max_batch_size or count))
    if world_size > 1:
        sampler = ShardedSampler(sampler, rank, world_size)
    log.info("tts data: %d utterances (%.2f h), %d speakers, from %s", len(train),
             sum(index.items[i].frames for i in train) / index.frame_rate / 3600, len(pool),
             index.root)
    return TokenLoader(dataset, sampler, cfg.num_workers, seed=seed, collate=collate_tts)
