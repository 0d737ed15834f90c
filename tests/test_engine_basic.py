"""Engine behaviour on small in-process runs: logs, clipping, precision, accumulation,
NaN guard, EMA, validation outputs and the best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from soundry.errors import SoundryError
from soundry.train.checkpoint import CheckpointManager, load_tensors
from soundry.train.engine import Engine, run_training
from soundry.train.logging import read_metrics
from soundry.train.recipes import recipe_from_dict
from soundry.train.task import OptimizerSpec, Task, TaskContext, Validation

QUIET = {"progress": False, "tensorboard": False}


def toy_recipe(train: dict[str, Any] | None = None, **sections: Any) -> Any:
    raw: dict[str, Any] = {
        "task": "toy",
        "data": {"sample_rate": 8000, "segment_seconds": 0.032, "batch_size": 4,
                 "num_workers": 0, "valid_count": 2, "valid_seconds": 0.1},
        "model": {"channels": 4, "layers": 1, "kernel_size": 3, "disc_channels": 4},
        "toy": {"items_per_epoch": 16},
        "train": {**QUIET, "max_steps": 6, "log_every": 2, "valid_every": 100,
                  "checkpoint_every": 100, **(train or {})},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return recipe_from_dict(raw)


# ----------------------------------------------------------------------------- mini task


class ListLoader:
    """Cycles through fixed batches; position = number of batches handed out."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.i = batches, 0

    def __iter__(self):
        while True:
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = state["i"]


class LinearTask(Task):
    """loss = sum(net(x)): the gradient of the weight is the sum of the batch's rows."""

    recipe_class = None  # type: ignore[assignment]

    def __init__(self, recipe: Any, ctx: TaskContext, batches: list[torch.Tensor],
                 clip: float | None = None, lr: float = 1.0) -> None:
        super().__init__(recipe, ctx)
        self.batches, self.clip, self.lr = batches, clip, lr
        self.net = nn.Linear(batches[0].shape[-1], 1, bias=False)
        self.seen_dtypes: list[torch.dtype] = []
        self.weights_at_step: list[torch.Tensor] = []

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> list[OptimizerSpec]:
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr)
        return [OptimizerSpec("net", ["net"], opt, None, self.clip)]

    def train_loader(self) -> ListLoader:
        return ListLoader(self.batches)

    def train_step(self, batch: torch.Tensor, step: int, updater: Any) -> dict[str, Any]:
        self.weights_at_step.append(self.net.weight.detach().clone())
        out = self.net(batch)
        self.seen_dtypes.append(out.dtype)
        loss = out.float().sum()
        updater.update("net", loss)
        return {"loss/sum": loss.detach()}

    def validate(self, step: int) -> Validation:
        return Validation(metrics={"weight_sum": float(self.net.weight.sum())})


def run_linear(tmp_path: Path, batches: list[torch.Tensor], train: dict[str, Any],
               **kwargs: Any) -> tuple[LinearTask, dict[str, Any]]:
    recipe = toy_recipe({"log_every": 1, **train})
    task = LinearTask(recipe, TaskContext(), batches, **kwargs)
    summary = Engine(task, recipe, tmp_path / "run").fit()
    return task, summary


# ----------------------------------------------------------------------------- tests


def test_toy_run_writes_the_run_directory(tmp_path: Path, capsys: Any) -> None:
    recipe = toy_recipe({"max_steps": 4, "valid_every": 2, "checkpoint_every": 2,
                         "keep_last": 1, "best_metric": "snr_db", "best_mode": "max",
                         "tensorboard": True})
    run = tmp_path / "run"
    summary = run_training(recipe, run)
    assert summary["status"] == "completed" and summary["steps"] == 4
    out = capsys.readouterr().out
    assert str(run) in out and "checkpoint" in out

    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in valid] == [2, 4]
    for key in ["loss/recon", "loss/d", "grad_norm/generator", "grad_norm/discriminator",
                "lr/generator", "lr/discriminator", "nonfinite_skips"]:
        assert all(key in r for r in train), key
    assert all(r["grad_norm/generator"] > 0 for r in train)
    assert {"valid/l1", "valid/snr_db"} <= set(valid[0])

    wav = run / "valid" / "step_00000004" / "clip00_out.wav"
    audio, sr = sf.read(wav)
    assert sr == 8000 and len(audio) == 800
    assert (wav.with_suffix(".png")).stat().st_size > 1000
    assert (run / "valid" / "step_00000002" / "clip01_ref.wav").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))

    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["last"] == "step_00000004" and index["best_metric"] == "valid/snr_db"
    best_step = 2 if valid[0]["valid/snr_db"] >= valid[1]["valid/snr_db"] else 4
    assert index["best"] == f"step_{best_step:08d}"
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert kept == sorted({"step_00000004", index["best"]})  # keep_last=1 plus the best
    prov = json.loads((run / "provenance.json").read_text())
    assert {"soundry_version", "git_commit", "packages", "hardware", "command"} <= set(prov)
    assert (run / "config.yaml").read_text().startswith("task: toy")
    assert json.loads((run / "summary.json").read_text())["best_checkpoint"].endswith(
        index["best"])


def test_grad_norm_is_logged_and_clipping_limits_the_update(tmp_path: Path) -> None:
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # gradient norm 5
    for clip, moved in [(None, 5.0), (2.0, 2.0)]:
        task, _ = run_linear(tmp_path / str(clip), [x], {"max_steps": 1}, clip=clip)
        w0 = task.weights_at_step[0]
        w1 = load_tensors(tmp_path / str(clip) / "run/checkpoints/step_00000001/net.safetensors")
        assert torch.linalg.vector_norm(w1["weight"] - w0).item() == pytest.approx(moved, 1e-5)
        (record,) = read_metrics(tmp_path / str(clip) / "run" / "metrics.jsonl")[:1]
        assert record["grad_norm/net"] == pytest.approx(5.0)  # the norm before clipping


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_precision_switch(tmp_path: Path, precision: str, dtype: torch.dtype) -> None:
    task, _ = run_linear(tmp_path, [torch.randn(2, 8)], {"max_steps": 2, "precision": precision})
    assert task.seen_dtypes == [dtype, dtype]
    assert task.net.weight.dtype == torch.float32  # master weights stay fp32


def test_tf32_switch_sets_backend_flags(tmp_path: Path) -> None:
    run_linear(tmp_path, [torch.randn(2, 8)], {"max_steps": 1, "precision": "tf32"})
    assert torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "high"
    run_linear(tmp_path / "b", [torch.randn(2, 8)], {"max_steps": 1, "precision": "fp32"})
    assert not torch.backends.cuda.matmul.allow_tf32


def test_grad_accumulation_equals_the_big_batch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(8, 5, generator=g) for _ in range(3)]
    halves = [h for b in big for h in (b[:4], b[4:])]
    task_big, _ = run_linear(tmp_path / "big", big, {"max_steps": 3}, lr=0.1)
    task_acc, _ = run_linear(tmp_path / "acc", halves, {"max_steps": 3, "grad_accum": 2},
                             lr=0.1)
    # loss is a sum, the engine divides each micro-batch loss by grad_accum: half the step
    w_big = [w for w in task_big.weights_at_step] + [task_big.net.weight.detach()]
    w_acc = task_acc.weights_at_step[::2] + [task_acc.net.weight.detach()]
    for a, b in zip(w_big[1:], w_acc[1:], strict=True):
        assert not torch.allclose(a, b)
    deltas_big = [b - a for a, b in zip(w_big, w_big[1:], strict=False)]
    deltas_acc = [b - a for a, b in zip(w_acc, w_acc[1:], strict=False)]
    for db, da in zip(deltas_big, deltas_acc, strict=True):
        assert torch.allclose(da, db / 2, atol=1e-6)


def test_nan_batch_is_skipped_and_counted(tmp_path: Path) -> None:
    recipe = toy_recipe({"max_steps": 6, "log_every": 1, "nan_patience": 2,
                         "checkpoint_every": 100}, toy={"nan_at_steps": [3]})
    run_training(recipe, tmp_path / "run")
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    skips = [r["nonfinite_skips"] for r in train]
    assert skips == [0, 0, 2, 2, 2, 2]  # both optimizers skipped step 3, once
    assert train[2]["nonfinite_skips/generator"] == 1
    assert train[2]["loss/recon"] is None and train[3]["loss/recon"] > 0
    assert "grad_norm/generator" not in train[2]  # no finite norm at that step
    weights = load_tensors(tmp_path / "run/checkpoints/step_00000006/generator.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_nan_streak_stops_cleanly_with_the_last_good_checkpoint(tmp_path: Path) -> None:
    recipe = toy_recipe({"max_steps": 20, "log_every": 1, "nan_patience": 3,
                         "checkpoint_every": 2}, toy={"nan_at_steps": [5, 6, 7, 8]})
    run = tmp_path / "run"
    with pytest.raises(SoundryError, match=r"3 steps in a row.*step_00000004"):
        run_training(recipe, run)
    manager = CheckpointManager(run, keep_last=2)
    assert [p.name for p in manager.complete()] == ["step_00000002", "step_00000004"]
    latest = manager.latest()
    weights = load_tensors(latest / "generator.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped_nonfinite"
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == 7
    # the stopped run resumes from the good checkpoint (here into the same NaN batches)
    with pytest.raises(SoundryError, match="in a row"):
        run_training(recipe, run, resume=True)


def test_ema_tracks_the_weights_and_is_used_for_validation(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 4, generator=g) for _ in range(5)]
    beta = 0.6
    task, summary = run_linear(tmp_path, batches, {
        "max_steps": 5, "valid_every": 5, "ema": {"networks": ["net"], "beta": beta,
                                                  "start_step": 2}}, lr=0.1)
    weights = task.weights_at_step + [task.net.weight.detach()]  # before step 1 .. after 5
    shadow = weights[0].clone()
    for step in range(1, 6):
        shadow = weights[step].clone() if step <= 2 else beta * shadow + (1 - beta) * weights[step]
    ckpt = tmp_path / "run/checkpoints/step_00000005"
    ema = load_tensors(ckpt / "net.ema.safetensors")["weight"]
    assert torch.allclose(ema, shadow, atol=1e-6)
    assert not torch.allclose(ema, weights[-1])
    assert summary["valid"]["valid/weight_sum"] == pytest.approx(float(shadow.sum()), abs=1e-5)
    assert torch.equal(load_tensors(ckpt / "net.safetensors")["weight"], weights[-1])


def test_ema_config_errors(tmp_path: Path) -> None:
    recipe = toy_recipe({"ema": {"networks": ["generater"]}})
    with pytest.raises(SoundryError, match="did you mean 'generator'"):
        run_training(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written before the error


def test_unknown_best_metric_is_reported(tmp_path: Path) -> None:
    recipe = toy_recipe({"max_steps": 2, "valid_every": 1, "best_metric": "snr"})
    with pytest.raises(SoundryError, match="snr_db"):
        run_training(recipe, tmp_path / "run")


def test_overfit_uses_fixed_items(tmp_path: Path) -> None:
    from soundry.train.tasks.toy import ToyTask

    recipe = toy_recipe({"overfit": 2}, data={"batch_size": 4})
    task = ToyTask(recipe, TaskContext(overfit=2))
    loader = task.train_loader()
    it = iter(loader)
    a, b = next(it), next(it)
    assert a["audio"].shape[0] == 2
    assert {tuple(np.round(x.numpy().ravel()[:8], 5)) for x in a["audio"]} == \
        {tuple(np.round(x.numpy().ravel()[:8], 5)) for x in b["audio"]}


class DrawingLoader(ListLoader):
    """Draws from the global torch generator when started, as a DataLoader without
    `generator=` does."""

    def __iter__(self):
        torch.rand(1)
        yield from super().__iter__()


class NoisyTask(LinearTask):
    """Uses the global generator in every step (like dropout)."""

    def train_loader(self) -> ListLoader:
        return DrawingLoader(self.batches)

    def train_step(self, batch: torch.Tensor, step: int, updater: Any) -> dict[str, Any]:
        return super().train_step(batch + torch.randn_like(batch), step, updater)


def test_in_process_resume_is_exact_with_a_loader_that_draws_on_start(tmp_path: Path) -> None:
    import shutil

    batches = [torch.randn(2, 4) for _ in range(3)]
    recipe = toy_recipe({"max_steps": 4, "checkpoint_every": 2, "keep_last": 5})
    full = tmp_path / "full"
    Engine(NoisyTask(recipe, TaskContext(), batches, lr=0.1), recipe, full).fit()
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_00000004")
    task = NoisyTask(recipe, TaskContext(), batches, lr=0.1)
    Engine(task, recipe, part, resume=True).fit()
    assert len(task.weights_at_step) == 2  # steps 3 and 4 only
    final = [load_tensors(run / "checkpoints/step_00000004/net.safetensors")["weight"]
             for run in (full, part)]
    assert torch.equal(final[0], final[1])
    strip = [[{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")}
              for r in read_metrics(run / "metrics.jsonl")] for run in (full, part)]
    assert strip[0] == strip[1]


class RandomValidTask(NoisyTask):
    """Validation draws from every global generator."""

    def validate(self, step: int) -> Validation:
        import random

        noise = float(torch.randn(()) + np.random.rand() + random.random())
        return Validation(metrics={"noise": noise})


def test_validation_does_not_perturb_training(tmp_path: Path) -> None:
    """Same weights whether or not validations ran in between (their RNG is isolated), and
    validation draws are reproducible (seeded by step)."""
    batches = [torch.randn(2, 4) for _ in range(3)]
    finals, noises = [], []
    for every in (1, 100):
        recipe = toy_recipe({"max_steps": 3, "valid_every": every})
        torch.manual_seed(0)  # LinearTask builds its network in __init__
        task = RandomValidTask(recipe, TaskContext(), batches, lr=0.1)
        Engine(task, recipe, tmp_path / str(every)).fit()
        finals.append(task.net.weight.detach().clone())
        noises.append({r["step"]: r["valid/noise"]
                       for r in read_metrics(tmp_path / str(every) / "metrics.jsonl")
                       if r["kind"] == "valid"})
    assert torch.equal(finals[0], finals[1])
    assert sorted(noises[0]) == [1, 2, 3] and noises[0][3] == noises[1][3]
    assert len(set(noises[0].values())) == 3  # differs per step


def test_toy_items_vary_per_epoch_and_resume_exactly_with_workers() -> None:
    from soundry.train.tasks.toy import ToyTask

    recipe = toy_recipe(toy={"items_per_epoch": 6}, data={"batch_size": 2})
    task = ToyTask(recipe, TaskContext())
    dataset = task.train_loader().dataset
    assert torch.equal(dataset[(0, 1)]["audio"], dataset[(0, 1)]["audio"])
    assert not torch.equal(dataset[(0, 1)]["audio"], dataset[(1, 1)]["audio"])
    assert not torch.equal(dataset[(0, 1)]["noisy"], dataset[(0, 1)]["audio"])

    def take(loader: Any, n: int) -> list[torch.Tensor]:
        it = iter(loader)
        return [next(it)["noisy"] for _ in range(n)]

    plain = take(task.train_loader(), 7)  # 3 batches an epoch: crosses two epoch ends
    assert not torch.equal(plain[0], plain[3])  # epoch 1 differs from epoch 0
    loader = task.train_loader()
    loader.num_workers = 2
    first = take(loader, 4)
    assert all(torch.equal(a, b) for a, b in zip(first, plain, strict=False))
    resumed = task.train_loader()
    resumed.load_state_dict(loader.state_dict())
    assert loader.state_dict() == {"epoch": 1, "batch": 1}
    assert all(torch.equal(a, b) for a, b in zip(take(resumed, 3), plain[4:], strict=True))


class ScaledTask(LinearTask):
    """loss = scale x sum(net(x)): a huge scale overflows float16 gradients."""

    def __init__(self, *args: Any, scales: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scales = scales

    def train_step(self, batch: torch.Tensor, step: int, updater: Any) -> dict[str, Any]:
        self.weights_at_step.append(self.net.weight.detach().clone())
        loss = self.net(batch).float().sum() * self.scales[step - 1]
        updater.update("net", loss)
        return {"loss/sum": loss.detach()}


def test_fp16_scales_the_loss_and_skips_overflows_without_stopping(tmp_path: Path) -> None:
    """A loss whose scaled gradient overflows float16 skips that update and lowers the
    scale (not a non-finite skip: the run goes on); the other updates equal fp32's."""
    x = torch.full((1, 4), 0.5)
    # the output's gradient is the loss factor x the loss scale (65536 at first): float16
    # holds 1e-3 x 65536, not 1e5 x 65536
    scales = [1e-3, 1e5, 1e5, 1e-3, 1e-3]
    recipe = toy_recipe({"max_steps": 5, "log_every": 1, "precision": "fp16",
                         "nan_patience": 2, "checkpoint_every": 5})
    task = ScaledTask(recipe, TaskContext(), [x], scales=scales, lr=1e-3)
    summary = Engine(task, recipe, tmp_path / "run").fit()
    assert summary["status"] == "completed" and summary["nonfinite_skips"] == 0
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    scale = [r["loss_scale/net"] for r in rows]
    overflow = [r["amp_overflow/net"] for r in rows]
    assert overflow == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert scale[1] == scale[0] / 2 and scale[2] == scale[0] / 4 == scale[-1]
    w = task.weights_at_step + [task.net.weight.detach()]
    assert torch.equal(w[1], w[2])  # the overflowing update was skipped
    assert not torch.equal(w[3], w[4])
    # a resumed run gets the scaler state back
    state = CheckpointManager(tmp_path / "run", 2).latest()
    saved = torch.load(state / "optim.net.pt", weights_only=True)
    assert saved["scaler"]["scale"] == scale[-1]


def test_compile_switch_compiles_the_step_and_matches_eager(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.compile: the network's forward runs compiled (inductor, static shapes), the
    weights follow the eager run's, and the summary keeps the first step's time."""
    # kernels of this test alone (the shared cache does not key on ATEN_CPU_CAPABILITY)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 8, generator=g) for _ in range(2)]
    torch.manual_seed(0)  # the same initial weights for both
    eager, _ = run_linear(tmp_path / "eager", batches, {"max_steps": 3}, lr=0.1)
    torch.manual_seed(0)
    compiled, summary = run_linear(tmp_path / "compiled", batches,
                                   {"max_steps": 3, "compile": True}, lr=0.1)
    assert summary["compiled"] == ["net"]
    assert summary["first_step_seconds"] > 0
    torch.testing.assert_close(compiled.net.weight, eager.net.weight)
    written = json.loads((tmp_path / "compiled" / "run" / "summary.json").read_text())
    assert written["compiled"] == ["net"]


def test_compile_without_a_cpu_compiler_trains_eagerly_with_a_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with caplog.at_level("WARNING", logger="soundry.train"):
        _, summary = run_linear(tmp_path, [torch.randn(2, 8)], {"max_steps": 2,
                                                                 "compile": True})
    assert summary["compiled"] == [] and summary["steps"] == 2
    assert any("no C++ compiler" in r.message and "eagerly" in r.message
               for r in caplog.records)
