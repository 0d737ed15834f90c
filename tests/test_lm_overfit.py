"""Overfit sanity check, end to end: tokens -> `--overfit 4` training on the engine ->
export -> generation. Four items with distinct tags; after training, the model given tag i
reproduces item i exactly at temperature 0 and stops at its end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from soundry.audio.io import audio_info
from soundry.cli import main
from soundry.data.tokens import TokenShardWriter
from soundry.generate.sampling import generate
from soundry.models.export import load_export
from soundry.train.engine import run_training
from soundry.train.export import export_run
from soundry.train.recipes import recipe_from_dict

LENGTHS = [10, 7, 12, 9]
SR, HOP = 8000, 8


@pytest.fixture()
def one_thread():
    # Tiny models on a shared 2-core machine: a second thread only adds scheduling waits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_codec(path):
    from soundry.config import validate
    from soundry.models.codec import CodecConfig, build_codec
    from soundry.models.export import export_codec

    cfg = validate(CodecConfig, {
        "sample_rate": SR, "channels": 1, "encoder_dim": 4, "strides": [2, 4],
        "latent_dim": 8, "decoder_dim": 8, "dilations": [1],
        "quantizer": {"type": "rvq", "n_codebooks": 2, "codebook_size": 16, "codebook_dim": 4},
    })
    torch.manual_seed(0)
    return export_codec(build_codec(cfg), path)


@pytest.mark.slow
def test_overfit_four_items_then_reproduce_each(tmp_path, one_thread):
    codec = tiny_codec(tmp_path / "codec")
    rng = np.random.default_rng(0)
    meta = {"codec": {"type": "soundry", "path": str(codec)}, "levels": 2,
            "codebook_size": 16, "frame_rate": SR / HOP, "sample_rate": SR, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    items = []
    for i, n in enumerate(LENGTHS):
        codes = rng.integers(0, 16, (2, n))
        items.append(codes)
        writer.add(f"item{i}.wav", [codes], [f"item{i}"], tags=[f"style{i}"])
    writer.flush()

    recipe = recipe_from_dict({
        "task": "lm",
        "model": {"levels": 2, "card": 16, "pattern": {"type": "delay"},
                  "transformer": {"dim": 64, "layers": 2, "heads": 4, "max_len": 64}},
        "tokens": {"path": str(tmp_path / "tokens"), "max_batch_size": 4},
        "optim": {"lm": {"type": "adamw", "lr": 3e-3, "betas": [0.9, 0.95],
                         "schedule": {"type": "warmup", "warmup_steps": 20}}},
        "valid": {"decode": True, "demo_count": 1, "temperatures": [0.0], "demo_seconds": 0.02},
        "train": {"max_steps": 250, "log_every": 50, "valid_every": 250,
                  "checkpoint_every": 250, "overfit": 4},
    })
    summary = run_training(recipe, tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["valid"]["valid/loss"] < 0.01  # teacher-forced, the four training items
    assert summary["valid"]["valid/accuracy/level_0"] == 1.0
    assert list((tmp_path / "run" / "valid").rglob("gen_t0_00.wav")), "demo decoded to audio"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert train[-1]["loss/lm"] < 0.05, "training loss near zero"
    assert {"loss/level_1", "acc/level_0", "entropy/level_1"} <= set(train[-1])
    valid = [x for x in lines if x["kind"] == "valid"][-1]
    assert {"valid/data_coverage/level_0", "valid/gen_coverage_t0/level_1",
            "valid/gen_entropy_t0"} <= set(valid)

    export_run(tmp_path / "run", tmp_path / "export")
    model = load_export(tmp_path / "export")
    cond = model.make_conditioning(tags=[[f"style{i}"] for i in range(4)])
    out = generate(model, cond, max_frames=30, temperature=0.0)
    assert out.lengths.tolist() == LENGTHS, "each item stops at its own end"
    for i, codes in enumerate(items):
        np.testing.assert_array_equal(out.codes[i, :, : LENGTHS[i]].numpy(), codes)

    # The command line decodes through the codec the export recorded.
    wav = tmp_path / "gen.wav"
    assert main(["generate", str(tmp_path / "export"), "--tags", "style2", "--temperature",
                 "0", "--out", str(wav)]) == 0
    assert audio_info(wav).frames == LENGTHS[2] * HOP
    # An audio prompt is encoded by the same codec and prefixes the generation.
    prompted = tmp_path / "prompted.wav"
    assert main(["generate", str(tmp_path / "export"), "--tags", "style1", "--prompt", str(wav),
                 "--seconds", "0.005", "--out", str(prompted)]) == 0
    assert 0 < audio_info(prompted).frames <= 40 * HOP


def test_training_prompts_are_cut_from_the_window(tmp_path):
    from soundry.data.tokens import TokenDataConfig, build_token_loader
    from soundry.train.task import TaskContext
    from soundry.train.tasks.lm import LMTask

    meta = {"codec": {}, "levels": 2, "codebook_size": 16, "frame_rate": 10.0,
            "sample_rate": SR, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    rng = np.random.default_rng(1)
    for i, n in enumerate([30, 5, 40, 25]):
        writer.add(f"s{i}", [rng.integers(0, 16, (2, n))], [f"i{i}"], tags=[f"t{i}"])
    writer.flush()
    recipe = recipe_from_dict({
        "task": "lm", "model": {"levels": 2, "card": 16,
                                "transformer": {"dim": 32, "layers": 1, "heads": 2}},
        "tokens": {"path": str(tmp_path / "tokens"), "max_batch_size": 4, "valid_count": 0},
        "prompt": {"frac": 1.0, "seconds": 1.0},
    })
    task = LMTask(recipe, TaskContext())
    task.networks()
    batch = next(build_token_loader(TokenDataConfig(path=str(tmp_path / "tokens"),
                                                    max_batch_size=4, valid_count=0), seed=0))
    rest, prompt, valid = task.split_prompts(batch)
    for b in range(len(batch["id"])):
        n = int(batch["lengths"][b])
        if n > 10:  # long enough: the first second became the prompt
            assert valid[b].all() and torch.equal(prompt[b], batch["codes"][b, :, :10])
            assert rest["lengths"][b] == n - 10
            assert torch.equal(rest["codes"][b, :, : n - 10], batch["codes"][b, :, 10:n])
        else:
            assert not valid[b].any() and rest["lengths"][b] == n
    seq, _ = task._sequences(rest)
    cond = task.model.make_conditioning(tags=rest["tags"], seeds=rest["seed"], train=True,
                                        prompt=prompt, prompt_valid=valid)
    assert torch.isfinite(task.model.loss(seq, cond).loss)


class _SumGrads:
    """The engine's accumulation without its optimizer: (loss / micro-batches).backward()."""

    def __init__(self, micro: int) -> None:
        self.micro = micro

    def update(self, name: str, loss: torch.Tensor) -> bool:
        (loss / self.micro).backward()
        return True


def test_grad_accumulation_weights_tokens_as_one_batch(tmp_path):
    """Two micro-batches holding different token counts accumulate to the gradient of the
    one batch holding both: each is divided by the step's count (begin_step), not its own."""
    from soundry.data.tokens import collate_tokens
    from soundry.train.task import TaskContext
    from soundry.train.tasks.lm import LMTask

    rng = np.random.default_rng(0)
    meta = {"codec": {}, "levels": 2, "codebook_size": 16, "frame_rate": 10.0,
            "sample_rate": SR, "channels": 1}
    writer = TokenShardWriter(tmp_path / "tokens", meta)
    windows = [rng.integers(0, 16, (2, n)) for n in (4, 5, 14, 11)]
    for i, codes in enumerate(windows):
        writer.add(f"item{i}.wav", [codes], [f"item{i}"], tags=["t"])
    writer.flush()
    recipe = recipe_from_dict({
        "task": "lm",
        "model": {"levels": 2, "card": 16, "pattern": {"type": "delay"},
                  "transformer": {"dim": 16, "layers": 1, "heads": 2, "max_len": 64}},
        "tokens": {"path": str(tmp_path / "tokens")},
    })
    torch.manual_seed(0)
    task = LMTask(recipe, TaskContext())
    model = task.networks()["lm"]
    items = [{"codes": c, "offset": 0, "end": True, "text": "", "tags": ["t"], "speaker": None,
              "seed": i, "id": f"item{i}"} for i, c in enumerate(windows)]
    halves = [collate_tokens(items[:2]), collate_tokens(items[2:])]  # 9 and 25 frames

    def grads() -> list[torch.Tensor]:
        out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return out

    task.train_step(collate_tokens(items), 1, _SumGrads(1))
    whole = grads()
    task.begin_step(1, halves)
    for half in halves:
        task.train_step(half, 1, _SumGrads(2))
    accumulated = grads()
    task._step_share = None  # each micro-batch by its own count: what this replaces
    for half in halves:
        task.train_step(half, 1, _SumGrads(2))
    own = grads()
    assert len(whole) == len(accumulated) > 0
    for a, b in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(a, b, rtol=1e-2) for a, b in zip(whole, own, strict=True))
