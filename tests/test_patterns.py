"""Codebook patterns: round trips, special-token placement, prefix consistency."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soundry.errors import ConfigError
from soundry.models.patterns import (
    DelayPattern,
    DelayPatternConfig,
    FlattenPattern,
    ParallelPattern,
    VallePattern,
    build_pattern,
)

CARD = 17


@st.composite
def pattern_and_codes(draw):
    levels = draw(st.integers(1, 5))
    kind = draw(st.sampled_from(["parallel", "delay", "flatten", "valle"]))
    if kind == "delay":
        rest = draw(st.lists(st.integers(0, 6), min_size=levels - 1, max_size=levels - 1))
        first = draw(st.integers(0, min(rest) if rest else 3))
        pattern = DelayPattern(levels, CARD, [first, *rest])
    else:
        pattern = {"parallel": ParallelPattern, "flatten": FlattenPattern, "valle": VallePattern}[
            kind
        ](levels, CARD)
    batch = draw(st.integers(1, 3))
    frames = draw(st.integers(0, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, CARD, (batch, levels, frames), generator=gen)
    return pattern, codes


@settings(max_examples=150, deadline=None)
@given(pattern_and_codes())
def test_revert_inverts_build(case):
    pattern, codes = case
    seq = pattern.build(codes)
    assert seq.shape == (codes.shape[0], codes.shape[1], pattern.n_steps(codes.shape[2]))
    back, valid = pattern.revert(seq)
    assert valid.all()
    assert torch.equal(back, codes)


@settings(max_examples=100, deadline=None)
@given(pattern_and_codes(), st.data())
def test_revert_inverts_build_with_lengths(case, data):
    pattern, codes = case
    batch, _, frames = codes.shape
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, frames), min_size=batch,
                                              max_size=batch)))
    seq = pattern.build(codes, lengths=lengths)
    back, valid = pattern.revert(seq, lengths)
    for b, length in enumerate(lengths.tolist()):
        assert valid[b, :, :length].all() and not valid[b, :, length:].any()
        assert torch.equal(back[b, :, :length], codes[b, :, :length])
    # Each item's sequence is exactly what building it alone gives (then PAD).
    for b, length in enumerate(lengths.tolist()):
        alone = pattern.build(codes[b : b + 1, :, :length])[0]
        assert torch.equal(seq[b, :, : alone.shape[1]], alone)
        assert (seq[b, :, alone.shape[1] :] == pattern.tokens.pad).all()


@settings(max_examples=100, deadline=None)
@given(pattern_and_codes(), st.integers(0, 12))
def test_layouts_are_prefix_consistent(case, extra):
    """Up to level 0's EOS step, the layout for T agrees with the layout for any T' > T."""
    pattern, codes = case
    frames = codes.shape[2]
    short = pattern.layout(frames)[0]
    long = pattern.layout(frames + extra)[0]
    upto = pattern.eos_step(frames) + 1
    assert torch.equal(short[:, :upto], long[:, :upto])


@settings(max_examples=60, deadline=None)
@given(pattern_and_codes())
def test_special_tokens(case):
    pattern, codes = case
    tok = pattern.tokens
    seq = pattern.build(codes)
    assert (seq[:, :, 0] == tok.bos).all(), "every sequence starts with a BOS step"
    frames = codes.shape[2]
    eos_step = pattern.eos_step(frames)
    assert (seq[:, 0, eos_step] == tok.eos).all()
    assert (seq[:, 0, eos_step + 1 :] == tok.pad).all()
    # Exactly one EOS per level that carries one, never MASK.
    assert ((seq == tok.eos).sum(-1) <= 1).all()
    assert not (seq == tok.mask).any()


def test_delay_layout_and_end_offsets():
    pattern = DelayPattern(3, CARD, [0, 1, 3])
    codes = torch.arange(12).view(1, 3, 4)
    seq = pattern.build(codes)[0]
    t = pattern.tokens
    assert seq[0].tolist() == [t.bos, 0, 1, 2, 3, t.eos, t.pad, t.pad, t.pad]
    assert seq[1].tolist() == [t.bos, t.bos, 4, 5, 6, 7, t.eos, t.pad, t.pad]
    assert seq[2].tolist() == [t.bos, t.bos, t.bos, t.bos, 8, 9, 10, 11, t.eos]


def test_window_without_end_has_no_eos():
    pattern = DelayPattern(2, CARD)
    codes = torch.randint(0, CARD, (2, 2, 5))
    seq = pattern.build(codes, ends=torch.tensor([True, False]))
    assert (seq[0] == pattern.tokens.eos).sum() == 2
    assert (seq[1] == pattern.tokens.eos).sum() == 0
    back, valid = pattern.revert(seq)
    assert valid.all() and torch.equal(back, codes)


def test_valle_layout():
    pattern = VallePattern(3, CARD)
    codes = torch.arange(6).view(1, 3, 2)
    seq = pattern.build(codes)[0]
    t = pattern.tokens
    assert seq[0].tolist() == [t.bos, 0, 1, t.eos, t.pad, t.pad]
    assert seq[1].tolist() == [t.bos, t.bos, t.bos, t.bos, 2, 3]
    assert seq[2].tolist() == [t.bos, t.bos, t.bos, t.bos, 4, 5]


def test_flatten_one_level_per_step():
    pattern = FlattenPattern(2, CARD)
    codes = torch.arange(6).view(1, 2, 3)
    seq = pattern.build(codes)[0]
    t = pattern.tokens
    assert seq[0].tolist() == [t.bos, 0, t.pad, 1, t.pad, 2, t.pad, t.eos]
    assert seq[1].tolist() == [t.bos, t.bos, 3, t.pad, 4, t.pad, 5, t.pad]


def test_revert_marks_invalid_cells():
    pattern = DelayPattern(2, CARD)
    codes = torch.randint(0, CARD, (1, 2, 4))
    seq = pattern.build(codes)
    seq[0, 1, 3] = pattern.tokens.eos  # a generated sequence with an early end on level 1
    back, valid = pattern.revert(seq)
    assert not valid[0, 1, 1] and valid.sum() == 7
    assert back[0, 1, 1] == 0


def test_bad_delays_are_config_errors():
    with pytest.raises(ConfigError, match="smallest"):
        DelayPattern(3, CARD, [1, 0, 2])
    with pytest.raises(ConfigError, match="3 levels"):
        DelayPattern(3, CARD, [0, 1])
    with pytest.raises(ConfigError, match=">= 0"):
        build_pattern(DelayPatternConfig(delays=[0, -1]), 2, CARD)


def test_layout_cache_is_reused():
    pattern = DelayPattern(4, CARD)
    assert pattern.layout(50)[0] is pattern.layout(50)[0]
