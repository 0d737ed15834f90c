"""`train.compile`: torch.compile of what a training step runs, with a fallback.

The task decides what to compile (`Task.compile`: by default each network's forward; the
codec adds its reconstruction losses). Shapes are static (`dynamic=False`): training
batches keep one shape, and symbolic shapes failed to lower for the codec's strided convs
(inductor, torch 2.13: "cannot determine truth value of Relational"). A new shape
(validation's longer clips, the last short batch) compiles anew, up to dynamo's cache
limit, after which that call runs eagerly.

Fallbacks, each with a logged reason: no C++ compiler on a CPU machine (inductor emits
C++) trains eagerly; a graph that fails to compile runs eagerly (dynamo's suppress_errors)
with PyTorch's own warning naming the error. The first steps include compilation: the
engine logs the first step's time and the summary keeps it (`first_step_seconds`), beside
the steady `steps_per_second`. `suppress_errors` is dynamo's process-wide switch: once
a training run compiles, any later torch.compile in the same process falls back alike.
A deep copy of a compiled network keeps calling the original's compiled forward (the
engine and exports copy state dicts, not modules).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from soundry.nn.inductor import prepare_compile

log = logging.getLogger("soundry.train")


def compile_task(task: Any, device: torch.device) -> list[str]:
    """Compile the task's step (in place); returns what was compiled ([] on fallback)."""
    reason = prepare_compile(device)
    if reason is not None:
        log.warning("train.compile: %s; training runs eagerly", reason)
        return []
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a failing graph runs eagerly, warned
    names = task.compile(lambda fn: torch.compile(fn, dynamic=False))
    log.info("train.compile: compiled %s (static shapes; the first steps include "
             "compilation)", ", ".join(names) or "nothing")
    return names


__all__ = ["compile_task"]
