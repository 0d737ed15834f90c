"""Autoregressive generation from a `TokenLM`: KV cache, sampling, classifier-free guidance.

One step of generation = one forward pass for one pattern step of every row. The layout of
the pattern decides, for each cell, whether it is sampled or forced (BOS before a level
starts, PAD after it ends, EOS where a level ends). Until an item's level 0 emits EOS, the
item follows the layout for `max_frames` frames; when level 0 emits EOS at frame T, the item
switches to the layout for T frames (the patterns are prefix consistent, so the cells
already generated agree), which forces EOS on each remaining level at its own offset and
PAD after. Generation stops when every item has reached its last step.

Classifier-free guidance runs the conditional and the unconditional (null text) rows as one
batch of 2B rows and combines their logits as ``uncond + (cond - uncond) * scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from soundry.models.lm import Conditioning, TokenLM


@dataclass
class Generated:
    """Result of `generate`.

    codes: [B, K, T] generated codes (0 where not valid); valid: [B, K, T] bool;
    lengths: [B] frames before each item's EOS; seq: [B, K, S] the pattern sequence;
    steps: forward passes run.
    """

    codes: torch.Tensor
    valid: torch.Tensor
    lengths: torch.Tensor
    seq: torch.Tensor
    steps: int


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row of logits [N, V] -> [N].

    temperature 0 is greedy (argmax). top_k keeps the k most likely ids, then top_p keeps
    the smallest set of those whose probability reaches p (the most likely id always stays).
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    vocab = logits.shape[-1]
    if top_k is not None and 0 < top_k < vocab:
        values, ids = logits.topk(top_k, dim=-1)  # sorted, descending
    elif top_p is not None and top_p < 1.0:
        values, ids = logits.sort(dim=-1, descending=True)
    else:
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs = torch.softmax(values, dim=-1)
    if top_p is not None and top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the ids ranked above each one
        probs = torch.where(before < top_p, probs, torch.zeros_like(probs))
    choice = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(-1, choice).squeeze(-1)


@torch.inference_mode()
def generate(
    model: TokenLM,
    cond: Conditioning | None = None,
    *,
    batch: int | None = None,
    max_frames: int = 250,
    temperature: float = 1.0,
    top_k: int | None = 250,
    top_p: float | None = None,
    cfg_scale: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
    trace: list[torch.Tensor] | None = None,
    min_frames: int = 0,
) -> Generated:
    """Generate up to `max_frames` frames for each row of `cond` (or `batch` unconditioned
    rows when `cond` is None).

    cfg_scale: guidance scale; 1 (or no `cond`) runs without the unconditional rows.
    use_cache: False recomputes the whole sequence every step (reference path for tests).
    trace: when a list, each step's raw row logits [rows, K, V] are appended to it (rows =
      2B under guidance: conditional rows first).
    min_frames: level 0 may not emit EOS before this many frames (benchmarks, fixed-length
      generation).
    """
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    was_training = model.training
    model.eval()
    try:
        return _generate(model, cond, batch, max_frames, temperature, top_k, top_p, cfg_scale,
                         seed, use_cache, trace, min_frames)
    finally:
        model.train(was_training)


def _generate(
    model: TokenLM,
    cond: Conditioning | None,
    batch: int | None,
    max_frames: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    cfg_scale: float,
    seed: int,
    use_cache: bool,
    trace: list[torch.Tensor] | None,
    min_frames: int,
) -> Generated:
    pattern, tokens = model.pattern, model.tokens
    device = next(model.parameters()).device
    levels, eos = model.cfg.levels, tokens.eos
    if cond is not None:
        cond = cond.to(device)
        batch = cond.batch
    batch = batch or 1
    guided = cond is not None and cfg_scale != 1.0
    row_cond = cond
    if guided:
        row_cond = Conditioning.concat([cond, model.null_conditioning(batch, like=cond)])
    n_rows = 2 * batch if guided else batch
    n_steps = pattern.n_steps(max_frames)
    prefix_len = row_cond.length if row_cond is not None else 0
    if prefix_len + n_steps > model.cfg.transformer.max_len:
        raise ValueError(
            f"{max_frames} frames need {prefix_len + n_steps} positions; the model has "
            f"{model.cfg.transformer.max_len} (transformer.max_len)"
        )

    # forced[b, k, s]: the token cell (k, s) must hold, or -1 where it is sampled.
    blank = torch.full((1, levels, max_frames), -1, dtype=torch.long, device=device)
    forced = pattern.build(blank).expand(batch, -1, -1).clone()
    seq = forced.clone()
    level0_frame = pattern.layout(max_frames)[0][0].tolist()
    # Only level 0 may choose to end; the other levels end where the pattern says.
    level_bias = torch.zeros(levels, tokens.n_output, device=device)
    level_bias[1:, eos] = float("-inf")
    # Before `min_frames` frames, level 0 may not end either.
    early_bias = level_bias.clone()
    early_bias[0, eos] = float("-inf")
    generator = torch.Generator(device=device).manual_seed(seed)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    end_step = [n_steps - 1] * batch
    frames_of = [max_frames] * batch
    last = n_steps - 1

    def rows(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if guided else x

    cache = model.new_cache(n_rows, prefix_len + n_steps) if use_cache else None
    if cache is not None:
        logits = model.prefill(row_cond, rows(seq[:, :, :1]), cache)
    else:
        logits = model(rows(seq[:, :, :1]), row_cond)[:, :, -1]
    n_passes = 1
    for s in range(1, n_steps):
        if trace is not None:
            trace.append(logits.float().clone())
        scores = logits.float()
        if guided:
            scores = scores[batch:] + (scores[:batch] - scores[batch:]) * cfg_scale
        scores = scores + (early_bias if level0_frame[s] < min_frames else level_bias)
        vocab = scores.shape[-1]
        sampled = sample_next(scores.view(-1, vocab), temperature, top_k, top_p, generator)
        sampled = sampled.view(batch, levels)
        cell = forced[:, :, s]
        step_tokens = torch.where(cell >= 0, cell, sampled)
        frame = level0_frame[s]
        if frame >= 0:
            new_end = (step_tokens[:, 0] == eos) & ~ended
            if bool(new_end.any()):
                layout = pattern.build(blank[:, :, :frame])[0]
                for b in new_end.nonzero().flatten().tolist():
                    forced[b] = tokens.pad
                    forced[b, :, : layout.shape[1]] = layout
                    end_step[b] = layout.shape[1] - 1
                    frames_of[b] = frame
                ended |= new_end
                last = max(end_step)
                cell = forced[:, :, s]
                step_tokens = torch.where(cell >= 0, cell, sampled)
        seq[:, :, s] = step_tokens
        if s >= last:
            break
        if cache is not None:
            logits = model.decode(rows(step_tokens[:, :, None]), cache)
        else:
            logits = model(rows(seq[:, :, : s + 1]), row_cond)[:, :, -1]
        n_passes += 1

    seq = seq[:, :, : last + 1]
    lengths = torch.tensor(frames_of, dtype=torch.long)
    codes, valid = pattern.revert(seq.cpu(), lengths)
    return Generated(codes=codes, valid=valid, lengths=lengths, seq=seq.cpu(), steps=n_passes)

