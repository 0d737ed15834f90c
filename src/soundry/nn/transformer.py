"""A pre-norm transformer: RMSNorm, rotary positions (RoPE), SDPA attention, SwiGLU MLP.

Causal (autoregressive decoding) or bidirectional (masked prediction) by config. Inputs are
[batch, length, dim] vectors; padded positions are given by a `valid` mask [batch, length]
and are never attended to. Rotary positions count valid tokens only, so a left-padded row
computes exactly what the same row computes unpadded.

Incremental decoding uses a `KVCache` allocated once for the longest sequence: each call
writes its keys and values in place at the next positions and attends over the filled prefix
(a view), so no step copies or grows the cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from soundry.config import Strict
from soundry.nn.quant import Int8Linear


class TransformerConfig(Strict):
    """Size and behaviour of a transformer stack.

    mlp_hidden: SwiGLU hidden width (default 8/3 dim rounded up to a multiple of 64, which
      keeps the parameter count of a 4x GELU MLP).
    max_len: longest sequence (prefix + steps) positions are precomputed for.
    dropout: on the residual branches and, unless `attention_dropout` is set, on the
      attention weights. Attention dropout costs: on CPU it moves attention off the fused
      kernel (about 1.6x the step time of a small model), so it can be set to 0 apart.
    """

    dim: int = Field(256, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_hidden: int | None = Field(None, ge=1)
    causal: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    rope_base: float = Field(10000.0, gt=0)
    max_len: int = Field(4096, ge=1)
    norm_eps: float = Field(1e-5, gt=0)


def _mlp_hidden(cfg: TransformerConfig) -> int:
    if cfg.mlp_hidden is not None:
        return cfg.mlp_hidden
    return int(math.ceil(cfg.dim * 8 / 3 / 64) * 64)


class KVCache:
    """Preallocated keys/values [layers, batch, heads, max_len, head_dim] for decoding.

    `length` is the number of positions filled; `valid` [batch, max_len] marks padded
    (never attended) positions; `next_pos` [batch] is each row's next rotary position.
    """

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (layers, batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        # Per-layer views, made once: indexing the 5-D buffers every step costs extra ops.
        self.k_layers = [self.k[i] for i in range(layers)]
        self.v_layers = [self.v[i] for i in range(layers)]
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.next_pos = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0
        self.padded = False  # True once any position is padding: masks are then needed

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def reset(self) -> None:
        self.length = 0
        self.padded = False
        self.valid.fill_(True)
        self.next_pos.zero_()


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim, computed in float32 for low-precision inputs.

    Written out rather than `nn.RMSNorm`, whose CPU path adds dtype round trips that cost
    more than the arithmetic in batch-1 decoding (17 norms per step).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype) * self.weight


class RotaryTables(nn.Module):
    """Rotary position tables [max_len, head_dim]: cos (repeated for both halves) and sin
    (negated on the first half), so that rotation is ``x * cos + roll(x, half) * sin``."""

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("cos", torch.cat([cos, cos], 1).float(), persistent=False)
        self.register_buffer("sin", torch.cat([-sin, sin], 1).float(), persistent=False)

    def lookup(self, positions: torch.Tensor | slice, dtype: torch.dtype) -> tuple:
        """cos, sin shaped to broadcast over [B, L, n, heads, head_dim]."""
        cos, sin = self.cos[positions], self.sin[positions]
        if cos.dim() == 2:  # shared positions [L, head_dim]
            return cos[:, None, None].to(dtype), sin[:, None, None].to(dtype)
        return cos[:, :, None, None].to(dtype), sin[:, :, None, None].to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T; a single row of bf16/fp16 goes through a
    matrix-vector product.

    Batch-1 decoding multiplies one row by every weight matrix. For bf16 weights the CPU
    GEMV kernel is much faster than the GEMM path `F.linear` takes; for fp32 the two are
    about equal, so fp32 keeps `F.linear`.
    """
    if x.dtype in (torch.bfloat16, torch.float16) and x.numel() == x.shape[-1]:
        return torch.mv(weight, x.reshape(-1)).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def project(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """x [..., in] through a bias-free projection layer: an `nn.Linear` (by its weight,
    through `linear`) or an int8 `soundry.nn.quant.Int8Linear` (its own kernel)."""
    if isinstance(layer, Int8Linear):
        return layer(x)
    return linear(x, layer.weight)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + half]) of the last dim by its position angle.

    roll(x, half) = (x2, x1); with sin = (-sin, sin) this is (x1 cos - x2 sin, x2 cos + x1 sin)
    in three kernels.
    """
    rolled = x.roll(x.shape[-1] // 2, dims=-1)
    return torch.addcmul(x * cos, rolled, sin)


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads or (cfg.dim // cfg.heads) % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.heads} heads of even size")
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = project(x, self.qkv).view(batch, length, 3, self.heads, self.head_dim)
        qk = apply_rotary(qkv[:, :, :2], *rope)  # q and k rotated in one go
        q = qk[:, :, 0].transpose(1, 2)  # [B, H, L, Dh]
        k = qk[:, :, 1].transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        if cache is not None:
            start, end = cache.length, cache.length + length
            k_all, v_all = cache.k_layers[layer], cache.v_layers[layer]
            k_all.narrow(2, start, length).copy_(k)
            v_all.narrow(2, start, length).copy_(v)
            k = k_all.narrow(2, 0, end)
            v = v_all.narrow(2, 0, end)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return project(y.transpose(1, 2).reshape(batch, length, dim), self.out)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up as one fused projection."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = project(x, self.gate_up).chunk(2, dim=-1)
        return project(F.silu(gate) * up, self.down)


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, _mlp_hidden(cfg))
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, is_causal, cache, layer))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """A stack of pre-norm blocks and a final RMSNorm; [B, L, dim] -> [B, L, dim]."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.rotary = RotaryTables(cfg.dim // cfg.heads, cfg.max_len, cfg.rope_base)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2 layers)."""
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02
                if name.endswith("attn.out.weight") or name.endswith("mlp.down.weight"):
                    std /= math.sqrt(2 * self.cfg.layers)
                nn.init.normal_(p, 0.0, std)

    def new_cache(
        self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` positions."""
        param = next(self.parameters())
        heads = self.cfg.heads
        return KVCache(
            self.cfg.layers,
            batch,
            heads,
            max_len or self.cfg.max_len,
            self.cfg.dim // heads,
            dtype=dtype or param.dtype,
            device=param.device,
        )

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        cache: KVCache | None = None,
        attend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, dim], valid [B, L] bool (False = padding) -> [B, L, dim].

        With a cache, x continues the cached sequence: its positions follow the filled ones.
        attend: optional [B or 1, L, L] bool, False where query i may not see key j (on top
        of padding and causality; e.g. a prefix that must not see what follows it).
        Outputs at padded positions are meaningless.
        """
        batch, length, _ = x.shape
        start = cache.length if cache is not None else 0
        end = start + length
        if end > (cache.max_len if cache is not None else self.cfg.max_len):
            raise ValueError(f"sequence of {end} positions exceeds the maximum length")
        if valid is not None and bool(valid.all()):
            valid = None
        padded = valid is not None or (cache is not None and cache.padded)

        # Rotary positions count valid tokens only.
        if not padded:
            positions: torch.Tensor | slice = slice(start, end)
        else:
            step_valid = valid if valid is not None else x.new_ones(batch, length, dtype=torch.bool)
            offset = cache.next_pos[:, None] if cache is not None else 0
            positions = (offset + step_valid.long().cumsum(1) - 1).clamp(min=0)
        rope = self.rotary.lookup(positions, x.dtype)

        # Attention mask: causal and/or key padding; every query may see itself, so that
        # padded queries never have an empty (NaN) softmax row.
        mask = None
        is_causal = False
        if attend is not None and cache is not None:
            raise ValueError("an extra attention mask is not supported with a KV cache")
        if padded or attend is not None or (self.cfg.causal and start > 0 and length > 1):
            keys_valid = torch.ones(batch, end, dtype=torch.bool, device=x.device)
            if cache is not None:
                if valid is not None:
                    cache.valid[:, start:end] = valid
                    cache.padded = True
                keys_valid = cache.valid[:, :end]
            elif valid is not None:
                keys_valid = valid
            q_pos = torch.arange(start, end, device=x.device)[:, None]
            k_pos = torch.arange(end, device=x.device)[None, :]
            allowed = keys_valid[:, None, :] | (k_pos == q_pos)[None]
            if self.cfg.causal:
                allowed = allowed & (k_pos <= q_pos)[None]
            if attend is not None:
                allowed = allowed & (attend.to(allowed.device) | (k_pos == q_pos)[None])
            mask = allowed[:, None]  # [B, 1, L, end]
        elif self.cfg.causal and length > 1:
            is_causal = True  # start == 0: SDPA's own causal kernel

        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, is_causal, cache, i)

        if cache is not None:
            if valid is not None:
                cache.next_pos += valid.long().sum(1)
            else:
                cache.next_pos += length
            cache.length = end
        return self.norm(x)
