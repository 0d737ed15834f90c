"""Random draws keyed by item, not by process: the same item gets the same draw whatever the
batch it sits in, the rank that holds it, or the number of processes.

Per-item training randomness (quantizer dropout levels, quantizer bypass, the discriminator
window, a VAE's posterior sample) is a function of (run seed, optimizer step, global item
index, purpose): a run on two processes with batch 2 each then draws exactly what one
process with batch 4 draws, which is what makes multi-process training equal to
single-process training, and a resumed run equal to an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix(*values: int) -> int:
    """A 63-bit seed from several integers (order matters; no Python hash randomisation)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & _MASK64
    return h & 0x7FFFFFFFFFFFFFFF


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_uniforms(ids: Sequence[int] | torch.Tensor, *keys: int, count: int = 1) -> torch.Tensor:
    """Floats in [0, 1) of shape [len(ids), count] (float64, CPU): row i is a function of
    (keys, ids[i]) alone."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    base = mix(*keys)
    rows = []
    for item in values:
        seed = mix(base, int(item))
        rows.append([(_splitmix(seed + j) >> 11) / float(1 << 53) for j in range(count)])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(values), count)


def item_normals(ids: Sequence[int] | torch.Tensor, *keys: int, count: int = 1
                 ) -> torch.Tensor:
    """Standard normal draws [len(ids), count] (float32, CPU): row i is a function of
    (keys, ids[i]) alone."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    base = mix(*keys)
    gen = torch.Generator()
    rows = [torch.randn(count, generator=gen.manual_seed(mix(base, int(item))))
            for item in values]
    return torch.stack(rows) if rows else torch.empty(0, count)


def local_ids(batch: int, rank: int = 0) -> torch.Tensor:
    """Stand-in item ids for callers that do not pass the batch's global item indices:
    distinct per rank (rank r holds ids r * 2^32 + 0..batch-1)."""
    return torch.arange(batch, dtype=torch.long) + (int(rank) << 32)


def fold_ids(item_ids: torch.Tensor | None, channels: int) -> torch.Tensor | None:
    """Ids of the rows of a channel-folded batch [B * C, ...] (item-major): item i's channel
    c is row i * C + c and gets id i * C + c. None stays None."""
    if item_ids is None:
        return None
    ids = item_ids.detach().cpu().long()
    return (ids[:, None] * channels + torch.arange(channels)).reshape(-1)


__all__ = ["fold_ids", "item_normals", "item_uniforms", "local_ids", "mix"]
