"""Optimizers and lr schedules: AdamW, and Muon for hidden weights with an internal AdamW.

`build_optimizer(cfg, modules)` turns an `OptimizerConfig` (`type: adamw | muon`) into a
torch optimizer and an lr scheduler; `build_spec` wraps both into the `OptimizerSpec` a
task returns from `Task.optimizers()`.

Muon (momentum, then Newton-Schulz orthogonalisation of the update) only makes sense for
matrices that map activations to activations. `route_parameters` decides which tensors get
Muon and which get AdamW; conv weights are updated as [out, in * k] matrices, transposed
conv weights ([in, out, k] in torch) as [out, in * k] too.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from soundry.errors import ConfigError
from soundry.train.config import (
    AdamWConfig,
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    MuonConfig,
    OptimizerConfig,
    ScheduleConfig,
    WarmupSchedule,
)
from soundry.train.task import OptimizerSpec

__all__ = [
    "AdamWConfig",
    "Muon",
    "MuonConfig",
    "NS_COEFFICIENTS",
    "OptimizerConfig",
    "ParamRoute",
    "build_optimizer",
    "build_scheduler",
    "build_spec",
    "lr_multiplier",
    "newton_schulz",
    "route_parameters",
]

#: quintic Newton-Schulz coefficients (a, b, c) tuned for a steep slope at zero
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)

_MATRIX_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_LAYERS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


# ----------------------------------------------------------------------------- Muon maths


def newton_schulz(
    g: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Approximate the orthogonal factor U V^T of a matrix g = U S V^T.

    g: [rows, cols] float. Returns a bfloat16 [rows, cols] tensor whose singular values lie
    roughly in [0.7, 1.2]: the quintic iteration X <- aX + (bA + cA^2)X with A = X X^T
    trades exact convergence for a steep slope at zero, so small singular values grow fast.
    Runs in bfloat16, which the iteration tolerates. The wide orientation (rows <= cols)
    keeps the Gram matrix A small.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    # Frobenius norm >= spectral norm, so after this every singular value is <= 1.
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.addmm(x, poly, x, beta=a)  # a*X + poly@X
    return x.T if tall else x


def adjusted_lr(lr: float, rule: str, rows: int, cols: int) -> float:
    """Muon's per-matrix lr: 'match_rms_adamw' 0.2*sqrt(max(r, c)); 'original' sqrt(max(1, r/c))."""
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    return lr


class Muon(torch.optim.Optimizer):
    """Muon for matrix weights and AdamW for the rest, in one optimizer.

    Each param group has `use_muon`. Muon groups also have `transposed` (the tensors are
    transposed-conv weights [in, out, *k]); every Muon tensor is viewed as a matrix
    [out, in * prod(k)] for the update. Muon step for a matrix gradient G (momentum m):

        B <- m B + (1 - m) G;   U <- (1 - m) G + m B  (Nesterov) or B
        W <- W (1 - lr * wd) - adjusted_lr(lr, rows, cols) * NS(U)

    which is exactly torch.optim.Muon on 2-D tensors. AdamW groups follow torch.optim.AdamW
    (decoupled weight decay, bias correction). One scheduler scales every group's lr by the
    same factor, so the Muon / AdamW lr ratio stays fixed.
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        lr: float = 3e-4,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        weight_decay: float = 0.1,
        adjust_lr: str = "match_rms_adamw",
        adamw_lr: float | None = None,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        groups = []
        for group in param_groups:
            group = dict(group)
            if "use_muon" not in group:
                raise ValueError("every Muon param group needs 'use_muon'")
            if group["use_muon"]:
                group.setdefault("lr", lr)
                group.setdefault("weight_decay", weight_decay)
                group.setdefault("momentum", momentum)
                group.setdefault("nesterov", nesterov)
                group.setdefault("ns_steps", ns_steps)
                group.setdefault("ns_coefficients", tuple(ns_coefficients))
                group.setdefault("eps", eps)
                group.setdefault("adjust_lr", adjust_lr)
                group.setdefault("transposed", False)
                for p in group["params"]:
                    if p.ndim < 2:
                        raise ValueError("Muon groups take tensors with >= 2 dimensions")
            else:
                group.setdefault("lr", adamw_lr if adamw_lr is not None else lr)
                group.setdefault("betas", tuple(adamw_betas))
                group.setdefault("eps", adamw_eps)
                group.setdefault("weight_decay", adamw_weight_decay)
            groups.append(group)
        super().__init__(groups, {})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, m = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad.transpose(0, 1) if group["transposed"] else p.grad
            g = grad.reshape(grad.shape[0], -1)
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(
                    g, memory_format=torch.contiguous_format
                )
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - m)
            update = g.lerp(buf, m) if group["nesterov"] else buf
            ortho = newton_schulz(update, group["ns_steps"], group["ns_coefficients"], group["eps"])
            rows, cols = g.shape
            step_lr = adjusted_lr(lr, group["adjust_lr"], rows, cols)
            ortho = ortho.reshape(grad.shape)
            if group["transposed"]:
                ortho = ortho.transpose(0, 1)
            p.mul_(1 - lr * wd)
            p.add_(ortho, alpha=-step_lr)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(p.grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.mul_(1 - lr * wd)
            bias1 = 1 - beta1**t
            bias2_sqrt = math.sqrt(1 - beta2**t)
            denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)


# ----------------------------------------------------------------------------- routing


@dataclass
class ParamRoute:
    """Where one parameter goes. `name` is '<network>.<parameter name>'."""

    name: str
    param: nn.Parameter
    target: Literal["muon", "adamw"]
    transposed: bool
    reason: str


def _weight_like(local: str) -> bool:
    """Is a layer-local parameter name the layer's weight (plain, weight norm or parametrized)?"""
    return local in ("weight", "weight_v", "parametrizations.weight.original",
                     "parametrizations.weight.original1")


def _gain_like(local: str) -> bool:
    return local in ("weight_g", "parametrizations.weight.original0")


def _layer_params(net: nn.Module) -> Iterable[tuple[str, str, nn.Module, list[nn.Module]]]:
    """(parameter path, name local to its layer, layer, ancestors) for every parameter.

    Parametrization containers (`layer.parametrizations.weight`) are folded into their layer
    so a weight-normed conv's direction `original1` is seen as that conv's weight.
    """
    stack: list[tuple[str, nn.Module, list[nn.Module]]] = [("", net, [])]
    while stack:
        prefix, module, ancestors = stack.pop(0)
        for pname, _ in module.named_parameters(recurse=False):
            yield prefix + pname, pname, module, ancestors
        for cname, child in module.named_children():
            path = prefix + cname + "."
            if cname == "parametrizations" and isinstance(child, nn.ModuleDict):
                for tname, plist in child.items():
                    for pname, _ in plist.named_parameters(recurse=False):
                        local = f"parametrizations.{tname}.{pname}"
                        yield prefix + local, local, module, ancestors
                continue
            stack.append((path, child, ancestors + [module]))


def _is_weight_normed(layer: nn.Module) -> bool:
    plists = getattr(layer, "parametrizations", None)
    if plists is not None and "weight" in plists:
        return hasattr(plists["weight"], "original0")
    return hasattr(layer, "weight_g")


def route_parameters(cfg: MuonConfig, modules: dict[str, nn.Module]) -> list[ParamRoute]:
    """Decide Muon vs AdamW for every trainable parameter of `modules` (see MuonConfig).

    Parameters with requires_grad=False (frozen) are left out. A tensor shared by several
    layers (tied weights) goes to AdamW if any of its uses would.
    """
    routes: dict[int, ParamRoute] = {}
    for net_name, net in modules.items():
        by_path = dict(net.named_parameters(remove_duplicate=False))
        last_layer = None
        for module in net.modules():
            if isinstance(module, _MATRIX_LAYERS + _TRANSPOSED_LAYERS):
                last_layer = module
        for path, local, layer, ancestors in _layer_params(net):
            param = by_path[path]
            if not param.requires_grad:
                continue
            name = f"{net_name}.{path}"
            transposed = isinstance(layer, _TRANSPOSED_LAYERS)
            target: Literal["muon", "adamw"] = "adamw"
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in cfg.adamw_params):
                reason = "adamw_params"
            elif any(getattr(m, "muon_exclude", False) for m in [*ancestors, layer]):
                reason = "muon_exclude"
            elif param.ndim < 2:
                reason = "< 2-D"
            elif _gain_like(local) and _is_weight_normed(layer):
                reason = "weight-norm gain"
            elif isinstance(layer, _EMBEDDINGS):
                reason = "embedding"
            elif isinstance(layer, _MATRIX_LAYERS + _TRANSPOSED_LAYERS) and _weight_like(local):
                if cfg.exclude_last_layer and layer is last_layer:
                    reason = "output layer"
                else:
                    target, reason = "muon", "transposed conv" if transposed else "matrix"
            else:
                reason = "not a linear/conv weight"
            route = ParamRoute(name, param, target, transposed and target == "muon", reason)
            previous = routes.get(id(param))
            if previous is None:
                routes[id(param)] = route
            elif previous.target == "muon" and target == "adamw":
                routes[id(param)] = route
    return list(routes.values())


# ----------------------------------------------------------------------------- schedules


def lr_multiplier(cfg: ScheduleConfig, total_steps: int | None = None) -> Callable[[int], float]:
    """factor(step) for `torch.optim.lr_scheduler.LambdaLR`; step 0 is the first update.

    Warm-up is linear: factor (step + 1) / warmup_steps until it reaches 1.
    """
    warmup = cfg.warmup_steps

    def warm(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    if isinstance(cfg, ConstantSchedule | WarmupSchedule):
        return warm
    if isinstance(cfg, ExponentialSchedule):
        gamma, floor = cfg.gamma, cfg.min_ratio

        def exponential(step: int) -> float:
            if step < warmup:
                return warm(step)
            return max(floor, gamma ** (step - warmup))

        return exponential
    if isinstance(cfg, CosineSchedule):
        total = cfg.total_steps or total_steps
        if total is None:
            raise ConfigError("a cosine schedule needs total_steps (or train.max_steps)")
        if total <= warmup:
            raise ConfigError(
                f"cosine schedule: total_steps ({total}) must exceed warmup_steps ({warmup})"
            )
        floor = cfg.min_ratio

        def cosine(step: int) -> float:
            if step < warmup:
                return warm(step)
            progress = min(1.0, (step - warmup) / (total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return cosine
    raise ConfigError(f"unknown schedule {cfg!r}")


def budget_multiplier(cfg: ScheduleConfig, fraction: Callable[[], float]
                      ) -> Callable[[int], float] | None:
    """factor(step) of a cosine schedule that decays over a time budget: its position is
    `fraction()` (the part of the budget spent, 0..1) instead of step / total_steps; the
    warm-up stays in steps. None for schedules that do not decay over the run length
    (constant, warm-up, exponential) or that fix their own `total_steps`."""
    if not isinstance(cfg, CosineSchedule) or cfg.total_steps is not None:
        return None
    warmup, floor = cfg.warmup_steps, cfg.min_ratio

    def cosine(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction())))
        return min(warm, decay)

    return cosine


class ScheduledLR(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR that knows its `ScheduleConfig`, so the engine can make a cosine decay
    follow a training-time budget (`follow`). Its state_dict holds only numbers, so it loads
    with weights_only=True."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                 total_steps: int | None = None) -> None:
        self.config = cfg
        super().__init__(optimizer, lr_multiplier(cfg, total_steps))

    def state_dict(self) -> dict[str, Any]:
        # the schedule comes from the recipe on every start: keep the state numbers only
        state = super().state_dict()
        state.pop("config", None)
        return state

    def follow(self, fraction: Callable[[], float]) -> bool:
        """Decay over the budget whose spent part `fraction()` gives (see `budget_multiplier`);
        False (and nothing changes) for a schedule that does not decay over the run."""
        factor = budget_multiplier(self.config, fraction)
        if factor is None:
            return False
        self.lr_lambdas = [factor] * len(self.optimizer.param_groups)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor(self.last_epoch)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        return True


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int | None = None
) -> ScheduledLR:
    """The lr scheduler of `cfg` over `optimizer` (`total_steps`: a cosine's default length)."""
    return ScheduledLR(optimizer, cfg, total_steps)


# ----------------------------------------------------------------------------- builders


def _trainable(modules: dict[str, nn.Module]) -> list[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for net_name, net in modules.items():
        for pname, p in net.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{net_name}.{pname}", p))
    return out


def build_optimizer(
    cfg: OptimizerConfig, modules: dict[str, nn.Module], total_steps: int | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, scheduler) over the trainable parameters of `modules`.

    `total_steps` is the default length of a cosine schedule (train.max_steps). Frozen
    parameters (requires_grad=False) are left out.
    """
    optimizer: torch.optim.Optimizer
    if isinstance(cfg, AdamWConfig):
        params = _trainable(modules)
        if not params:
            raise ConfigError(f"optimizer over {', '.join(modules)} has no trainable parameter")
        if cfg.weight_decay > 0 and not cfg.decay_1d:
            decay = [p for _, p in params if p.ndim >= 2]
            no_decay = [p for _, p in params if p.ndim < 2]
            groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0})
            groups = [g for g in groups if g["params"]]
        else:
            groups = [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay}]
        # fused: one kernel for all parameters (CPU and CUDA), not a Python loop per tensor.
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=_fusable(params)
        )
    elif isinstance(cfg, MuonConfig):
        routes = route_parameters(cfg, modules)
        if not routes:
            raise ConfigError(f"optimizer over {', '.join(modules)} has no trainable parameter")
        groups = []
        for transposed in (False, True):
            muon = [r.param for r in routes if r.target == "muon" and r.transposed == transposed]
            if muon:
                groups.append({"params": muon, "use_muon": True, "transposed": transposed})
        adamw = [r.param for r in routes if r.target == "adamw"]
        if adamw:
            groups.append({"params": adamw, "use_muon": False})
        optimizer = Muon(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps,
            weight_decay=cfg.weight_decay,
            adjust_lr=cfg.adjust_lr,
            adamw_lr=cfg.adamw_lr,
            adamw_betas=cfg.adamw_betas,
            adamw_eps=cfg.adamw_eps,
            adamw_weight_decay=cfg.adamw_weight_decay,
        )
    else:  # pragma: no cover - the config union has only these members
        raise ConfigError(f"unknown optimizer type {cfg!r}")
    return optimizer, build_scheduler(optimizer, cfg.schedule, total_steps)


def build_spec(
    name: str,
    cfg: OptimizerConfig,
    modules: dict[str, nn.Module],
    total_steps: int | None = None,
) -> OptimizerSpec:
    """The `OptimizerSpec` for `Task.optimizers()`: optimizer, scheduler and clip from `cfg`."""
    optimizer, scheduler = build_optimizer(cfg, modules, total_steps)
    return OptimizerSpec(
        name=name, networks=list(modules), optimizer=optimizer, scheduler=scheduler, clip=cfg.clip
    )


def _fusable(params: list[tuple[str, nn.Parameter]]) -> bool:
    """Fused AdamW needs floating-point parameters on CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for _, p in params)


def load_keeping_recipe(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR | None,
    saved_optimizer: dict[str, Any],
    saved_scheduler: dict[str, Any] | None,
    load: Any = None,
) -> list[str]:
    """Load saved optimizer/scheduler state (moments, step counts, schedule position), but
    keep the hyperparameters the recipe now sets (lr, betas, weight decay, ...).

    `torch.optim.Optimizer.load_state_dict` restores every param-group setting of the saved
    run, so a resumed run with `optim.generator.lr=...` would silently keep the old lr.
    Returns one "key old -> new" line per group setting that changed. `load`: what loads
    the saved state into the optimizer (default `optimizer.load_state_dict`; a sharded
    network's optimizer loads a full, name-keyed state its own way).
    """
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in saved_optimizer["param_groups"]]
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        raise ConfigError(
            f"the recipe's optimizer groups its parameters as {sizes}, the checkpoint's as "
            f"{saved_sizes} (a changed model, freeze list, or weight decay switched on or off); "
            "such a run cannot be resumed, start a new one with --init-from")
    (load or optimizer.load_state_dict)(saved_optimizer)
    if scheduler is not None and saved_scheduler is not None:
        scheduler.load_state_dict(saved_scheduler)
    changes: list[str] = []
    for i, (group, want) in enumerate(zip(optimizer.param_groups, fresh, strict=True)):
        for key, value in want.items():
            # with a schedule, 'lr' is its current value and 'initial_lr' the recipe's
            if (key == "lr" and scheduler is not None) or group.get(key) == value:
                continue
            changes.append(f"group {i} {key} {group.get(key)} -> {value}")
            group[key] = value
    if changes and scheduler is not None:
        scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        # LambdaLR's lr is closed-form: base lr x factor(position)
        factors = [f(scheduler.last_epoch) for f in scheduler.lr_lambdas]
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors,
                                       strict=True):
            group["lr"] = base * factor
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr reads
    return changes
