"""TTS model, demasking, AR decoding, data and recipe: behaviour checks on tiny models.

Every model here is a random, untrained 3-level model of 16 codes (dim 32, 2 layers): the
tests check invariants of the mechanics (masks, schedules, guidance batching, KV cache,
duration read at the separator, batching and prompts), not the quality of speech.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from soundry.data.scan import scan
from soundry.data.tokens import TokenIndex, TokenShardWriter
from soundry.data.tts import TTSDataConfig, build_tts_loader, tts_split
from soundry.errors import ConfigError
from soundry.generate.sampling import generate
from soundry.generate.speak import demask, guide, keep_schedule, speak
from soundry.models.lm import Conditioning
from soundry.models.tts import DurationConfig, DurationHead, TTSConfig, TTSModel, level_weights
from soundry.nn.transformer import TransformerConfig
from soundry.train.recipes import recipe_from_dict
from soundry.train.task import TaskContext
from soundry.train.tasks.tts import TTSTask

LEVELS, CARD = 3, 16
TEXTS = ["hello there", "a much longer sentence to read aloud", "hi"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(mode: str = "nar", **kw: object) -> TTSModel:
    """A random tiny model with decisive logits (head weights of std 1) and a duration head
    whose prediction varies with its input (around 10 frames; with `duration.kind: tokens`
    around 7 frames per text token)."""
    torch.manual_seed(0)
    cfg = TTSConfig(mode=mode, levels=LEVELS, card=CARD,
                    transformer=TransformerConfig(dim=32, layers=2, heads=2,
                                                  causal=mode == "ar", max_len=256), **kw)
    model = TTSModel(cfg).eval()
    with torch.no_grad():
        model.audio_out.head.weight.normal_(0.0, 1.0)
        last = model.duration.net[-1]
        last.weight.normal_(0.0, 0.5)
        last.bias.fill_(math.log(10.0))
    return model


def conditioning(model: TTSModel, texts: list[str], prompt_lengths: list[int],
                 width: int = 6, seed: int = 0) -> Conditioning:
    """Texts plus left-padded prompts of `prompt_lengths` valid frames out of `width`."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, CARD, (len(texts), LEVELS, width), generator=g)
    valid = torch.zeros(len(texts), width, dtype=torch.bool)
    for b, n in enumerate(prompt_lengths):
        valid[b, width - n:] = True
    return model.make_conditioning(texts, prompt, valid)


def target_ids(model: TTSModel, lengths: list[int], width: int, seed: int,
               mask_every: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random target ids [B, K, width] with some cells MASK, PAD past each length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CARD, (len(lengths), LEVELS, width), generator=g)
    ids[:, :, ::mask_every] = model.tokens.mask
    valid = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.where(valid[:, None, :], ids, torch.full_like(ids, model.tokens.pad))
    return ids, valid


# ----------------------------------------------------------------------------- 1. masks


def test_mask_cells_counts_ratios_and_units() -> None:
    model = tiny()
    lengths = torch.tensor([20, 7, 1, 13])
    frames = 20
    ratios_all = []
    for seed0 in range(0, 2000, 4):
        seeds = list(range(seed0, seed0 + 4))
        masked, ratios = model.mask_cells(lengths, frames, seeds, unit="frame")
        assert masked.shape == (4, LEVELS, frames)
        for b in range(4):
            n = int(lengths[b])
            r = float(ratios[b])
            assert 0.0 <= r <= 1.0
            want = min(n, max(1, math.ceil(r * n)))
            # all levels of the same frames; never past the length
            assert torch.equal(masked[b, 0], masked[b, 1]) and torch.equal(masked[b, 0],
                                                                           masked[b, 2])
            assert int(masked[b, 0].sum()) == want
            assert not masked[b, :, n:].any()
        ratios_all.append(ratios)
    ratios = torch.cat(ratios_all).double()
    assert len(ratios) == 2000
    # r = cos(u pi / 2), u ~ U(0, 1): E[r] = 2 / pi, and u itself is uniform
    assert abs(float(ratios.mean()) - 2 / math.pi) < 0.03
    u = torch.arccos(ratios.clamp(0, 1)) * 2 / math.pi
    for q in (0.25, 0.5, 0.75):
        assert abs(float(torch.quantile(u, q)) - q) < 0.05


def test_mask_cells_cell_unit_and_determinism() -> None:
    model = tiny()
    lengths = torch.tensor([16, 9])
    partial = differ = 0
    for seed in range(50):
        masked, ratios = model.mask_cells(lengths, 16, [seed, seed + 1000], unit="cell")
        for b in range(2):
            n = int(lengths[b])
            want = min(n, max(1, math.ceil(float(ratios[b]) * n)))
            # the same count on every level, never past the length
            assert masked[b, :, :n].sum(dim=1).tolist() == [want] * LEVELS
            assert not masked[b, :, n:].any()
            if want < n:
                partial += 1
                same = all(torch.equal(masked[b, 0], masked[b, k]) for k in range(LEVELS))
                differ += not same
        again, ratios_again = model.mask_cells(lengths, 16, [seed, seed + 1000], unit="cell")
        assert torch.equal(masked, again) and torch.equal(ratios, ratios_again)
    # levels draw their frames independently
    assert partial > 20 and differ >= 0.8 * partial
    # the same seed gives the same mask, another seed (almost always) another one
    a, _ = model.mask_cells(lengths, 16, [3, 4], unit="frame")
    b, _ = model.mask_cells(lengths, 16, [3, 4], unit="frame")
    c, _ = model.mask_cells(lengths, 16, [5, 6], unit="frame")
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- 2. schedule


@pytest.mark.parametrize("steps,total", [(1, 5), (4, 7), (25, 40), (10, 1), (3, 0)])
def test_keep_schedule_is_monotonic_from_total_to_zero(steps: int, total: int) -> None:
    values = [keep_schedule(i, steps, total) for i in range(steps + 1)]
    assert values[0] == total
    assert values[-1] == 0
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert all(0 <= v <= total for v in values)


# ----------------------------------------------------------------------------- 3. demasking


@pytest.mark.parametrize("confidence", ["frame", "cell"])
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_demask_fills_every_cell_once_and_follows_the_schedule(steps: int,
                                                               confidence: str) -> None:
    model = tiny()
    cond = conditioning(model, TEXTS, [6, 2, 0])
    frames = torch.tensor([9, 4, 6])
    history: list[torch.Tensor] = []
    codes = demask(model, cond, frames, steps=steps, temperature=1.0, confidence=confidence,
                   seed=0, history=history)
    mask_id = model.tokens.mask
    width = int(frames.max())
    valid = torch.arange(width)[None, :] < frames[:, None]  # [B, T]
    cells = valid[:, None, :].expand(-1, LEVELS, -1)
    assert codes.shape == (3, LEVELS, width)
    assert ((codes[cells] >= 0) & (codes[cells] < CARD)).all()
    assert (codes[~cells] == 0).all()
    assert 1 <= len(history) <= steps
    assert not (history[-1][cells] == mask_id).any()
    assert torch.equal(history[-1][cells], codes[cells])
    units = frames if confidence == "frame" else frames * LEVELS
    before = torch.full((3, LEVELS, width), mask_id)
    for i, now in enumerate(history, start=1):
        known = (before != mask_id) & cells
        assert torch.equal(now[known], before[known]), f"a kept cell changed at step {i}"
        still = (now == mask_id) & cells
        if confidence == "frame":
            # all levels of a frame fill at the same step
            assert (still.all(dim=1) == still.any(dim=1)).all()
            left = still[:, 0].sum(dim=1)
        else:
            left = still.sum(dim=(1, 2))
        assert left.tolist() == [keep_schedule(i, steps, int(n)) for n in units]
        before = now


def test_demask_cell_confidence_fills_frames_partially() -> None:
    model = tiny()
    cond = conditioning(model, TEXTS[:2], [6, 3])
    history: list[torch.Tensor] = []
    demask(model, cond, torch.tensor([12, 10]), steps=4, confidence="cell", history=history)
    mask_id = model.tokens.mask
    partial = [((h == mask_id).any(dim=1) & ~(h == mask_id).all(dim=1)).any()
               for h in history[:-1]]
    assert any(bool(p) for p in partial), "cell confidence never split a frame's levels"


def test_demask_is_seeded() -> None:
    model = tiny()
    cond = conditioning(model, TEXTS, [6, 2, 0])
    frames = torch.tensor([9, 4, 6])
    a = demask(model, cond, frames, steps=4, temperature=1.0, seed=1)
    b = demask(model, cond, frames, steps=4, temperature=1.0, seed=1)
    c = demask(model, cond, frames, steps=4, temperature=1.0, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ----------------------------------------------------------------------------- 4. duration


def test_token_duration_sums_over_valid_text_tokens() -> None:
    """`duration.kind: tokens`: with a constant per-token count c and a constant rate r, a
    text of n tokens (BOS and EOS included) is planned n x c x r frames, whatever the
    padding its batch gives it."""
    model = tiny(duration={"kind": "tokens"})
    with torch.no_grad():
        last = model.duration.per_token[-1]
        last.weight.zero_()
        last.bias.fill_(2.0)
        model.duration.net[-1].weight.zero_()
        model.duration.net[-1].bias.fill_(math.log(1.5))
    texts = ["ab", "a much longer text"]
    cond = conditioning(model, texts, [5, 3])
    ids, valid = model.frontend.batch(texts)
    tokens = valid.sum(1).float()
    assert tokens[0] < tokens[1] and not valid[0].all()  # the short text is padded
    want = tokens * torch.nn.functional.softplus(torch.tensor(2.0)) * 1.5
    torch.testing.assert_close(model.predict_frames(cond), want, rtol=1e-3, atol=1e-2)
    alone = conditioning(model, texts[:1], [5])
    torch.testing.assert_close(model.predict_frames(alone), want[:1], rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("kind", ["regression", "tokens", "digits"])
def test_nar_separator_sees_text_and_prompt_only(kind: str) -> None:
    model = tiny(duration={"kind": kind})
    cond = conditioning(model, TEXTS[:2], [5, 3])
    ids1, valid1 = target_ids(model, [10, 7], 10, seed=1)
    ids2, valid2 = target_ids(model, [14, 3], 14, seed=2, mask_every=2)
    with torch.no_grad():
        logits1, prefix1 = model.nar_logits(ids1, valid1, cond)
        logits2, prefix2 = model.nar_logits(ids2, valid2, cond)
        assert not torch.allclose(logits1[:, :, :3], logits2[:, :, :3])
        # the prefix (text, prompt, SEP) never sees the target
        torch.testing.assert_close(prefix1, prefix2, atol=1e-5, rtol=1e-5)
        # the duration read there is the prediction from the prefix alone
        torch.testing.assert_close(model.duration.frames(model.duration_out(prefix1, cond)),
                                   model.predict_frames(cond), atol=1e-4, rtol=1e-5)
        sep1 = prefix1[:, -1]
        other_text = conditioning(model, ["hello where", TEXTS[1]], [5, 3])
        sep3 = model.nar_logits(ids1, valid1, other_text)[1][:, -1]
        assert not torch.allclose(sep1[0], sep3[0], atol=1e-4)
        torch.testing.assert_close(sep1[1], sep3[1], atol=1e-5, rtol=1e-5)
        other_prompt = conditioning(model, TEXTS[:2], [5, 3], seed=9)
        sep4 = model.nar_logits(ids1, valid1, other_prompt)[1][:, -1]
        assert not torch.allclose(sep1, sep4, atol=1e-4)
    if kind != "digits":  # (digit argmaxes of a random head often agree)
        assert len(set(model.predict_frames(cond).tolist())) == 2, "predictions should vary"


@pytest.mark.parametrize("kind", ["regression", "tokens"])
@pytest.mark.parametrize("mode", ["ar", "nar"])
def test_duration_loss_reads_the_prefix_prediction(mode: str, kind: str) -> None:
    model = tiny(mode, duration={"kind": kind})
    cond = conditioning(model, TEXTS[:2], [5, 0])
    predicted = model.predict_frames(cond)
    g = torch.Generator().manual_seed(0)
    for lengths in ([12, 7], [5, 16]):
        n = torch.tensor(lengths)
        codes = torch.randint(0, CARD, (2, LEVELS, int(n.max())), generator=g)
        with torch.no_grad():
            if mode == "ar":
                out = model.ar_loss(codes, n, cond)
            else:
                out = model.nar_loss(codes, n, cond, seeds=[1, 2])
        want = ((predicted - n.float()).abs() / n.float()).mean()
        torch.testing.assert_close(out.duration_error, want, atol=1e-5, rtol=1e-5)


def test_ar_steps_do_not_see_later_steps() -> None:
    model = tiny("ar")
    cond = conditioning(model, TEXTS[:2], [5, 0])
    before = model.predict_frames(cond)
    g = torch.Generator().manual_seed(0)
    seq_a = torch.randint(0, CARD, (2, LEVELS, 9), generator=g)
    seq_b = seq_a.clone()
    seq_b[:, :, 5:] = torch.randint(0, CARD, (2, LEVELS, 4), generator=g)
    model.plan(torch.tensor([9, 9]))
    try:
        with torch.no_grad():
            la, lb, short = model(seq_a, cond), model(seq_b, cond), model(seq_a[:, :, :5], cond)
    finally:
        model.plan(None)
    torch.testing.assert_close(la[:, :, :5], lb[:, :, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(la[:, :, :5], short, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(la[:, :, 5:], lb[:, :, 5:], atol=1e-4)
    torch.testing.assert_close(model.predict_frames(cond), before)


@pytest.mark.parametrize("pattern", [{"type": "parallel"}, {"type": "delay"}])
def test_ar_history_masking_hides_whole_steps_at_its_rate(pattern: dict) -> None:
    model = tiny("ar", pattern=pattern, ar_input_mask=0.3)
    lengths = torch.tensor([40, 25, 33])
    codes = torch.randint(0, CARD, (3, LEVELS, 40), generator=torch.Generator().manual_seed(1))
    seq = model.pattern.build(codes, lengths=lengths, ends=True)[:, :, :-1]
    out = model.mask_history(seq, [5, 6, 7])
    hidden = out == model.tokens.mask
    assert torch.equal(out[~hidden], seq[~hidden])  # nothing else changes
    assert not hidden[:, :, 0].any()  # BOS stays
    assert (seq[hidden] < CARD).all()  # only codes are hidden: PAD, EOS, BOS stay
    steps = hidden.any(dim=1)  # a hidden step hides every code of that step
    codes_of = seq < CARD
    assert torch.equal(hidden, steps[:, None, :] & codes_of)
    rate = steps[:, 1:].float().mean().item()
    assert 0.2 < rate < 0.4, rate
    torch.testing.assert_close(model.mask_history(seq, [5, 6, 7]), out)  # seeded
    assert not torch.equal(model.mask_history(seq, [8, 6, 7]), out)
    assert torch.equal(tiny("ar", pattern=pattern).mask_history(seq, [5, 6, 7]), seq)


def test_ar_history_masking_hides_spans_of_its_length() -> None:
    model = tiny("ar", ar_input_mask=0.3, ar_input_mask_span=4)
    lengths = torch.tensor([200, 200])
    codes = torch.randint(0, CARD, (2, LEVELS, 200), generator=torch.Generator().manual_seed(3))
    seq = model.pattern.build(codes, lengths=lengths, ends=True)[:, :, :-1]
    steps = (model.mask_history(seq, [5, 6]) == model.tokens.mask).any(dim=1)
    assert not steps[:, 0].any()
    assert 0.2 < steps[:, 1:].float().mean().item() < 0.4
    for row in steps[:, 1:].tolist():  # runs of 4, clipped only at the ends
        runs, n = [], 0
        for hidden in row + [False]:
            if hidden:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        assert runs and all(r % 4 == 0 for r in runs[1:-1]), runs
        assert max(runs) >= 4


def test_ar_history_masking_changes_training_loss_not_validation() -> None:
    model = tiny("ar", ar_input_mask=0.5)
    plain = tiny("ar")
    cond = conditioning(model, TEXTS, [5, 0, 3])
    lengths = torch.tensor([12, 9, 12])
    codes = torch.randint(0, CARD, (3, LEVELS, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        masked = model.ar_loss(codes, lengths, cond, seeds=[1, 2, 3]).loss
        valid = model.ar_loss(codes, lengths, cond).loss
        reference = plain.ar_loss(codes, lengths, cond, seeds=[1, 2, 3]).loss
    torch.testing.assert_close(valid, reference)  # same weights, true history
    assert not torch.allclose(masked, valid)


def test_duration_head_digits_and_regression() -> None:
    head = DurationHead(DurationConfig(kind="digits", digits=4), dim=8)
    frames = torch.tensor([123, 7])
    digits = head.digits_of(frames)
    assert digits.tolist() == [[0, 1, 2, 3], [0, 0, 0, 7]]
    one_hot = torch.nn.functional.one_hot(digits, 10).float() * 5.0
    assert head.frames(one_hot).tolist() == [123.0, 7.0]
    assert float(head.loss(one_hot * 10, frames)) < 1e-6
    assert head.digits_of(torch.tensor([123456]))[0].tolist() == [9, 9, 9, 9]

    reg = DurationHead(DurationConfig(kind="regression"), dim=8)
    out = torch.tensor([0.5, 3.0, -1.0])
    frames = torch.tensor([4, 20, 1])
    want = (out - torch.log(frames.float())).abs().mean()
    torch.testing.assert_close(reg.loss(out, frames), want)
    torch.testing.assert_close(reg.frames(torch.tensor([math.log(12.0), -3.0])),
                               torch.tensor([12.0, 1.0]))


def test_duration_loss_trains_through_the_separator() -> None:
    model = tiny(duration=DurationConfig(weight=1.0))
    with torch.no_grad():
        model.duration.net[-1].bias.zero_()
    model.train()
    cond = conditioning(model, TEXTS[:2], [5, 2])
    lengths = torch.tensor([30, 12])
    codes = torch.randint(0, CARD, (2, LEVELS, 30), generator=torch.Generator().manual_seed(0))
    seeds = [0, 1]

    # without `duration`, the duration head gets no gradient
    model.nar_loss(codes, lengths, cond, seeds, duration=False).loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.duration.parameters())
    # the duration loss alone reaches the transformer through the separator
    model.zero_grad()
    _, prefix = model.nar_logits(*target_ids(model, [30, 12], 30, seed=0), cond)
    model.duration.loss(model.duration_out(prefix, cond), lengths).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.transformer.parameters())
    assert model.audio_out.head.weight.grad is None or not model.audio_out.head.weight.grad.any()

    def duration_loss() -> float:
        with torch.no_grad():
            return float(model.nar_loss(codes, lengths, cond, seeds).duration_loss)

    start = duration_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        opt.zero_grad()
        # the same masks with and without the duration term: their difference is the
        # weighted duration loss alone
        with_duration = model.nar_loss(codes, lengths, cond, seeds).loss
        without = model.nar_loss(codes, lengths, cond, seeds, duration=False).loss
        (with_duration - without).backward()
        opt.step()
    end = duration_loss()
    assert end < 0.5 * start, (start, end)


# ----------------------------------------------------------------------------- 5. CFG rows


@pytest.mark.parametrize("kind", ["regression", "tokens"])
def test_nar_guidance_rows_equal_separate_passes(kind: str) -> None:
    model = tiny(duration={"kind": kind})
    cond = conditioning(model, TEXTS, [6, 2, 0])
    null = model.null_conditioning(3, like=cond)
    both = Conditioning.concat([cond, null])
    ids, valid = target_ids(model, [9, 4, 6], 9, seed=3)
    with torch.no_grad():
        joint, joint_sep = model.nar_logits(torch.cat([ids, ids]), torch.cat([valid, valid]),
                                            both)
        alone, alone_sep = model.nar_logits(ids, valid, cond)
        empty, empty_sep = model.nar_logits(ids, valid, null)
    cells = valid[:, None, :].expand(-1, LEVELS, -1)
    torch.testing.assert_close(joint[:3][cells], alone[cells], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint[3:][cells], empty[cells], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint_sep[:3, -1], alone_sep[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint_sep[3:, -1], empty_sep[:, -1], atol=1e-5, rtol=1e-5)
    # the duration read from a guided (concatenated, re-padded) batch equals the separate ones
    with torch.no_grad():
        joint_d = model.duration_out(joint_sep, both)
        torch.testing.assert_close(joint_d[:3], model.duration_out(alone_sep, cond),
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(joint_d[3:], model.duration_out(empty_sep, null),
                                   atol=1e-4, rtol=1e-5)
    assert not torch.allclose(alone[cells], empty[cells], atol=1e-3)


def test_ar_guidance_rows_equal_separate_passes() -> None:
    model = tiny("ar")
    cond = conditioning(model, TEXTS, [6, 2, 0])
    null = model.null_conditioning(3, like=cond)
    both = Conditioning.concat([cond, null])
    seq = torch.randint(0, CARD, (3, LEVELS, 7), generator=torch.Generator().manual_seed(4))
    seq[:, :, 0] = model.tokens.bos
    model.plan(torch.tensor([6, 9, 4]))
    try:
        with torch.no_grad():
            joint = model(torch.cat([seq, seq]), both)
            alone = model(seq, cond)
            empty = model(seq, null)
    finally:
        model.plan(None)
    torch.testing.assert_close(joint[:3], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(joint[3:], empty, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, empty, atol=1e-3)


# ----------------------------------------------------------------------------- 6. AR decoding


@pytest.mark.parametrize("eos_bias", [0.0, 4.0])
@pytest.mark.parametrize("pattern", [{"type": "parallel"}, {"type": "delay"}])
def test_ar_cached_decoding_equals_recomputation(pattern: dict, eos_bias: float) -> None:
    model = tiny("ar", pattern=pattern)
    with torch.no_grad():  # a likelier EOS on level 0: some rows end early
        model.audio_out.head.bias.view(LEVELS, model.tokens.n_output)[0, model.tokens.eos] \
            = eos_bias
    cond = conditioning(model, TEXTS, [6, 2, 0])
    traces: list[list[torch.Tensor]] = [[], []]
    model.plan(torch.tensor([8, 5, 11]))
    try:
        cached = generate(model, cond, max_frames=12, temperature=0.0, cfg_scale=2.0,
                          use_cache=True, trace=traces[0])
        full = generate(model, cond, max_frames=12, temperature=0.0, cfg_scale=2.0,
                        use_cache=False, trace=traces[1])
    finally:
        model.plan(None)
    assert torch.equal(cached.lengths, full.lengths)
    assert torch.equal(cached.codes, full.codes)
    assert torch.equal(cached.seq, full.seq)
    assert len(traces[0]) == len(traces[1]) > 1
    for a, b in zip(*traces, strict=True):
        assert a.shape[0] == 6  # conditional and null rows
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert cached.codes.shape[:2] == (3, LEVELS)
    valid = cached.valid
    assert ((cached.codes[valid] >= 0) & (cached.codes[valid] < CARD)).all()
    if eos_bias:
        assert 0 < int((cached.lengths < 12).sum()) < 3, "expected some rows to end early"


def test_ar_speak_stops_rows_without_eos_at_the_guard() -> None:
    model = tiny("ar")
    with torch.no_grad():  # no level ever emits EOS
        bias = model.audio_out.head.bias.view(LEVELS, model.tokens.n_output)
        bias[:, model.tokens.eos] = -1e4
    cond = conditioning(model, TEXTS[:2], [6, 2])
    frames = torch.tensor([4, 7])
    out = speak(model, cond, frames=frames, temperature=0.0, cfg_scale=2.0)
    guard = (frames.float() * model.cfg.max_duration_factor).ceil().long()
    assert out.stopped.tolist() == [True, True]
    assert out.lengths.tolist() == guard.tolist()
    assert out.codes.shape == (2, LEVELS, int(guard.max()))
    for b in range(2):
        n = int(out.lengths[b])
        assert ((out.codes[b, :, :n] >= 0) & (out.codes[b, :, :n] < CARD)).all()
        assert (out.codes[b, :, n:] == 0).all()
    assert model._plan is None, "speak must reset the plan"


def test_ar_speak_keeps_rows_that_end_and_cuts_the_others() -> None:
    model = tiny("ar")
    with torch.no_grad():  # a likelier EOS on level 0: some rows end, others run on
        model.audio_out.head.bias.view(LEVELS, model.tokens.n_output)[0, model.tokens.eos] = 4.0
    cond = conditioning(model, TEXTS, [6, 2, 0])
    frames = torch.tensor([8, 2, 11])
    out = speak(model, cond, frames=frames, temperature=0.0, cfg_scale=2.0)
    guard = (frames.float() * model.cfg.max_duration_factor).ceil().long()
    # the same decoding by hand, with room for the longest guard
    model.plan(frames)
    try:
        ref = generate(model, cond, max_frames=int(guard.max()), temperature=0.0,
                       cfg_scale=2.0)
    finally:
        model.plan(None)
    ended = ref.lengths < guard
    assert 0 < int(ended.sum()) < 3, "expected rows that end and rows that do not"
    assert out.stopped.tolist() == (~ended).tolist()
    assert out.lengths.tolist() == torch.where(ended, ref.lengths, guard).tolist()
    for b in range(3):
        n = int(out.lengths[b])
        assert torch.equal(out.codes[b, :, :n], ref.codes[b, :, :n])
        assert (out.codes[b, :, n:] == 0).all()


def test_nar_speak_uses_the_given_lengths() -> None:
    model = tiny()
    cond = conditioning(model, TEXTS[:2], [6, 2])
    out = speak(model, cond, frames=torch.tensor([5, 8]), steps=3, temperature=0.0)
    assert out.lengths.tolist() == [5, 8]
    assert out.codes.shape == (2, LEVELS, 8)
    assert (out.codes[0, :, 5:] == 0).all()
    assert not out.stopped.any()
    torch.testing.assert_close(out.predicted, model.predict_frames(cond))
    scaled = speak(model, cond, duration_scale=1.5, steps=2, temperature=0.0)
    want = (model.predict_frames(cond) * 1.5).round().clamp(min=1).long()
    assert scaled.lengths.tolist() == want.tolist()
    assert scaled.codes.shape == (2, LEVELS, int(want.max()))


def test_guide() -> None:
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 17, generator=g), torch.randn(4, 17, generator=g)
    torch.testing.assert_close(guide(cond, uncond, 1.0, 0.0), cond)
    torch.testing.assert_close(guide(cond, uncond, 3.0, 0.0), uncond + 3 * (cond - uncond))
    full = guide(cond, uncond, 3.0, 1.0)
    torch.testing.assert_close(full.std(dim=-1), cond.std(dim=-1))
    half = guide(cond, uncond, 3.0, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guide(cond, uncond, 3.0, 0.0))


def test_training_conditioning_drops_text_and_prompt_together() -> None:
    texts = [f"text {i}" for i in range(200)]
    prompt = torch.randint(0, CARD, (200, LEVELS, 4))
    seeds = list(range(1000, 1200))
    for frac in (0.0, 0.3, 1.0):
        model = tiny(uncond_frac=frac)
        cond = model.make_conditioning(texts, prompt, seeds=seeds, train=True)
        null = model.null_conditioning(1)
        null_text = null.text[0][null.text_valid[0]].tolist()
        full = model.make_conditioning(texts, prompt)
        dropped = ~cond.prompt_valid.any(dim=1)
        for b in range(len(texts)):
            # a dropped item reads the null text; a kept one its own text
            source = null_text if dropped[b] else full.text[b][full.text_valid[b]].tolist()
            assert cond.text[b][cond.text_valid[b]].tolist() == source
        assert abs(float(dropped.float().mean()) - frac) < 0.1
        again = model.make_conditioning(texts, prompt, seeds=seeds, train=True)
        assert torch.equal(cond.text, again.text)
        assert torch.equal(cond.prompt_valid, again.prompt_valid)
        # outside training nothing is dropped
        assert model.make_conditioning(texts, prompt).prompt_valid.all()
    with pytest.raises(ValueError, match="seed"):
        tiny(uncond_frac=0.5).make_conditioning(texts, prompt, train=True)


# ----------------------------------------------------------------------------- 7. weights


def test_level_weights() -> None:
    torch.testing.assert_close(level_weights("uniform", 4), torch.full((4,), 0.25))
    torch.testing.assert_close(level_weights("decreasing", 4),
                               torch.tensor([4.0, 3.0, 2.0, 1.0]) / 10)
    torch.testing.assert_close(level_weights([1.0, 1.0, 2.0, 0.0], 4),
                               torch.tensor([0.25, 0.25, 0.5, 0.0]))


@pytest.mark.parametrize("spec,raw", [("decreasing", [3.0, 2.0, 1.0]),
                                      ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
                                      ("uniform", [1.0, 1.0, 1.0])])
def test_token_loss_weights_level_means(spec: object, raw: list[float]) -> None:
    model = tiny(loss_weights=spec)
    vocab, steps = 5, 4
    # level k, step s: target t = (k + s) % V with logit a[k, s], all other logits 0
    a = torch.tensor([[0.2, 1.0, 2.0, 3.0], [4.0, -1.0, 0.5, -0.3], [2.5, 2.5, -2.0, 1.0]])
    target = (torch.arange(LEVELS)[:, None] + torch.arange(steps)[None, :]) % vocab
    logits = torch.zeros(1, LEVELS, steps, vocab)
    logits[0].scatter_(-1, target[..., None], a[..., None])
    target = target[None]
    nll = torch.log(a.exp() + vocab - 1) - a  # [K, S]

    def expected(counted: torch.Tensor) -> tuple[float, list[float]]:
        per_level, weights = [], []
        for k in range(LEVELS):
            cells = counted[0, k]
            if cells.any():
                per_level.append(float(nll[k][cells].mean()))
                weights.append(raw[k])
            else:
                per_level.append(0.0)
                weights.append(0.0)
        total = sum(w * v for w, v in zip(weights, per_level, strict=True)) / sum(weights)
        return total, per_level

    everything = torch.ones(1, LEVELS, steps, dtype=torch.bool)
    some = everything.clone()
    some[0, 0, 1:] = False  # level 0: one cell
    some[0, 2] = False  # level 2: none
    for counted in (everything, some):
        loss, level_loss, acc, count = model.token_loss(logits, target, counted)
        want, want_levels = expected(counted)
        assert float(loss) == pytest.approx(want, rel=1e-5)
        assert level_loss.tolist() == pytest.approx(want_levels, rel=1e-5)
        assert count.tolist() == counted.sum(dim=(0, 2)).float().tolist()
        for k in range(LEVELS):
            cells = counted[0, k]
            if cells.any():
                right = (a[k][cells] > 0).float().mean()
                assert float(acc[k]) == pytest.approx(float(right))


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, -0.5, 1.0],
                                     [0.0, 0.0, 0.0]])
def test_bad_loss_weights_are_rejected(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="loss_weights"):
        TTSConfig(levels=3, loss_weights=weights)


# ----------------------------------------------------------------------------- 8. data

FRAME_RATE = 10.0
META = {"codec": {}, "levels": 4, "codebook_size": CARD, "frame_rate": FRAME_RATE,
        "sample_rate": 8000, "channels": 1}


@pytest.fixture(scope="module")
def tts_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """42 utterances of 0.5-5.9 s: speakers a, b, c, d (two clips, one of 0.6 s), one lone
    clip (speaker 'solo') and three items without a speaker."""
    root = tmp_path_factory.mktemp("tts") / "tokens"
    writer = TokenShardWriter(root, META)
    rng = np.random.default_rng(0)
    for i in range(40):
        n = int(rng.integers(5, 60))
        speaker: str | None = "abc"[i % 3]
        if i in (5, 17, 29):
            speaker = None
        elif i == 11:
            speaker = "solo"
        writer.add(f"s{i}.wav", [rng.integers(0, CARD, (4, n))], [f"item{i}"],
                   text=f"sentence number {i}", speaker=speaker)
    # speaker d: a long clip whose only other clip is shorter than any prompt
    for i, n in ((40, 45), (41, 6)):
        writer.add(f"s{i}.wav", [rng.integers(0, CARD, (4, n))], [f"item{i}"],
                   text=f"sentence number {i}", speaker="d")
    writer.flush()
    return root


def _epoch(loader: object, count: int) -> list[dict]:
    return [next(loader) for _ in range(count)]  # type: ignore[call-overload]


def _window_source(index: TokenIndex, prompt: np.ndarray) -> list[int]:
    """Positions of items holding `prompt` [K, P] as a contiguous window."""
    found = []
    p = prompt.shape[1]
    for j in range(len(index.items)):
        codes = np.asarray(index.codes(j))[: prompt.shape[0]]
        for o in range(codes.shape[1] - p + 1):
            if np.array_equal(codes[:, o : o + p], prompt):
                found.append(j)
                break
    return found


def test_tts_batches_are_bucketed_unsorted_with_prompts_of_the_same_voice(
        tts_tokens: Path) -> None:
    index = TokenIndex.load(tts_tokens)
    cfg = TTSDataConfig(path=str(tts_tokens), valid_count=2, max_batch_size=4,
                        max_batch_seconds=16.0, bucket_seconds=1.0)
    loader = build_tts_loader(cfg, seed=0, levels=LEVELS, index=index)
    count = len(loader.sampler.epoch_batches(0))
    batches = _epoch(loader, count)
    train, held = tts_split(index, cfg)
    by_id = {it.id: i for i, it in enumerate(index.items)}

    seen: list[int] = []
    means: list[float] = []
    buckets: list[float] = []
    lo, hi = cfg.prompt_seconds
    for batch in batches:
        assert batch["codes"].shape[1] == LEVELS
        durations = batch["lengths"].double() / FRAME_RATE
        means.append(float(durations.mean()))
        bucket = set((durations / cfg.bucket_seconds).floor().tolist())
        assert len(bucket) == 1
        buckets.append(bucket.pop())
        assert len(durations) <= 4
        assert len(durations) * float(durations.max()) <= 16.0 or len(durations) == 1
        for b, item_id in enumerate(batch["id"]):
            position = by_id[item_id]
            seen.append(position)
            item = index.items[position]
            n = int(batch["lengths"][b])
            # the whole utterance, its text and speaker
            assert n == item.frames
            assert np.array_equal(batch["codes"][b, :, :n].numpy(),
                                  np.asarray(index.codes(position))[:LEVELS])
            assert batch["text"][b] == item.text and batch["speaker"][b] == item.speaker
            valid = batch["prompt_valid"][b]
            p = int(valid.sum())
            # left-padded: the valid prompt frames are a suffix
            assert bool(valid[valid.shape[0] - p:].all())
            others = [j for j in train if j != position and item.speaker
                      and index.items[j].speaker == item.speaker]
            if not others:
                assert p == 0, f"{item_id} (speaker {item.speaker}) got a prompt"
                continue
            assert p > 0
            prompt = batch["prompt"][b, :, valid.shape[0] - p:].numpy()
            sources = _window_source(index, prompt)
            assert sources, f"the prompt of {item_id} is no window of any item"
            assert all(index.items[j].speaker == item.speaker for j in sources)
            assert all(j != position for j in sources), "prompt from the item itself"
            assert all(j in train for j in sources), "prompt from a held-out item"
            source_frames = max(index.items[j].frames for j in sources)
            assert (round(lo * FRAME_RATE) <= p <= round(hi * FRAME_RATE)
                    or p == source_frames < round(lo * FRAME_RATE)), (p, source_frames)
    # the long clip of speaker d is prompted with all of its short other clip
    row = [(batch, b) for batch in batches for b, i in enumerate(batch["id"]) if i == "item40"]
    assert len(row) == 1 and int(row[0][0]["prompt_valid"][row[0][1]].sum()) == 6
    # one epoch covers each training item once; held-out items never appear
    assert sorted(seen) == sorted(train) and not set(seen) & set(held)
    # not sorted by duration in either direction (not even bucket by bucket)
    assert means != sorted(means) and means != sorted(means, reverse=True)
    assert buckets != sorted(buckets) and buckets != sorted(buckets, reverse=True)

    again = build_tts_loader(cfg, seed=0, levels=LEVELS, index=TokenIndex.load(tts_tokens))
    for x, y in zip(batches, _epoch(again, count), strict=True):
        assert x["id"] == y["id"]
        assert torch.equal(x["prompt"], y["prompt"])
        assert torch.equal(x["prompt_valid"], y["prompt_valid"])
    other = build_tts_loader(cfg, seed=1, levels=LEVELS, index=TokenIndex.load(tts_tokens))
    assert [x["id"] for x in batches] != [x["id"] for x in _epoch(other, count)]


# ----------------------------------------------------------------------------- 9. recipe


PHASES = [{"name": "one", "steps": 10, "levels": "one"}, {"name": "all", "levels": "all"}]


def test_level_phases() -> None:
    recipe = recipe_from_dict({"task": "tts", "level_phases": PHASES})
    assert [recipe.level_mode(s) for s in (0, 5, 9, 10, 1000)] == \
        ["one", "one", "one", "all", "all"]
    task = TTSTask(recipe, TaskContext())
    seeds = list(range(40))
    mask = task.level_mask(seeds, "one")
    assert mask.shape == (40, 4)
    assert mask.sum(dim=1).tolist() == [1] * 40
    assert torch.equal(mask, task.level_mask(seeds, "one"))
    assert set(mask.float().argmax(1).tolist()) == {0, 1, 2, 3}
    assert task.level_mask(seeds, "all") is None


class _NoUpdate:
    def update(self, name: str, loss: torch.Tensor) -> None:
        assert name == "tts" and torch.isfinite(loss)


def test_a_level_phase_lasts_its_steps_in_training(tts_tokens: Path) -> None:
    recipe = recipe_from_dict({
        "task": "tts", "level_phases": PHASES, "tokens": {"path": str(tts_tokens)},
        "model": {"levels": LEVELS, "card": CARD, "uncond_frac": 0.0,
                  "transformer": {"dim": 32, "layers": 1, "heads": 2, "causal": False,
                                  "max_len": 256}}})
    task = TTSTask(recipe, TaskContext())
    task.networks()
    g = torch.Generator().manual_seed(0)
    batch = {"codes": torch.randint(0, CARD, (1, LEVELS, 8), generator=g),
             "lengths": torch.tensor([8]), "text": ["some words"], "seed": [123],
             "prompt": torch.randint(0, CARD, (1, LEVELS, 4), generator=g),
             "prompt_valid": torch.ones(1, 4, dtype=torch.bool)}
    one_level = []
    for step in range(1, 13):  # the engine's step numbers
        logs = task.train_step(batch, step, _NoUpdate())
        counted = [float(logs[f"loss/level_{k}"]) > 0 for k in range(LEVELS)]
        one_level.append(sum(counted) == 1)
    # phase 'one' lasts its 10 steps, then every level counts
    assert one_level == [True] * 10 + [False] * 2


@pytest.mark.parametrize("raw,message", [
    ({"level_phases": [{"name": "one", "levels": "one"}, {"name": "all"}]}, "needs steps"),
    ({"model": {"mode": "ar", "transformer": {"causal": False}}}, "causal: true"),
    ({"model": {"mode": "nar", "transformer": {"causal": True}}}, "causal: false"),
    ({"data": {"batch_size": 4}}, "no data: section"),
])
def test_bad_tts_recipes_are_rejected(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"task": "tts", **raw})


# ----------------------------------------------------------------------------- 10. LJSpeech


def test_ljspeech_speaker_column(tmp_path: Path) -> None:
    folder = tmp_path / "lj"
    (folder / "wavs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["a1|First raw|First normalized|alice", "b1|Second raw|Second normalized|bob",
            "a2|Third raw|Third normalized| alice ", "n1|Fourth raw|Fourth normalized",
            "e1|Fifth raw||"]
    for row in rows:
        name = row.split("|")[0]
        noise = (0.1 * rng.standard_normal(8000)).astype(np.float32)
        sf.write(folder / "wavs" / f"{name}.wav", noise, 16000, "PCM_16")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    index = scan(folder, cache=False)
    assert not index.skipped
    items = {Path(it.path).stem: it for it in index.items}
    assert set(items) == {"a1", "b1", "a2", "n1", "e1"}
    assert {k: it.speaker for k, it in items.items()} == \
        {"a1": "alice", "b1": "bob", "a2": "alice", "n1": None, "e1": None}
    assert items["a1"].text == "First normalized"
    assert items["n1"].text == "Fourth normalized"
    assert items["e1"].text == "Fifth raw"
    assert items["a1"].sample_rate == 16000 and items["a1"].duration == pytest.approx(0.5)
    # the metadata file itself reads the same way
    direct = {Path(it.path).stem: it.speaker for it in scan(folder / "metadata.csv",
                                                            cache=False).items}
    assert direct == {k: it.speaker for k, it in items.items()}


def test_digit_heads_factorise_code_logits() -> None:
    from soundry.models.tts import AudioDecoder, digit_matrix

    m = digit_matrix([4, 3])  # 12 codes, code = d0 + 4 * d1
    assert m.shape == (7, 12)
    for code in range(12):
        assert m[:, code].nonzero().flatten().tolist() == [code % 4, 4 + code // 4]
    torch.manual_seed(0)
    dec = AudioDecoder(levels=2, n_output=13, dim=8, hidden=16, shared=False, card=12,
                       digits=[4, 3])
    hidden = torch.randn(1, 5, 8)
    logits = dec(hidden)  # [1, 2, 5, 13]: 12 codes and EOS
    assert logits.shape == (1, 2, 5, 13)
    raw = dec.head(hidden + dec.mlp(dec.norm(hidden))).view(1, 5, 2, 8).transpose(1, 2)
    code = 7  # digits (3, 1)
    torch.testing.assert_close(logits[..., code], raw[..., 3] + raw[..., 4 + 1])
    torch.testing.assert_close(logits[..., 12], raw[..., 7])  # EOS keeps its own logit
    # the code distribution is the product of the digit distributions
    p = torch.softmax(logits[0, 0, 0, :12], -1)
    p0, p1 = torch.softmax(raw[0, 0, 0, :4], -1), torch.softmax(raw[0, 0, 0, 4:7], -1)
    torch.testing.assert_close(p[code], p0[3] * p1[1])
    with pytest.raises(ValueError, match="code_digits"):
        TTSConfig(levels=2, card=16, code_digits=[4, 3])


def test_text_stretch_reads_the_text_at_the_targets_fraction() -> None:
    from soundry.models.tts import stretch_text

    text = torch.arange(5, dtype=torch.float32)[None, :, None].repeat(2, 1, 1)
    valid = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    frac = ((torch.arange(6) + 0.5) / 6)[None].repeat(2, 1)
    got = stretch_text(text, valid, frac)[..., 0]
    assert got[0].tolist() == [2, 2, 3, 3, 4, 4]  # 3 valid tokens over 6 frames
    assert got[1].tolist() == [0, 1, 2, 2, 3, 4]
    assert stretch_text(text, valid, torch.full((2, 1), 1.3))[..., 0].tolist() == [[4], [4]]


@pytest.mark.parametrize("mode", ["ar", "nar"])
def test_text_stretch_keeps_cached_decoding_and_prefix_independence(mode: str) -> None:
    torch.manual_seed(0)
    model = TTSModel(TTSConfig(mode=mode, levels=3, card=16, text_stretch=True,
                               transformer=TransformerConfig(dim=32, layers=2, heads=2,
                                                             causal=mode == "ar",
                                                             max_len=256))).eval()
    prompt = torch.randint(0, 16, (2, 3, 5))
    cond = model.make_conditioning(["hello", "hi there"], prompt)
    if mode == "ar":
        model.plan(torch.tensor([6, 9]))
        a = generate(model, cond, max_frames=10, temperature=0.0, cfg_scale=2.0)
        b = generate(model, cond, max_frames=10, temperature=0.0, cfg_scale=2.0,
                     use_cache=False)
        model.plan(None)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.lengths, b.lengths)
    else:
        ids = torch.randint(0, 16, (2, 3, 7))
        valid = torch.ones(2, 7, dtype=torch.bool)
        logits, sep = model.nar_logits(ids, valid, cond)
        other = model.make_conditioning(["goodbye", "hi there"], prompt)
        logits2, _ = model.nar_logits(ids, valid, other)
        # the stretched text reaches the target: a different text changes row 0 only
        assert not torch.allclose(logits[0], logits2[0])
        torch.testing.assert_close(logits[1], logits2[1])
