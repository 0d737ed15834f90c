"""Process-level set-up of a run: seeds, random-generator scopes, precision flags and the
`accelerate` object (device placement, mixed precision, data-parallel processes)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (run seed, step, rank, ...)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Draws from the python/numpy/torch generators inside the block leave no trace."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch generators inside the block; restore their states after."""
    with preserved_rng():
        seed_everything(seed)
        yield


def set_precision_flags(precision: str) -> None:
    """tf32 allows TensorFloat-32 matmuls/convolutions on Ampere+ GPUs; the others forbid it."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def make_accelerator(precision: str, cpu: bool) -> Any:
    """An `accelerate.Accelerator` for this run's precision.

    accelerate keeps its state in a process-wide singleton that refuses a second
    Accelerator with another precision; a process that runs several trainings in a row
    (tests, the demo) resets that part of it (the distributed part is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if precision == "bf16" else "no"
    # Without a GPU, accelerate sets up several processes (torchrun, accelerate launch) as
    # one multi-CPU job only when told the run is on the CPU; otherwise every process would
    # train alone on its share of the data.
    cpu = cpu or not _has_accelerator()
    shared = AcceleratorState._shared_state
    if shared and (shared.get("_mixed_precision") != mixed
                   or (cpu and getattr(shared.get("device"), "type", "cpu") != "cpu")):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed, cpu=cpu)


def autocast_context(accelerator: Any, precision: str) -> Any:
    """The autocast of a forward pass: float16 autocast for fp16 (loss scaling is the
    updater's: `soundry.train.updater.StepUpdater`), else accelerate's (bf16 or none)."""
    if precision == "fp16":
        return torch.autocast(accelerator.device.type, dtype=torch.float16)
    return accelerator.autocast()


def _has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, XPU or Apple MPS)."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
