"""Generation: KV cache vs recomputation, batched CFG rows, EOS handling, samplers."""

from __future__ import annotations

import pytest
import torch

from soundry.generate.sampling import generate, sample_next
from soundry.models.lm import Conditioning, TokenLM, TokenLMConfig

CARD = 16


def make(pattern: dict | None = None, seed: int = 0) -> TokenLM:
    torch.manual_seed(seed)
    cfg = TokenLMConfig(
        levels=3,
        card=CARD,
        pattern=pattern or {"type": "delay"},
        transformer={"dim": 32, "layers": 2, "heads": 4, "max_len": 160},
    )
    model = TokenLM(cfg).eval()
    with torch.no_grad():  # larger logits: varied, confident predictions
        model.head.weight.mul_(40)
    return model


def conditioning(model: TokenLM) -> Conditioning:
    return model.make_conditioning(texts=["kick drum", "a slow string section"])


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flatten", "valle"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_matches_full_recomputation(pattern, temperature):
    model = make({"type": pattern})
    kwargs = dict(max_frames=12, temperature=temperature, top_k=8, seed=3)
    cached = generate(model, conditioning(model), **kwargs)
    full = generate(model, conditioning(model), use_cache=False, **kwargs)
    assert torch.equal(cached.seq, full.seq)
    assert torch.equal(cached.lengths, full.lengths)


def test_batched_cfg_rows_equal_separate_passes():
    model = make()
    cond = conditioning(model)
    trace: list[torch.Tensor] = []
    out = generate(model, cond, max_frames=10, cfg_scale=3.0, top_k=8, seed=1, trace=trace)
    rows = torch.stack(trace, dim=2)  # [2B, K, steps, V]: logits that predicted steps 1..
    steps = rows.shape[2]
    with torch.no_grad():
        separate_cond = model(out.seq[:, :, :steps], cond)
        separate_null = model(out.seq[:, :, :steps], model.null_conditioning(2))
    torch.testing.assert_close(rows[:2], separate_cond, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rows[2:], separate_null, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(separate_cond, separate_null)


def test_guidance_changes_the_output():
    model = make()
    plain = generate(model, conditioning(model), max_frames=10, temperature=0.0)
    guided = generate(model, conditioning(model), max_frames=10, temperature=0.0, cfg_scale=4.0)
    assert not torch.equal(plain.seq, guided.seq)


def test_batched_prompts_equal_separate_generation():
    model = make()
    both = generate(model, conditioning(model), max_frames=10, temperature=0.0)
    for i, text in enumerate(["kick drum", "a slow string section"]):
        alone = generate(model, model.make_conditioning(texts=[text]), max_frames=10,
                         temperature=0.0)
        n = alone.seq.shape[2]
        assert torch.equal(both.seq[i, :, :n], alone.seq[0])
        assert both.lengths[i] == alone.lengths[0]


def force_eos_at(model: TokenLM, frames: list[int]) -> None:
    """Make level 0 emit EOS from the logits of step `frames[b]` of row b (never before);
    with level 0 at step t + 1 (delay 0), that ends row b after `frames[b]` frames."""
    decode, prefill = model.decode, model.prefill
    count = {"step": 0}

    def bias(logits: torch.Tensor) -> torch.Tensor:
        step = count["step"]  # logits predict step `step + 1`, i.e. level-0 frame `step`
        count["step"] += 1
        logits = logits.clone()
        logits[:, 0, model.tokens.eos] = -1e4
        for b, n in enumerate(frames):
            if step == n:
                logits[b, 0, model.tokens.eos] = 1e4
        return logits

    model.prefill = lambda *a, **k: bias(prefill(*a, **k))  # type: ignore[method-assign]
    model.decode = lambda *a, **k: bias(decode(*a, **k))  # type: ignore[method-assign]


def test_generation_stops_at_eos_and_levels_finish_at_their_offsets():
    model = make({"type": "delay", "delays": [0, 1, 3]})
    force_eos_at(model, [4, 7])
    out = generate(model, conditioning(model), max_frames=40, temperature=1.0, top_k=8)
    tok = model.tokens
    assert out.lengths.tolist() == [4, 7]
    # Ends when the longest item's last level ends: 1 + 7 + 3 predicted steps after BOS.
    assert out.seq.shape[2] == 1 + 7 + 3 + 1 and out.steps == 1 + 7 + 3
    for b, n in enumerate([4, 7]):
        for k, delay in enumerate([0, 1, 3]):
            row = out.seq[b, k]
            eos_at = 1 + n + delay
            assert row[eos_at] == tok.eos
            assert (row[1 + delay : eos_at] < tok.card).all(), "audio codes up to the end"
            assert (row[eos_at + 1 :] == tok.pad).all()
        assert out.valid[b, :, :n].all() and not out.valid[b, :, n:].any()


def test_immediate_eos_gives_empty_item():
    model = make()
    force_eos_at(model, [0, 0])
    out = generate(model, conditioning(model), max_frames=20)
    assert out.lengths.tolist() == [0, 0]
    assert out.codes.shape[2] == 0


def test_max_frames_ends_every_item():
    model = make()
    force_eos_at(model, [100, 100])  # never chooses to end
    out = generate(model, None, batch=2, max_frames=6, seed=5)
    assert out.lengths.tolist() == [6, 6]
    assert out.valid.all()
    assert (out.seq[:, 0, 7] == model.tokens.eos).all()
    model = make()
    out = generate(model, None, batch=2, max_frames=6, seed=5)
    again = generate(model, None, batch=2, max_frames=6, seed=5)
    other = generate(model, None, batch=2, max_frames=6, seed=6)
    assert torch.equal(out.seq, again.seq) and not torch.equal(out.seq, other.seq)


def test_sample_next():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50)
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_k=1, generator=gen), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6, generator=gen), logits.argmax(-1))
    top5 = logits.topk(5, dim=-1).indices
    for _ in range(5):
        draw = sample_next(logits, 2.0, top_k=5, generator=gen)
        assert (top5 == draw[:, None]).any(-1).all()
    # top-p: ids outside the nucleus are never drawn.
    peaked = torch.tensor([[5.0, 4.0, -5.0, -5.0, -5.0]]).expand(500, -1)
    draws = sample_next(peaked, 1.0, top_p=0.9, generator=gen)
    assert set(draws.tolist()) == {0, 1}
    a = sample_next(logits, 1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_audio_prompt_generation_matches_recomputation():
    model = make()
    prompt = torch.randint(0, CARD, (2, 3, 5))
    cond = model.make_conditioning(texts=["a", "bb"], prompt=prompt)
    cached = generate(model, cond, max_frames=8, top_k=8, seed=2, cfg_scale=2.0)
    full = generate(model, cond, max_frames=8, top_k=8, seed=2, cfg_scale=2.0, use_cache=False)
    assert torch.equal(cached.seq, full.seq)


@pytest.mark.parametrize("pattern", ["delay", "parallel", "flatten", "valle"])
def test_generated_sequences_are_valid_layouts(pattern):
    """Whatever the pattern, each item's sequence is exactly the layout of its own codes."""
    model = make({"type": pattern})
    # The logits of step s - 1 predict step s, where level 0 holds frame n's EOS.
    force_eos_at(model, [model.pattern.eos_step(n) - 1 for n in (3, 5)])
    out = generate(model, conditioning(model), max_frames=9, top_k=8, seed=4)
    assert out.lengths.tolist() == [3, 5]
    for b, n in enumerate([3, 5]):
        layout = model.pattern.build(out.codes[b : b + 1, :, :n])[0]
        assert torch.equal(out.seq[b, :, : layout.shape[1]], layout)
        assert (out.seq[b, :, layout.shape[1] :] == model.tokens.pad).all()


def test_generation_restores_the_training_mode():
    model = make().train()
    generate(model, None, max_frames=3)
    assert model.training


def test_min_frames_blocks_an_early_end():
    model = make()
    force_eos_at(model, [2, 2])
    out = generate(model, None, batch=2, max_frames=7, min_frames=5, seed=1)
    assert out.lengths.tolist() == [7, 7]
    model = make()
    force_eos_at(model, [6, 6])
    out = generate(model, None, batch=2, max_frames=9, min_frames=5, seed=1)
    assert out.lengths.tolist() == [6, 6]


@pytest.mark.parametrize(("out_features", "in_features", "rows"),
                         [(48, 32, 1), (512, 1365, 1), (512, 1365, 7), (100, 85, 300)])
def test_int8_linear_is_within_its_quantisation_error(out_features, in_features, rows):
    """Weights within half a step (max|w| / 254 per row) of the float ones; outputs within
    the error of int8 weights and bf16 activations. K = 1365 with several rows is the shape
    that crashes the raw CPU kernel unless K is padded."""
    from soundry.nn.quant import Int8Linear

    torch.manual_seed(0)
    w = torch.randn(out_features, in_features) * 0.02
    x = torch.randn(rows, in_features)
    q = Int8Linear(w)
    assert q.qweight.dtype == torch.int8
    step = w.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((q.weight - w).abs() <= step / 2 * (1 + 1e-5)).all())
    y, ref = q(x), x @ w.T
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert float((y - ref).abs().max() / ref.std()) < 0.06
    assert float((y - ref).abs().mean() / ref.std()) < 0.01


def test_int8_logits_follow_float32_and_decoding_runs():
    """On the float32 model's own generated sequence, the int8 model's logits lie within 10%
    of the logits' spread of float32's (1% on average) and pick the same greedy token at
    almost every position; int8 decoding runs the whole length; int8 is for inference."""
    import copy

    model = make()
    cond = conditioning(model)
    ref = generate(model, cond, max_frames=30, top_k=1, seed=0, min_frames=30)
    quant = copy.deepcopy(model).quantize_int8()
    assert sum(isinstance(m, torch.nn.Linear) for m in quant.modules()) == 0
    with torch.no_grad():
        a, b = model(ref.seq, cond), quant(ref.seq, cond)
    err = (a - b).abs() / a.std()
    assert float(err.max()) < 0.1 and float(err.mean()) < 0.01
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) > 0.97
    out = generate(quant, cond, max_frames=30, top_k=1, seed=0, min_frames=30)
    assert out.codes.shape == ref.codes.shape and bool((out.lengths == 30).all())
    with pytest.raises(ValueError, match="inference"):
        make().train().quantize_int8()


def test_compiled_decoding_step_follows_the_eager_one(monkeypatch, tmp_path):
    """`compile_decode`: the compiled step (dynamic in the cache length) samples what the
    eager step samples; without a C++ compiler it stays eager and says why."""
    import copy
    import shutil

    # kernels of this test alone: inductor's shared cache does not key on
    # ATEN_CPU_CAPABILITY, so kernels built under another CPU setting would be reused
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    model = make()
    cond = conditioning(model)
    ref = generate(model, cond, max_frames=12, top_k=1, seed=0, min_frames=12)
    compiled = copy.deepcopy(model)
    assert compiled.compile_decode() is None
    out = generate(compiled, cond, max_frames=12, top_k=1, seed=0, min_frames=12)
    assert torch.equal(out.seq, ref.seq)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++" in make().compile_decode()
