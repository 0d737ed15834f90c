"""TokenLM: causal masking, what counts in the loss, conditioning, prefixes."""

from __future__ import annotations

import pytest
import torch

from soundry.config import validate
from soundry.errors import ConfigError
from soundry.models.lm import ByteTokenizer, Conditioning, TokenLM, TokenLMConfig, condition_text

CARD = 16


def make(seed: int = 0, **overrides) -> TokenLM:
    torch.manual_seed(seed)
    cfg = {
        "levels": 3,
        "card": CARD,
        "transformer": {"dim": 32, "layers": 2, "heads": 4, "max_len": 128},
    }
    cfg.update(overrides)
    return TokenLM(TokenLMConfig.model_validate(cfg)).eval()


def test_future_steps_do_not_change_past_logits():
    model = make()
    cond = model.make_conditioning(texts=["rain", "a much longer description"])
    seq = model.pattern.build(torch.randint(0, CARD, (2, 3, 8)))
    logits = model(seq, cond)
    changed = seq.clone()
    changed[:, :, 6:] = torch.randint(0, CARD, changed[:, :, 6:].shape)
    logits2 = model(changed, cond)
    torch.testing.assert_close(logits[:, :, :6], logits2[:, :, :6])
    assert not torch.allclose(logits[:, :, 6:], logits2[:, :, 6:])


def test_only_audio_and_eos_targets_count():
    """The loss has a gradient at exactly the cells whose target is an audio code or EOS."""
    model = make()
    codes = torch.randint(0, CARD, (2, 3, 6))
    seq = model.pattern.build(codes, lengths=torch.tensor([6, 3]))
    target = seq[:, :, 1:]
    tok = model.tokens
    logits = torch.randn(2, 3, target.shape[2], tok.n_output, requires_grad=True)
    out = model.loss_from_logits(logits, target)
    out.loss.backward()
    has_grad = logits.grad.abs().sum(-1) > 0
    expected = target < tok.card + 1  # audio codes and EOS
    assert torch.equal(has_grad, expected)
    assert (target == tok.eos).any() and (target == tok.pad).any()
    assert has_grad[target == tok.eos].all(), "EOS must be trained"
    assert not has_grad[target == tok.pad].any(), "PAD must never count"
    assert torch.equal(out.level_count, expected.sum(dim=(0, 2)).float())


def test_level_loss_weights():
    model = make(loss_weights=[1.0, 0.0, 0.0])
    seq = model.pattern.build(torch.randint(0, CARD, (2, 3, 5)))
    out = model.loss(seq)
    torch.testing.assert_close(out.loss, out.level_loss[0])
    equal = make(loss_weights=None).loss(seq)
    torch.testing.assert_close(equal.loss, equal.level_loss.mean())
    assert set(out.metrics()) >= {"loss", "loss/level_2", "accuracy/level_0", "entropy/level_1"}


def test_bad_loss_weights_are_config_errors():
    with pytest.raises(ConfigError, match="loss_weights"):
        validate(TokenLMConfig, {"levels": 3, "loss_weights": [1.0, 1.0]})


def test_conditioning_dropout_rate_is_as_set():
    model = make(uncond_frac=0.3)
    n = 4000
    cond = model.make_conditioning(texts=["x"] * n, seeds=list(range(n)), train=True)
    null = cond.text_valid.sum(1) == 2  # [BOS, EOS]: the empty text
    assert abs(null.float().mean().item() - 0.3) < 0.03
    again = model.make_conditioning(texts=["x"] * n, seeds=list(range(n)), train=True)
    assert torch.equal(cond.text, again.text), "choices depend only on the item seeds"
    never = make(uncond_frac=0.0).make_conditioning(texts=["x"] * 200, seeds=list(range(200)),
                                                    train=True)
    assert (never.text_valid.sum(1) == 3).all()
    evaluation = model.make_conditioning(texts=["x"] * 200)  # no dropout outside training
    assert (evaluation.text_valid.sum(1) == 3).all()


def test_tag_shuffling():
    model = make()
    tags = [["drums", "bass", "piano", "voice", "synth"]] * 50
    cond = model.make_conditioning(tags=tags, seeds=list(range(50)), train=True)
    rows = zip(cond.text, cond.text_valid, strict=True)
    decoded = {bytes(r[v].tolist()[1:-1]).decode() for r, v in rows}
    assert len(decoded) > 10
    assert all(sorted(d.split(", ")) == sorted(tags[0]) for d in decoded)
    fixed = model.make_conditioning(tags=tags[:2])
    assert torch.equal(fixed.text[0], fixed.text[1])
    assert condition_text("hello", ["a", "b"]) == "a, b | hello"


def test_byte_tokenizer():
    tok = ByteTokenizer(max_bytes=4)
    ids, valid = tok.batch(["héllo", ""])
    assert ids.shape == (2, 6)
    assert ids[0].tolist() == [tok.BOS, *"héllo".encode()[:4], tok.EOS]
    assert valid[1].tolist() == [False] * 4 + [True, True]
    assert ids[1, :4].eq(tok.PAD).all()


def test_row_is_independent_of_batch_padding():
    model = make()
    seq = model.pattern.build(torch.randint(0, CARD, (1, 3, 5)))
    alone = model(seq, model.make_conditioning(texts=["hi"]))
    both = model(seq.expand(2, -1, -1), model.make_conditioning(texts=["hi", "long text here"]))
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)


def test_audio_prompt_prefix_changes_predictions():
    model = make()
    seq = model.pattern.build(torch.randint(0, CARD, (1, 3, 4)))
    prompt = torch.randint(0, CARD, (1, 3, 5))
    with_prompt = model(seq, model.make_conditioning(texts=["a"], prompt=prompt))
    other = model(seq, model.make_conditioning(texts=["a"], prompt=(prompt + 1) % CARD))
    without = model(seq, model.make_conditioning(texts=["a"]))
    assert with_prompt.shape == without.shape == (1, 3, seq.shape[2], CARD + 1)
    assert not torch.allclose(with_prompt, other)
    # Concatenating a prompted and an unprompted batch keeps each row's predictions.
    mixed = Conditioning.concat(
        [model.make_conditioning(texts=["a"], prompt=prompt), model.make_conditioning(texts=["a"])]
    )
    both = model(seq.expand(2, -1, -1), mixed)
    torch.testing.assert_close(both[0], with_prompt[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], without[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"shared_head": True},
        {"level_combine": "sum"},
        {"pattern": {"type": "flatten"}},
        {"pattern": {"type": "valle"}},
        {"transformer": {"dim": 32, "layers": 1, "heads": 2, "causal": False}},
    ],
)
def test_variants_train(overrides):
    model = make(**overrides).train()
    seq = model.pattern.build(torch.randint(0, CARD, (2, 3, 4)))
    out = model.loss(seq, model.make_conditioning(texts=["a", "b"]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.audio_embed.weight.grad is not None and model.head.weight.grad is not None


def test_learned_level_weights_sum_to_one():
    model = make()
    with torch.no_grad():
        model.level_logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
    w = model.level_weights()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    assert w[0] > w[1] > w[2]


@pytest.mark.parametrize("name", ["tiny", "music-delay"])
def test_recipes_validate(name):
    from pathlib import Path

    from soundry.train.recipes import load_recipe

    path = Path(__file__).resolve().parents[1] / "recipes" / "lm" / f"{name}.yaml"
    recipe = load_recipe(path)
    assert recipe.task == "lm" and recipe.model.pattern.type == "delay"
    assert recipe.model.uncond_frac > 0, "tag-conditioned recipes train for guidance"
    if name == "tiny":
        model = TokenLM(recipe.model)
        assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_lm_recipe_refuses_bidirectional_next_step_training():
    from soundry.train.recipes import recipe_from_dict

    with pytest.raises(ConfigError, match="causal"):
        recipe_from_dict({"task": "lm", "model": {"transformer": {"causal": False}}})


def test_coverage_counts_distinct_valid_codes():
    from soundry.train.tasks.lm import coverage

    codes = torch.tensor([[[0, 1, 1, 3], [2, 2, 2, 2]]])  # [B=1, K=2, T=4]
    assert coverage(codes, card=4) == [0.75, 0.25]
    valid = torch.tensor([[[True, True, False, False], [True] * 4]])
    assert coverage(codes, card=4, valid=valid) == [0.5, 0.25]
