"""Int8 weight-only linear layers for memory-bound decoding.

Batch-1 decoding of a token LM multiplies one row by every weight matrix per step, so its
speed is set by how many weight bytes it reads. `Int8Linear` keeps each weight as int8 with
one float scale per output row (symmetric, round to nearest: w ~ q * scale, |q| <= 127), a
quarter of float32's bytes. On CPU the product runs in PyTorch's int8-weight kernel
(`torch._weight_int8pack_mm`) with bfloat16 activations, which reads the int8 weights
directly; this kernel is ATen's own vectorised code, fast with or without native bf16
(AVX2 or AVX-512). Elsewhere (GPU) the weight is dequantised to the input's dtype at
every call, which saves memory but not bandwidth: there int8 is for fitting a model, not
for speed.

The error: a row's quantisation step is max|w| / 127, so each weight moves by at most half
of it; with bf16 activations (8-bit mantissa) the logits of a random-init 512-wide LM move
by ~1% of their spread (benchmarks/lm_generate.py reports the measured bound and greedy
token agreement with float32).

`soundry.nn.transformer.project(x, layer)` applies a projection, an `Int8Linear` or a
bias-free `nn.Linear` alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T for x [..., in]; q int8 [out, in], scale [out]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        # the CPU kernel reads K in blocks: with several rows and K not a multiple of 16 it
        # crashes (torch 2.13), so K is zero-padded to a multiple of 32 (inputs likewise)
        self.padded_in = -(-w.shape[1] // 32) * 32
        q = F.pad(q, (0, self.padded_in - w.shape[1]))
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight [out, in] (float32), for code that reads `.weight`."""
        return self.qweight[:, : self.in_features].float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.device.type != "cpu":
            return F.linear(x, self.weight.to(x.dtype))
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.padded_in != self.in_features:
            rows = F.pad(rows, (0, self.padded_in - self.in_features))
        rows = rows.contiguous()
        y = torch._weight_int8pack_mm(rows, self.qweight, self.scale_bf16)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module) -> int:
    """Replace every bias-free `nn.Linear` inside `module` by an `Int8Linear` (in place);
    returns how many. Inference only: int8 weights are not trained."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.bias is None:
            setattr(module, name, Int8Linear(child.weight))
            count += 1
        else:
            count += quantize_linears(child)
    return count


__all__ = ["Int8Linear", "quantize_linears"]
