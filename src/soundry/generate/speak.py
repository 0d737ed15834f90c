"""Speech from a `TTSModel`: masked demasking (`nar`) or KV-cached decoding (`ar`).

NAR: the target's length comes from the duration head (times `duration_scale`); every cell
starts as MASK. Step i of N predicts every cell (guided), samples the masked ones at the
temperature annealed linearly to 0, and keeps masked only the floor(cos(pi/2 i/N) x n)
least confident units of the still-masked ones (frames: log-probabilities summed over
levels; or single cells), so step N fills the rest. A cell, once kept, never changes.
Guidance runs the conditional and the null (no text, no prompt) rows as one batch:
g = u + s (c - u), rescaled to the conditional logits' spread by `rescale` (0: none).

AR: `soundry.generate.sampling.generate` with the model's pattern, KV cache and batched
guidance. A row that emits no EOS stops at `max_duration_factor` x its predicted duration,
with a warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from soundry.errors import SoundryError
from soundry.models.lm import Conditioning
from soundry.models.tts import TTSModel

log = logging.getLogger(__name__)


@dataclass
class Speech:
    """codes [B, K, T] (0 past each row's length), lengths [B] frames, predicted [B] the
    duration head's frame counts (before `duration_scale`), stopped [B] bool: AR rows cut
    by the length guard."""

    codes: torch.Tensor
    lengths: torch.Tensor
    predicted: torch.Tensor
    stopped: torch.Tensor


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance of logits [..., V]: u + s (c - u), then blended by `rescale`
    with itself rescaled to the conditional logits' standard deviation over V."""
    guided = uncond + (cond - uncond) * scale
    if rescale > 0:
        ratio = cond.std(dim=-1, keepdim=True) / guided.std(dim=-1, keepdim=True).clamp(min=1e-6)
        guided = rescale * guided * ratio + (1 - rescale) * guided
    return guided


def keep_schedule(step: int, steps: int, total: int) -> int:
    """Units left masked after demasking step `step` (1..steps) of `total`."""
    return int(math.floor(math.cos(math.pi / 2 * step / steps) * total))


@torch.inference_mode()
def demask(
    model: TTSModel,
    cond: Conditioning,
    frames: torch.Tensor,
    *,
    steps: int | None = None,
    temperature: float | None = None,
    cfg_scale: float | None = None,
    cfg_rescale: float | None = None,
    confidence: str | None = None,
    noise: float | None = None,
    seed: int = 0,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Fill `frames` [B] frames per row by iterative demasking -> codes [B, K, max(frames)]
    (0 past a row's length). Unset options come from `model.cfg.nar` and
    `model.cfg.sampling`.

    history: when a list, the codes after each step are appended to it (MASK where still
    masked), for tests and inspection.
    """
    nar, sampling = model.cfg.nar, model.cfg.sampling
    steps = nar.steps if steps is None else steps
    temperature = sampling.temperature if temperature is None else temperature
    cfg_scale = sampling.cfg_scale if cfg_scale is None else cfg_scale
    cfg_rescale = sampling.cfg_rescale if cfg_rescale is None else cfg_rescale
    confidence = confidence or nar.confidence
    noise = nar.confidence_noise if noise is None else noise
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    cond = cond.to(device)
    batch, levels, card = cond.batch, model.cfg.levels, model.cfg.card
    frames = frames.to(device).long().clamp(min=1)
    width = int(frames.max())
    valid = torch.arange(width, device=device)[None, :] < frames[:, None]  # [B, T]
    mask_id, pad_id = model.tokens.mask, model.tokens.pad
    codes = torch.where(valid[:, None, :], mask_id, pad_id).expand(batch, levels, width).clone()
    # units: frames [B, 1, T] (all levels fill together) or cells [B, K, T]
    per_frame = confidence == "frame"
    masked = valid[:, None, :].expand(batch, 1 if per_frame else levels, width).clone()
    total = masked.sum(dim=(1, 2))  # [B]
    guided = cfg_scale != 1.0
    rows = Conditioning.concat([cond, model.null_conditioning(batch, like=cond)]) if guided \
        else cond
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for i in range(1, steps + 1):
            ids = torch.cat([codes, codes]) if guided else codes
            row_valid = torch.cat([valid, valid]) if guided else valid
            logits, _ = model.nar_logits(ids, row_valid, rows)
            logits = logits[..., :card].float()
            if guided:
                logits = guide(logits[:batch], logits[batch:], cfg_scale, cfg_rescale)
            temp = temperature * (1.0 - i / steps)
            logp = torch.log_softmax(logits, dim=-1)
            if temp > 0:
                gumbel = -torch.log(-torch.log(
                    torch.rand(logits.shape, generator=generator, device=device)
                    .clamp(1e-9, 1 - 1e-9)))
                sampled = (logits / temp + gumbel).argmax(-1)
            else:
                sampled = logits.argmax(-1)
            score = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)  # [B, K, T]
            if per_frame:
                score = score.sum(dim=1, keepdim=True)
            if noise > 0 and temp > 0:
                u = torch.rand(score.shape, generator=generator, device=device)
                score = score + noise * temp * -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))
            # of the still-masked units, the least confident stay masked
            score = torch.where(masked, score, torch.full_like(score, float("inf")))
            remain = torch.tensor([keep_schedule(i, steps, int(n)) for n in total.tolist()],
                                  device=device)
            remain = torch.minimum(remain, masked.sum(dim=(1, 2)))
            order = score.flatten(1).argsort(dim=1)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(order.shape[1], device=device)
                          .expand_as(order).contiguous())
            still = (rank < remain[:, None]).view_as(masked) & masked
            fill = masked & ~still
            fill_cells = fill.expand(batch, levels, width)
            codes = torch.where(fill_cells, sampled, codes)
            masked = still
            if history is not None:
                history.append(codes.clone())
            if not bool(masked.any()):
                break
    finally:
        model.train(was_training)
    return torch.where(valid[:, None, :], codes, torch.zeros_like(codes))


def speak(
    model: TTSModel,
    cond: Conditioning,
    *,
    duration_scale: float = 1.0,
    frames: torch.Tensor | None = None,
    temperature: float | None = None,
    cfg_scale: float | None = None,
    steps: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
) -> Speech:
    """Codes for each row of `cond` (text + prompt), in the model's mode.

    frames: target lengths to use instead of the duration head's (NAR; AR: the guard).
    Unset sampling options come from `model.cfg.sampling`.
    """
    sampling = model.cfg.sampling
    device = next(model.parameters()).device
    cond = cond.to(device)
    if cond.length + 2 > model.max_len:
        raise SoundryError(f"text and prompt take {cond.length} positions, leaving no room "
                           f"for speech in the model's {model.max_len} "
                           "(model.transformer.max_len): use a shorter prompt or text")
    predicted = model.predict_frames(cond).cpu()
    target = frames.float().cpu() if frames is not None else predicted * duration_scale
    target = target.round().clamp(min=1).long()
    if model.cfg.mode == "nar":
        room = model.max_len - cond.length - 1
        if int(target.max()) > room:
            log.warning("duration %d frames exceeds the model's positions; cut to %d",
                        int(target.max()), room)
            target = target.clamp(max=room)
        codes = demask(model, cond, target, steps=steps, temperature=temperature,
                       cfg_scale=cfg_scale, seed=seed)
        return Speech(codes.cpu(), target, predicted, torch.zeros(len(target), dtype=torch.bool))

    from soundry.generate.sampling import generate

    guard = (target.float() * model.cfg.max_duration_factor).ceil().long()
    room = model.max_len - cond.length - 1
    max_frames = max(1, min(int(guard.max()), model.pattern.n_frames(room) if room > 1 else 1))
    scale = sampling.cfg_scale if cfg_scale is None else cfg_scale
    model.plan(target)
    try:
        gen = generate(model, cond, max_frames=max_frames,
                       temperature=sampling.temperature if temperature is None else temperature,
                       top_k=sampling.top_k if top_k is None else top_k, cfg_scale=scale,
                       seed=seed)
    finally:
        model.plan(None)
    guard = guard.clamp(max=max_frames)
    ended = gen.lengths < max_frames  # level 0 emitted EOS
    stopped = ~ended | (gen.lengths > guard)
    lengths = torch.minimum(gen.lengths, guard)
    if bool(stopped.any()):
        log.warning("%d of %d rows emitted no EOS within %.1fx the predicted duration and "
                    "were stopped there", int(stopped.sum()), len(stopped),
                    model.cfg.max_duration_factor)
    codes = gen.codes.clone()
    frame_idx = torch.arange(codes.shape[2])[None, None, :]
    codes = torch.where(frame_idx < lengths[:, None, None], codes, torch.zeros_like(codes))
    return Speech(codes[:, :, : int(lengths.max())], lengths, predicted, stopped)
