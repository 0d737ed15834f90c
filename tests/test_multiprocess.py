"""Multi-process training through `accelerate launch` (2 CPU processes, gloo): one optimizer
step with batch 2 per process equals one process with batch 4.

The per-item random draws (quantizer dropout levels and bypass, the discriminator window,
crops and augmentations) are keyed by the global item index, and the engine averages
gradients over processes, so the two runs see the same items, draw the same and update the
same weights up to float summation order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from soundry.train.checkpoint import load_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from make_codec_golden import OVERRIDES as GOLDEN_OVERRIDES  # noqa: E402
from make_codec_golden import make_data  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and not
                                (Path(sys.executable).parent / "accelerate").exists(),
                                reason="the accelerate launcher is not installed")

# the golden run's tiny codec, one step of the full GAN phase (D, then G), quantizer dropout
# and bypass on, a discriminator window shorter than the item; Adam's eps large enough
# that its first update is linear in the gradient (an update of +-lr per weight, which
# Adam's first step otherwise is, would turn a last-bit difference into a sign flip)
CODEC = [o for o in GOLDEN_OVERRIDES if not o.startswith(("schedule.", "train.max_steps",
                                                            "data.batch_size",
                                                            "model.quantizer"))] + [
    "model.quantizer={type: rvq, n_codebooks: 4, codebook_size: 32, dropout: 0.5, "
    "bypass: 0.5}",
    "schedule.phases=[{name: gan}]", "schedule.discriminator_seconds=0.05",
    "train.max_steps=1", "train.checkpoint_every=1", "train.valid_every=1",
    "optim.generator.eps=1.0", "optim.discriminator.eps=1.0",
    "optim.generator.lr=1e-2", "optim.discriminator.lr=1e-2",
]


def _launcher() -> list[str]:
    exe = Path(sys.executable).parent / "accelerate"
    return [str(exe) if exe.exists() else "accelerate"]


def _train(out: Path, processes: int, batch: int, args: list[str],
           env_extra: dict[str, str] | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           **(env_extra or {})}
    sizes = [f"data.batch_size={batch}"] if batch else []  # 0: the recipe's own batching
    train = [*args, *sizes, "--threads", "1", "--out", str(out)]
    if processes == 1:
        cmd = [sys.executable, "-m", "soundry", "train", *train]
    else:
        cmd = [*_launcher(), "launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "soundry", "train", *train]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def _weights(run: Path, step: int = 1) -> dict[str, torch.Tensor]:
    folder = run / "checkpoints" / f"step_{step:08d}"
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name.startswith(("generator", "discriminator", "lm")) and ".ema" not in f.name:
            out.update({f"{f.stem}.{k}": v for k, v in load_tensors(f).items()})
    return out


def _assert_same_update(one: Path, two: Path, init: dict[str, torch.Tensor],
                        step: int = 1) -> None:
    a, b = _weights(one, step), _weights(two, step)
    assert a.keys() == b.keys() and a
    moved = 0
    for key in a:
        if not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
            continue
        da, db = a[key] - init[key], b[key] - init[key]
        scale = da.abs().max().item()
        moved += scale > 0
        # float tolerance: 1e-4 of the update, plus the weights' own float32 resolution (an
        # update far smaller than the weight is only known to a few of the weight's ulps),
        # plus 1e-9 for updates that are rounding noise alone (a bias before a batch norm
        # has a gradient of zero in exact arithmetic: 1e-14 to 1e-10 in float after two
        # steps; the learning rate 1e-2 moves a weight with a real gradient by far more)
        ulps = 4 * torch.finfo(torch.float32).eps * init[key].abs().max().item()
        assert (da - db).abs().max().item() <= 1e-4 * scale + ulps + 1e-9, key
    assert moved > len(a) // 2  # the step really changed the weights


def _initial_weights(recipe: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights a run of `recipe` starts from (the engine seeds, then builds the task)."""
    from soundry.train.engine import seed_everything
    from soundry.train.recipes import load_recipe
    from soundry.train.task import TaskContext
    from soundry.train.tasks import TASKS

    r = load_recipe(recipe, overrides)
    seed_everything(r.seed)
    task = TASKS.get(r.task)(r, TaskContext(seed=r.seed, max_steps=r.train.max_steps))
    return {f"{name}.{k}": v.detach().clone() for name, net in task.networks().items()
            for k, v in net.state_dict().items()}


def _one_step_on_one_and_two_processes(tmp_path: Path, recipe: Path, overrides: list[str],
                                       env_extra: dict[str, str] | None = None,
                                       step: int = 1) -> None:
    """Train one step with batch 4 on one process and batch 2 on each of two processes, on
    the toy audio set, and assert the two updates are the same."""
    train, valid = make_data(tmp_path / "data")
    args = [str(recipe), "--data", str(train), "--valid", str(valid), *overrides]
    init = _initial_weights(recipe, overrides)
    _train(tmp_path / "one", 1, 4, args)
    _train(tmp_path / "two", 2, 2, args, env_extra)
    _assert_same_update(tmp_path / "one", tmp_path / "two", init, step)


# Loaded first in every Python process (a `sitecustomize` module on PYTHONPATH): records each
# file a process creates, writes, renames or removes under SOUNDRY_TEST_WATCH, with the
# process's RANK, through Python's audit hooks. Writers in native code (torch.save,
# safetensors) are wrapped to raise the same "open" event first.
AUDIT = """
import os, sys
_watch, _log = os.environ.get("SOUNDRY_TEST_WATCH"), os.environ.get("SOUNDRY_TEST_WRITES")
_rank = os.environ.get("RANK")
if _watch and _log and _rank is not None:
    import threading
    _local = threading.local()  # the log's own open is not recorded (per thread)
    _lock = threading.Lock()
    def _record(what, path):
        if getattr(_local, "busy", False) or not isinstance(path, (str, bytes, os.PathLike)):
            return
        p = os.path.abspath(os.fsdecode(path))
        if p.startswith(_watch + os.sep):
            _local.busy = True
            try:
                with _lock, open(_log, "a") as f:
                    f.write(f"{_rank} {what} {os.path.relpath(p, _watch)}\\n")
            finally:
                _local.busy = False
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            write = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if write:
                _record("write", path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            _record(event, args[0])
        elif event == "os.rename":
            _record(event, args[0]); _record(event, args[1])
    sys.addaudithook(_hook)
    import safetensors.torch, torch
    def _wrap(fn, where):
        def wrapped(*a, **k):
            sys.audit("open", a[where], "wb", 0)
            return fn(*a, **k)
        return wrapped
    torch.save = _wrap(torch.save, 1)
    safetensors.torch.save_file = _wrap(safetensors.torch.save_file, 1)
"""


def _write_audit(tmp_path: Path, watch: Path) -> tuple[dict[str, str], Path]:
    """Environment that makes every process of a launch log its writes under `watch`."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT)
    log = tmp_path / "writes.log"
    env = {"PYTHONPATH": f"{hooks}{os.pathsep}{ROOT / 'src'}",
           "SOUNDRY_TEST_WATCH": str(watch.resolve()), "SOUNDRY_TEST_WRITES": str(log)}
    return env, log


@pytest.mark.timeout(900)
def test_codec_step_on_two_processes_equals_one(tmp_path: Path) -> None:
    env, log = _write_audit(tmp_path, tmp_path / "two")
    _one_step_on_one_and_two_processes(tmp_path, ROOT / "recipes" / "codec" / "tiny.yaml",
                                       [*CODEC, "valid.audio_clips=1",
                                        "train.tensorboard=true"], env)
    # rank 0 alone writes the run: one metrics line per kind and step, not two
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text().splitlines())
    # ...and every file of it but the other process's own checkpoint state (rank1.json)
    writes = [line.split(" ", 2) for line in log.read_text().splitlines()]
    main = {path for rank, _, path in writes if rank == "0"}
    for kind in ("metrics.jsonl", ".safetensors", ".pt", ".wav", "tfevents", "state.json"):
        assert any(kind in p for p in main), kind  # the audit sees each kind of file
    other = {(what, path) for rank, what, path in writes if rank != "0"}
    assert other and all(what == "write" and Path(path).name == "rank1.json"
                         for what, path in other), sorted(other)


def _tokens(root: Path) -> Path:
    import numpy as np

    from soundry.data.tokens import TokenShardWriter

    meta = {"codec": {}, "levels": 4, "codebook_size": 256, "frame_rate": 10.0,
            "sample_rate": 8000, "channels": 1}
    writer = TokenShardWriter(root, meta)
    rng = np.random.default_rng(0)
    for i, n in enumerate([12, 20, 9, 15, 18, 11, 14, 16, 10]):
        writer.add(f"s{i}.wav", [rng.integers(0, 256, (4, n))], [f"item{i}"], tags=[f"t{i}"])
    writer.flush()
    return root


# whole items as windows, 4 to a batch (one bucket): the processes' shares hold different
# token counts (rank 0: 20 + 12 frames, rank 1: 15 + 16)
LM = ["model.transformer.dim=16", "model.transformer.layers=1", "model.transformer.heads=2",
      "model.transformer.max_len=128", "model.text.max_bytes=8", "tokens.window_seconds=2.5",
      "tokens.max_batch_size=4", "tokens.max_batch_seconds=10.0", "tokens.bucket_seconds=100.0",
      "tokens.valid_count=1",
      "valid.demo_count=0", "valid.windows=1", "train.max_steps=1", "train.log_every=1",
      "train.valid_every=1", "train.checkpoint_every=1", "train.progress=false",
      "train.tensorboard=false", "optim.lm.lr=1e-2", "optim.lm.eps=1.0"]


@pytest.mark.timeout(900)
def test_lm_step_on_two_processes_equals_one(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "tokens")
    recipe = ROOT / "recipes" / "lm" / "tiny.yaml"
    args = [str(recipe), "--data", str(tokens), *LM]
    init = _initial_weights(recipe, [*LM, f"tokens.path={tokens}"])
    _train(tmp_path / "one", 1, 0, args)
    _train(tmp_path / "two", 2, 0, args)
    _assert_same_update(tmp_path / "one", tmp_path / "two", init)


@pytest.mark.timeout(900)
def test_lm_sharded_over_two_processes_equals_one_and_resumes(tmp_path: Path) -> None:
    """train.fsdp: the LM's weights, gradients and Adam moments sharded over two processes
    (FSDP2 on gloo) take the same step as one unsharded process; the checkpoint holds the
    full weights, and a sharded run killed after step 3 resumes from step 2's checkpoint to
    the uninterrupted run's step 3 weights."""
    tokens = _tokens(tmp_path / "tokens")
    recipe = ROOT / "recipes" / "lm" / "tiny.yaml"
    lm = [o for o in LM if not o.startswith("model.transformer.layers")] + [
        "model.transformer.layers=2", "optim.lm.clip=0.05"]  # clipping on: the norm is global
    args = [str(recipe), "--data", str(tokens), *lm]
    init = _initial_weights(recipe, [*lm, f"tokens.path={tokens}"])
    _train(tmp_path / "one", 1, 0, args)
    assert "sharded lm over 2 processes" in _train(tmp_path / "two", 2, 0,
                                                   [*args, "train.fsdp=true"])
    _assert_same_update(tmp_path / "one", tmp_path / "two", init)
    rows = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    clipped = [r["clip_fraction/lm"] for r in rows if "clip_fraction/lm" in r]
    assert clipped == [1.0]  # the clip really acted

    # validation's demo generation (prefill and decode gather the sharded weights) and
    # prompts on some windows only (the prompt marker unused on some processes' steps)
    _train(tmp_path / "demo", 2, 0, [*args, "train.fsdp=true", "train.max_steps=2",
                                     "valid.demo_count=1", "valid.windows=0",
                                     "prompt={frac: 0.5, seconds: 0.3}"])

    three = [*args, "train.fsdp=true", "train.max_steps=3", "train.keep_last=5"]
    _train(tmp_path / "full", 2, 0, three)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           "SOUNDRY_TEST_KILL_AT_STEP": "3"}
    launch = [*_launcher(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "soundry", "train"]
    killed = subprocess.run([*launch, *three, "--threads", "1", "--out", str(tmp_path / "part")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0
    env.pop("SOUNDRY_TEST_KILL_AT_STEP")
    resumed = subprocess.run([*launch, "--resume", str(tmp_path / "part"), "--threads", "1"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "full", 3), _weights(tmp_path / "part", 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TRANSFORM = [
    "model.width=8", "model.strides=[2, 2]", "model.pqmf_bands=2", "model.dilations=[1]",
    "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8, 8]}, "
    "{type: mrd, windows: [256, 128], channels: 4}]",
    "losses.mel.windows=[64, 128, 256]", "losses.mel.n_mels=[10, 20, 40]",
    "data.segment_seconds=0.25", "data.num_workers=0", "data.valid_count=2",
    "data.valid_seconds=0.25", "schedule.phases=[{name: gan}]",
    "schedule.discriminator_seconds=0.05", "valid.audio_clips=0", "valid.speech_metrics=false",
    "train.max_steps=1", "train.checkpoint_every=1", "train.valid_every=1",
    "train.progress=false", "train.tensorboard=false", "train.log_every=1",
    "optim.generator.eps=1.0", "optim.discriminator.eps=1.0",
    "optim.generator.lr=1e-2", "optim.discriminator.lr=1e-2",
]


@pytest.mark.timeout(900)
def test_transform_step_on_two_processes_equals_one(tmp_path: Path) -> None:
    _one_step_on_one_and_two_processes(
        tmp_path, ROOT / "recipes" / "transform" / "denoise-tiny.yaml", TRANSFORM)


VAE = [
    "data.sample_rate=8000", "data.segment_seconds=0.25", "data.valid_seconds=0.25",
    "data.valid_count=2", "data.num_workers=0", "model.sample_rate=8000", "model.seconds=0.25",
    "model.latent_dim=8",
    "model.net={pqmf_bands: 2, strides: [2, 4], encoder_dim: 4, latent_dim: 8, "
    "decoder_dim: 16, upsample: transposed}",
    "model.posterior_flow={layers: 2, hidden: 16, actnorm: false}",
    "model.prior_flow={layers: 2, hidden: 16, actnorm: false, standardize: true}",
    "discriminator.members=[{type: mpd, periods: [2, 3], channels: [4, 8]}, "
    "{type: mrd, windows: [256, 128], channels: 4}]",
    "losses.mel.windows=[32, 64, 128, 256]", "losses.mel.n_mels=[5, 10, 20, 40]",
    "schedule.phases=[{name: gan}]", "schedule.discriminator_seconds=0.1",
    "valid.samples=2", "valid.reference_items=2", "valid.audio_clips=0",
    "train.max_steps=1", "train.checkpoint_every=1", "train.valid_every=1",
    "train.progress=false", "train.tensorboard=false", "train.log_every=1",
    "optim.generator.eps=1.0", "optim.discriminator.eps=1.0", "optim.prior.eps=1.0",
    "optim.generator.lr=1e-2", "optim.discriminator.lr=1e-2", "optim.prior.lr=1e-2",
]


@pytest.mark.timeout(900)
def test_vae_step_on_two_processes_equals_one(tmp_path: Path) -> None:
    """The posterior sample is keyed by item, batch norm and the flows' data statistics
    are the global batch's, and the prior's queue is shared out: two steps agree (the
    second fits the prior to a queue of both steps' latents, 4 on each process)."""
    _one_step_on_one_and_two_processes(tmp_path, ROOT / "recipes" / "vae" / "oneshot-tiny.yaml",
                                       [*VAE, "train.max_steps=2", "train.checkpoint_every=2",
                                        "train.valid_every=2", "losses.prior_nll.queue=8"],
                                       step=2)


@pytest.mark.timeout(900)
def test_two_process_run_killed_and_resumed_matches_the_uninterrupted_one(tmp_path: Path):
    """SIGKILL of both processes after step 3 (checkpoint at 2), then `--resume` on two
    processes: step 4's weights equal those of an uninterrupted two-process run."""
    train, valid = make_data(tmp_path / "data")
    recipe = ROOT / "recipes" / "codec" / "tiny.yaml"
    steps = ["train.max_steps=4", "train.checkpoint_every=2", "train.valid_every=2",
             "train.keep_last=5"]
    args = [str(recipe), "--data", str(train), "--valid", str(valid), *CODEC, *steps]
    _train(tmp_path / "full", 2, 2, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
           "SOUNDRY_TEST_KILL_AT_STEP": "3"}
    killed = subprocess.run(
        [*_launcher(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "soundry", "train", *args,
         "data.batch_size=2", "--threads", "1", "--out", str(tmp_path / "part")],
        env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0
    assert not (tmp_path / "part" / "checkpoints" / "step_00000004").exists()
    env.pop("SOUNDRY_TEST_KILL_AT_STEP")
    resumed = subprocess.run(
        [*_launcher(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "soundry", "train",
         "--resume", str(tmp_path / "part"), "--threads", "1"],
        env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "full", 4), _weights(tmp_path / "part", 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


REPLICA_WORKER = """
import sys, types, torch, torch.distributed as dist
from soundry.errors import SoundryError
from soundry.train.engine import Engine
rank, store, drift = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
torch.manual_seed(0)
net = torch.nn.Linear(3, 2)
net.register_buffer("counts", torch.zeros(4))
if drift and rank == 1:
    net.counts[2] += 1  # one buffer entry drifted on one process
fake = types.SimpleNamespace(networks={"net": net}, ema=None, device=torch.device("cpu"),
                             sharded=[], world_size=2)
try:
    Engine._check_replicas(fake, 7)
    print("same")
except SoundryError as exc:
    print("differ:", exc)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("drift", [False, True])
def test_replica_check_finds_a_drifted_buffer(tmp_path: Path, drift: bool) -> None:
    script = tmp_path / "worker.py"
    script.write_text(REPLICA_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               "1" if drift else "0"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    for out, _ in outs:
        if drift:
            assert "differ:" in out and "net.counts" in out and "step 7" in out
        else:
            assert out.strip() == "same"


STATS_WORKER = """
import json, sys, torch, torch.distributed as dist
from soundry.nn.distributed import GlobalBatchNorm1d
from soundry.nn.flows import ActNorm, RunningStandardize
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
world = 2 if rank >= 0 else 1
if rank >= 0:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
torch.manual_seed(0)
x = torch.randn(4, 3, 5) * torch.tensor([1.0, 3.0, 0.1])[:, None] + 2.0
v = torch.randn(4, 6) * 2 + 1
# rank r holds rows r, r + 2 (as the batch sampler deals them); one process all four
rows = slice(None) if world == 1 else slice(rank, None, 2)
x, v = x[rows].clone().requires_grad_(), v[rows].clone()
torch.manual_seed(1)
norm = GlobalBatchNorm1d(3)
y = norm(x)
(y * torch.arange(5.0)).pow(2).mean().backward()  # a loss that is a batch mean
grad = x.grad.clone()
if world == 2:  # the whole batch's loss is the mean of the two processes' losses
    grad /= 2
act, std = ActNorm(6), RunningStandardize(6)
act.train(); std.train()
act(v); std(v)
json.dump({"y": y.tolist(), "grad": grad.tolist(), "rm": norm.running_mean.tolist(),
           "rv": norm.running_var.tolist(), "bias": act.bias.tolist(),
           "log_std": act.log_std.tolist(), "mean": std.mean.tolist(),
           "var": std.var.tolist()}, open(out, "w"))
if rank >= 0:
    dist.destroy_process_group()
"""


def test_batch_statistics_are_the_global_batchs_on_two_processes(tmp_path: Path) -> None:
    """Batch norm (output, input gradient, running stats), ActNorm's data start and the
    running standardisation on two processes with two rows each equal one process with
    all four rows."""
    script = tmp_path / "worker.py"
    script.write_text(STATS_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    runs = {r: subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                                 str(tmp_path / f"out{r}.json")], env=env,
                                stderr=subprocess.PIPE, text=True) for r in (-1, 0, 1)}
    for r, p in runs.items():
        assert p.wait(timeout=120) == 0, (r, p.stderr.read()[-2000:])
    one = json.loads((tmp_path / "out-1.json").read_text())
    parts = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in (0, 1)]
    for key in ("y", "grad"):  # per row: rank r's rows are rows r, r + 2 of the whole
        whole = torch.tensor(one[key])
        for r, part in enumerate(parts):
            torch.testing.assert_close(torch.tensor(part[key]), whole[r::2], rtol=1e-5,
                                       atol=1e-6, msg=key)
    for key in ("rm", "rv", "bias", "log_std", "mean", "var"):
        for part in parts:
            torch.testing.assert_close(torch.tensor(part[key]), torch.tensor(one[key]),
                                       rtol=1e-5, atol=1e-6, msg=key)


def test_fsdp_on_a_task_without_shardable_networks_is_a_clear_error() -> None:
    import types

    from soundry.errors import SoundryError
    from soundry.train.engine import Engine

    fake = types.SimpleNamespace(task=types.SimpleNamespace(fsdp_units=dict),
                                 recipe=types.SimpleNamespace(task="codec"))
    with pytest.raises(SoundryError, match="no network that can be sharded"):
        Engine._shard(fake)
