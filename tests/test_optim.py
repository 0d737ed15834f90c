"""Optimizers: parameter routing, Muon against torch.optim.Muon, schedules."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from soundry.config import validate
from soundry.errors import ConfigError
from soundry.train.config import AdamWConfig, MuonConfig, TrainConfig
from soundry.train.optim import (
    Muon,
    build_optimizer,
    lr_multiplier,
    newton_schulz,
    route_parameters,
)


def _routes(cfg: MuonConfig, modules: dict[str, nn.Module]) -> dict[str, tuple[str, bool, str]]:
    return {r.name: (r.target, r.transposed, r.reason) for r in route_parameters(cfg, modules)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv = weight_norm(nn.Conv1d(8, 16, 3))
        with warnings.catch_warnings():  # the deprecated weight_norm is still met in the wild
            warnings.simplefilter("ignore", FutureWarning)
            self.old_wn = torch.nn.utils.weight_norm(nn.Conv1d(16, 16, 1))
        self.up = nn.ConvTranspose1d(16, 8, 4, stride=2)
        self.lin = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.ones(8, 3))  # a custom 2-D tensor: not a layer weight
        self.head = nn.Conv1d(8, 1, 1)


def test_routing_sends_only_hidden_layer_weights_to_muon() -> None:
    routes = _routes(MuonConfig(), {"g": Net()})
    assert routes["g.emb.weight"][0] == "adamw"
    assert routes["g.conv.parametrizations.weight.original1"][:2] == ("muon", False)
    assert routes["g.conv.parametrizations.weight.original0"][2] == "weight-norm gain"
    assert routes["g.conv.bias"][0] == "adamw"
    assert routes["g.old_wn.weight_v"][0] == "muon"
    assert routes["g.old_wn.weight_g"] == ("adamw", False, "weight-norm gain")
    assert routes["g.up.weight"][:2] == ("muon", True)
    assert routes["g.lin.weight"][:2] == ("muon", False)
    assert routes["g.lin.bias"][0] == "adamw"
    assert routes["g.scale"][0] == "adamw"
    assert routes["g.head.weight"] == ("adamw", False, "output layer")


def test_routing_options_globs_exclusion_and_frozen() -> None:
    net = Net()
    net.lin.muon_exclude = True
    net.conv.parametrizations.weight.original1.requires_grad_(False)
    cfg = MuonConfig(adamw_params=["g.up.*"], exclude_last_layer=False)
    routes = _routes(cfg, {"g": net})
    assert routes["g.up.weight"][0] == "adamw"
    assert routes["g.lin.weight"] == ("adamw", False, "muon_exclude")
    assert routes["g.head.weight"][0] == "muon"
    assert "g.conv.parametrizations.weight.original1" not in routes


def test_tied_weight_goes_to_adamw_once() -> None:
    emb = nn.Embedding(12, 8)
    head = nn.Linear(8, 12, bias=False)
    head.weight = emb.weight
    hidden = nn.Linear(8, 8)
    net = nn.ModuleDict({"emb": emb, "hidden": hidden, "head": head})
    routes = route_parameters(MuonConfig(exclude_last_layer=False), {"lm": net})
    tied = [r for r in routes if r.param is emb.weight]
    assert len(tied) == 1 and tied[0].target == "adamw"


def test_newton_schulz_orthogonalises() -> None:
    torch.manual_seed(0)
    for shape in [(16, 48), (48, 16)]:
        g = torch.randn(shape)
        o = newton_schulz(g).float()
        s = torch.linalg.svdvals(o)
        assert s.min() > 0.5 and s.max() < 1.3, s
        # same singular vectors: o is close to U V^T
        u, _, vh = torch.linalg.svd(g, full_matrices=False)
        assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), 0) > 0.9


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_muon_on_2d(adjust: str, nesterov: bool) -> None:
    torch.manual_seed(1)
    ref_net = nn.Sequential(nn.Linear(12, 20, bias=False), nn.Linear(20, 7, bias=False))
    our_net = nn.Sequential(nn.Linear(12, 20, bias=False), nn.Linear(20, 7, bias=False))
    our_net.load_state_dict(ref_net.state_dict())
    start = our_net[0].weight.detach().clone()
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
    ref = torch.optim.Muon(ref_net.parameters(), adjust_lr_fn=adjust, **kwargs)
    ours = Muon([{"params": list(our_net.parameters()), "use_muon": True}], adjust_lr=adjust,
                **kwargs)
    for i in range(5):
        x = torch.randn(9, 12, generator=torch.Generator().manual_seed(i))
        for net, opt in ((ref_net, ref), (our_net, ours)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(ref_net.parameters(), our_net.parameters(), strict=True):
        assert torch.equal(a, b), (a - b).abs().max()
    assert not torch.equal(our_net[0].weight, start)  # the comparison is not vacuous


@pytest.mark.parametrize("transposed", [False, True])
def test_muon_conv_weights_update_as_out_by_in_k_matrices(transposed: bool) -> None:
    """A conv weight gets torch Muon's update of the matrix [out, in * k]."""
    torch.manual_seed(2)
    layer = nn.ConvTranspose1d(6, 10, 3) if transposed else nn.Conv1d(6, 10, 3)
    w0 = layer.weight.detach().clone()
    grads = [torch.randn_like(w0) for _ in range(3)]

    def as_matrix(t: torch.Tensor) -> torch.Tensor:  # [out, in*k]
        return (t.transpose(0, 1) if transposed else t).reshape(10, -1)

    matrix = nn.Parameter(as_matrix(w0).clone())
    ref = torch.optim.Muon([matrix], lr=0.05, adjust_lr_fn="match_rms_adamw")
    ours = Muon([{"params": [layer.weight], "use_muon": True, "transposed": transposed}],
                lr=0.05, adjust_lr="match_rms_adamw")
    for g in grads:
        matrix.grad = as_matrix(g).clone()
        layer.weight.grad = g.clone()
        ref.step()
        ours.step()
    assert torch.allclose(as_matrix(layer.weight.detach()), matrix.detach(), atol=1e-6)
    assert not torch.allclose(layer.weight.detach(), w0)


def test_hybrid_adamw_part_equals_torch_adamw() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(5, requires_grad=True), None
    b = a.detach().clone().requires_grad_(True)
    ref = torch.optim.AdamW([a], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    ours = Muon([{"params": [b], "use_muon": False}], lr=1.0, adamw_lr=0.01,
                adamw_betas=(0.9, 0.95), adamw_weight_decay=0.05)
    for i in range(4):
        g = torch.randn(5, generator=torch.Generator().manual_seed(i))
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.allclose(a, b, atol=1e-7)


def test_build_optimizer_groups_and_state_roundtrip() -> None:
    net = Net()
    opt, sched = build_optimizer(MuonConfig(lr=0.01, adamw_lr=0.001), {"g": net})
    kinds = {(g["use_muon"], g.get("transposed")): len(g["params"]) for g in opt.param_groups}
    assert kinds == {(True, False): 3, (True, True): 1, (False, None): 10}
    x = torch.randint(0, 10, (2, 12))
    for _ in range(2):
        h = net.emb(x).transpose(1, 2)
        y = net.head(net.lin(net.up(net.old_wn(net.conv(h))).transpose(1, 2)).transpose(1, 2))
        (y.pow(2).mean() + net.scale.sum()).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    opt2, sched2 = build_optimizer(MuonConfig(lr=0.01, adamw_lr=0.001), {"g": net})
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    assert sched2.last_epoch == 2
    mom = [s["momentum_buffer"] for s in opt2.state.values() if "momentum_buffer" in s]
    assert len(mom) == 4 and all(m.abs().sum() > 0 for m in mom)


def test_adamw_no_decay_on_1d_by_default() -> None:
    net = nn.Linear(4, 4)
    opt, _ = build_optimizer(AdamWConfig(weight_decay=0.1), {"n": net})
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 1), (0.1, 1)]
    opt, _ = build_optimizer(AdamWConfig(weight_decay=0.1, decay_1d=True), {"n": net})
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]


def test_schedules() -> None:
    def f(d: dict, total: int | None = None) -> list[float]:
        cfg = validate(AdamWConfig, {"schedule": d}).schedule
        return [lr_multiplier(cfg, total)(s) for s in range(12)]

    assert f({"type": "constant"}) == [1.0] * 12
    warm = f({"type": "warmup", "warmup_steps": 4})
    assert warm[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    exp = f({"type": "exponential", "gamma": 0.5, "warmup_steps": 2, "min_ratio": 0.1})
    assert exp[:6] == [0.5, 1.0, 1.0, 0.5, 0.25, 0.125] and exp[-1] == 0.1
    cos = f({"type": "cosine", "warmup_steps": 2, "min_ratio": 0.0}, total=10)
    assert cos[2] == 1.0 and math.isclose(cos[6], 0.5) and cos[10] == 0.0 and cos[11] == 0.0
    assert all(a >= b for a, b in zip(cos[2:], cos[3:], strict=False))
    with pytest.raises(ConfigError, match="total_steps"):
        f({"type": "cosine"})


def test_optimizer_config_is_a_discriminated_union() -> None:
    from soundry.train.tasks.toy import ToyOptim

    opt = validate(ToyOptim, {"generator": {"type": "muon", "lr": 0.02, "adjust_lr": "original"}})
    assert isinstance(opt.generator, MuonConfig) and isinstance(opt.discriminator, AdamWConfig)
    with pytest.raises(ConfigError, match="momentun"):
        validate(ToyOptim, {"generator": {"type": "muon", "momentun": 0.9}})
    with pytest.raises(ConfigError, match="type"):
        validate(ToyOptim, {"generator": {"type": "sgd"}})
    with pytest.raises(ConfigError, match="best_metric"):
        validate(TrainConfig, {"best_metric": " "})


def test_resume_keeps_the_recipes_hyperparameters() -> None:
    """Loading saved optimizer state keeps its moments and schedule position but takes lr,
    betas and weight decay from the (possibly overridden) recipe of the resumed run."""
    from soundry.train.optim import build_optimizer, load_keeping_recipe

    def make(lr: float, wd: float = 0.0) -> tuple:
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 4)
        cfg = AdamWConfig(lr=lr, weight_decay=wd, schedule={"type": "cosine", "min_ratio": 0.1})
        return (net, *build_optimizer(cfg, {"net": net}, total_steps=10))

    net, opt, sched = make(1e-3, wd=0.01)
    for _ in range(4):
        net(torch.randn(2, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    factor = opt.param_groups[0]["lr"] / 1e-3

    _, same, same_sched = make(1e-3, wd=0.01)
    assert load_keeping_recipe(same, same_sched, saved_opt, saved_sched) == []
    assert same.param_groups[0]["lr"] == opt.param_groups[0]["lr"]  # untouched: exact

    _, new, new_sched = make(5e-4, wd=0.02)
    changes = load_keeping_recipe(new, new_sched, saved_opt, saved_sched)
    assert any("initial_lr 0.001 -> 0.0005" in c for c in changes), changes
    assert any("weight_decay" in c for c in changes), changes
    assert math.isclose(new.param_groups[0]["lr"], 5e-4 * factor, rel_tol=1e-9)
    assert new_sched.get_last_lr() == [g["lr"] for g in new.param_groups]
    assert new.param_groups[0]["weight_decay"] == 0.02
    _, other, other_sched = make(1e-3, wd=0.0)  # one group instead of two
    with pytest.raises(ConfigError, match="groups its parameters"):
        load_keeping_recipe(other, other_sched, saved_opt, saved_sched)
    # the moments came from the saved run
    for p_new, p_old in zip(new.param_groups[0]["params"], opt.param_groups[0]["params"],
                            strict=True):
        assert torch.equal(new.state[p_new]["exp_avg"], opt.state[p_old]["exp_avg"])
    new_sched.step()  # the schedule goes on from the saved position with the new base
    assert math.isclose(new.param_groups[0]["lr"] / 5e-4,
                        new_sched.lr_lambdas[0](5), rel_tol=1e-9)
