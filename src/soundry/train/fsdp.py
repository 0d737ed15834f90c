"""Fully sharded data parallel training (`train.fsdp: true`) for networks too large for one
device: each process holds 1/N of every weight, gradient and optimizer state.

The engine shards with PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), each unit the
task names (a token LM's transformer blocks) and then the whole network, before it builds
the optimizers; this is the call accelerate's FSDP2 plugin makes. The engine calls it itself
because accelerate's FSDP path wants one `prepare(model, optimizer)` and takes over the
gradient step, while the engine builds optimizers from named parameter groups and keeps
its own clipping, NaN guard and all-reduce (which a sharded network's gradients skip: FSDP
reduce-scatters and averages them in the backward pass).

What changes for a sharded network:
- parameters and gradients are DTensors; the grad norm is summed over the shards
  (`local_sq_norm` + one all-reduce), clipping scales each local shard;
- validation runs on every process (a forward pass gathers each unit's weights from all
  processes; so do the methods the task names, an LM's `prefill` and `decode` for its demo
  generations, which every process then runs alike); only the main process logs it;
- checkpoints hold full (unsharded) weights and optimizer state, gathered to the main
  process (`full_state`), so they export and initialise other runs as any checkpoint does
  (`--resume` needs the same number of processes, for every run: each process's loader and
  RNG state is its own); the optimizer state is keyed by parameter name, not index;
- EMA is not supported with sharding (a clear error).

Works on CPU (gloo) as on GPUs (NCCL); on one process `train.fsdp` shards nothing (the
config still refuses it beside `train.ema`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_sharded(net: nn.Module) -> bool:
    """True when `net` holds sharded (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def shard(net: nn.Module, units: list[nn.Module], methods: tuple[str, ...] = ()) -> None:
    """Shard each module of `units`, then `net` itself (in place). `methods`: other methods
    of `net` that run its layers (an LM's `prefill` and `decode`), which then gather the
    root's weights as `forward` does."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for unit in units:
        fully_shard(unit)
    fully_shard(net)
    # a parameter only some processes use in a step (an LM's prompt marker, when only one
    # process's share holds a prompted window) must still join the reduce-scatter as a
    # zero gradient, or the processes reduce different tensors (DDP's unused parameters)
    net.set_reduce_scatter_unused_params(True)
    for name in methods:
        register_fsdp_forward_method(net, name)


def local(t: torch.Tensor) -> torch.Tensor:
    """The process's own shard of a DTensor (shares its storage); other tensors as they
    are."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded network on the main process (CPU), {} on the others.
    Collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))


def load_full_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a sharded network (every process passes the same one)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(net, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state (keyed by parameter name) on the main process, {} on the
    others. Collective."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(net, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any]) -> None:
    """Load a full, name-keyed optimizer state into the optimizer of a sharded network."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    # not strict: a parameter that never had a gradient (an unused embedding) has no
    # moments to restore, as in an unsharded optimizer's state dict
    set_optimizer_state_dict(net, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


__all__ = ["full_optimizer_state", "full_state", "is_sharded", "load_full_optimizer_state",
           "load_full_state", "local", "shard"]
