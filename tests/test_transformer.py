"""Transformer: causal masking, KV-cache equivalence, padding invariance, bidirectional mode."""

from __future__ import annotations

import pytest
import torch

from soundry.nn.transformer import Transformer, TransformerConfig


def make(causal: bool = True, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(dim=32, layers=2, heads=4, causal=causal, max_len=64)
    return Transformer(cfg).eval()


def test_causal_future_does_not_change_past():
    net = make()
    x = torch.randn(2, 10, 32)
    y = net(x)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(2, 4, 32)
    y2 = net(x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_bidirectional_sees_the_future():
    net = make(causal=False)
    x = torch.randn(1, 8, 32)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(net(x)[:, 0], net(x2)[:, 0])


@pytest.mark.parametrize("chunks", [[10], [1] * 10, [4, 1, 1, 3, 1]])
def test_kv_cache_matches_full_forward(chunks):
    net = make()
    x = torch.randn(2, sum(chunks), 32)
    full = net(x)
    cache = net.new_cache(batch=2, max_len=16)
    k_ptr = cache.k.data_ptr()
    outs, start = [], 0
    for n in chunks:
        outs.append(net(x[:, start : start + n], cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 10
    assert cache.k.data_ptr() == k_ptr and cache.k.shape[3] == 16  # written in place


def test_left_padding_is_invisible():
    """A row padded on the left (or in the middle) computes what it computes unpadded."""
    net = make()
    x = torch.randn(1, 6, 32)
    ref = net(x)
    padded = torch.cat([torch.randn(1, 3, 32), x[:, :2], torch.randn(1, 2, 32), x[:, 2:]], 1)
    valid = torch.tensor([[False] * 3 + [True] * 2 + [False] * 2 + [True] * 4])
    out = net(padded, valid=valid)
    torch.testing.assert_close(out[valid][None], ref, atol=1e-5, rtol=1e-5)


def test_padded_prefix_then_cached_steps():
    net = make()
    a = torch.randn(1, 9, 32)
    b = torch.randn(1, 5, 32)
    ref_a, ref_b = net(a), net(b)
    # Row 1 has a 4-shorter prefix, left-padded; both then decode 3 steps with the cache.
    prefix = torch.zeros(2, 6, 32)
    prefix[0] = a[0, :6]
    prefix[1, 4:] = b[0, :2]
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, :4] = False
    cache = net.new_cache(batch=2, max_len=12)
    net(prefix, valid=valid, cache=cache)
    for i in range(3):
        step = torch.stack([a[0, 6 + i], b[0, 2 + i]])[:, None]
        out = net(step, cache=cache)
        torch.testing.assert_close(out[0, 0], ref_a[0, 6 + i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1, 0], ref_b[0, 2 + i], atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    net = make()
    cache = net.new_cache(batch=1, max_len=4)
    net(torch.randn(1, 4, 32), cache=cache)
    with pytest.raises(ValueError, match="maximum length"):
        net(torch.randn(1, 1, 32), cache=cache)


def test_gradients_flow():
    net = make().train()
    x = torch.randn(2, 5, 32, requires_grad=True)
    net(x).square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in net.parameters())


def test_rotary_scores_depend_on_relative_position_only():
    from soundry.nn.transformer import RotaryTables, apply_rotary

    tables = RotaryTables(head_dim=16, max_len=64, base=10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rotary(q, *(t[m] for t in (tables.cos, tables.sin)))
        kn = apply_rotary(k, *(t[n] for t in (tables.cos, tables.sin)))
        return qm @ kn

    torch.testing.assert_close(score(3, 1), score(40, 38))
    torch.testing.assert_close(score(0, 0), q @ k)
    assert not torch.allclose(score(3, 1), score(3, 2))
    rotated = apply_rotary(q, tables.cos[9], tables.sin[9])
    torch.testing.assert_close(rotated.norm(), q.norm())


def test_attention_dropout_can_be_set_apart_from_the_residual_dropout() -> None:
    from soundry.nn.transformer import Transformer, TransformerConfig

    both = Transformer(TransformerConfig(dim=16, layers=1, heads=2, dropout=0.2))
    apart = Transformer(TransformerConfig(dim=16, layers=1, heads=2, dropout=0.2,
                                          attention_dropout=0.0))
    assert both.blocks[0].attn.dropout == 0.2
    assert apart.blocks[0].attn.dropout == 0.0
    assert apart.blocks[0].drop.p == 0.2
    # no dropout anywhere in eval mode, with either setting
    apart.load_state_dict(both.state_dict())
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(both.eval()(x), apart.eval()(x))
