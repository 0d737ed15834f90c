"""Real NVP flows: exact inverses, exact log-determinants, a density that beats a Gaussian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soundry.nn.flows import (
    ActNorm,
    AffineCoupling,
    FlowPrior,
    RealNVP,
    gaussian_kl_per_dim,
    gaussian_log_prob,
    standard_normal_log_prob,
)


def _randomise(flow: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (a fresh coupling is the identity, which proves nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("scale", ["tanh", "softplus"])
@pytest.mark.parametrize("mixing", ["alternate", "permute"])
def test_flow_inverts_exactly(scale: str, mixing: str) -> None:
    flow = RealNVP(6, layers=4, hidden=16, context_dim=3, scale=scale, mixing=mixing).double()
    _randomise(flow)
    x, ctx = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 3, dtype=torch.float64)
    y, log_det = flow(x, ctx)
    assert not torch.allclose(y, x)  # the map does something
    back, log_det_inv = flow.inverse(y, ctx)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det, atol=1e-10, rtol=0)


@pytest.mark.parametrize("scale", ["tanh", "softplus"])
def test_log_det_equals_the_autograd_jacobian(scale: str) -> None:
    torch.manual_seed(0)
    flow = RealNVP(4, layers=3, hidden=8, context_dim=2, scale=scale, mixing="permute").double()
    flow.train()
    flow(torch.randn(64, 4, dtype=torch.float64) * 3 + 1, torch.randn(64, 2, dtype=torch.float64))
    _randomise(flow, seed=1)
    x, ctx = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    _, log_det = flow(x, ctx)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flow(v[None], ctx[i:i + 1])[0][0],
                                                 x[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert float(sign) != 0
        assert float(log_det[i].detach()) == pytest.approx(float(logabs), abs=1e-9)


def test_fresh_coupling_is_identity_and_actnorm_standardises() -> None:
    coupling = AffineCoupling(torch.tensor([1, 0, 1, 0]), hidden=8)
    x = torch.randn(10, 4)
    y, log_det = coupling(x)
    assert torch.equal(y, x) and torch.equal(log_det, torch.zeros(10))
    norm = ActNorm(4).train()
    data = torch.randn(500, 4) * torch.tensor([0.1, 1.0, 5.0, 20.0]) + 3.0
    out, _ = norm(data)
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0), torch.ones(4), atol=1e-4, rtol=0)
    assert int(norm.initialized) == 1  # saved with the weights: a loaded flow is not re-fitted


def test_gaussian_kl_and_log_prob_match_torch_distributions() -> None:
    mean, std = torch.randn(7, 5, dtype=torch.float64), torch.rand(7, 5, dtype=torch.float64) + 0.1
    q = torch.distributions.Normal(mean, std)
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    torch.testing.assert_close(gaussian_kl_per_dim(mean, std), torch.distributions.kl_divergence(
        q, p), atol=1e-12, rtol=0)
    z = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_log_prob(z, mean, std), q.log_prob(z).sum(-1))
    torch.testing.assert_close(standard_normal_log_prob(z), p.log_prob(z).sum(-1).double())
    # the Monte-Carlo estimate the VAE uses with flows converges to the closed form
    m, s = torch.tensor([[0.7, -1.2]]), torch.tensor([[0.5, 1.5]])
    z0 = m + s * torch.randn(200_000, 2)
    mc = (gaussian_log_prob(z0, m, s) - standard_normal_log_prob(z0)).mean()
    assert float(mc) == pytest.approx(float(gaussian_kl_per_dim(m, s).sum()), abs=0.02)


def two_moons(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], 1) + rng.normal(0, 0.08, (n, 2))
    return torch.tensor(pts, dtype=torch.float32)


def test_flow_prior_beats_a_gaussian_on_two_moons() -> None:
    torch.manual_seed(0)
    train, held = two_moons(4000, 0), two_moons(2000, 1)
    prior = FlowPrior(RealNVP(2, layers=8, hidden=64))
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    prior.train()
    for _ in range(600):
        batch = train[torch.randint(0, len(train), (256,))]
        loss = -prior.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    with torch.no_grad():
        flow_nll = float(-prior.log_prob(held).mean())
    # the best single Gaussian: the maximum-likelihood fit to the training points
    gauss = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    gauss_nll = float(-gauss.log_prob(held).mean())
    assert flow_nll < gauss_nll - 0.4, (flow_nll, gauss_nll)


def test_prior_sampling_is_seeded_and_inverts_log_prob() -> None:
    prior = FlowPrior(RealNVP(4, layers=4, hidden=8))
    _randomise(prior)
    a = prior.sample(6, generator=torch.Generator().manual_seed(3))
    b = prior.sample(6, generator=torch.Generator().manual_seed(3))
    c = prior.sample(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    cold = prior.sample(2000, temperature=0.3, generator=torch.Generator().manual_seed(0))
    warm = prior.sample(2000, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert float(cold.std()) < float(warm.std())
    assert torch.isfinite(prior.log_prob(a)).all()


def test_running_standardize_tracks_batches_inverts_and_freezes_in_eval() -> None:
    from soundry.nn.flows import RunningStandardize

    gen = torch.Generator().manual_seed(0)
    layer = RunningStandardize(3, momentum=0.1).double().train()
    scale = torch.tensor([0.01, 1.0, 5.0], dtype=torch.float64)
    for _ in range(200):
        layer(torch.randn(64, 3, generator=gen, dtype=torch.float64) * scale + 2.0)
    torch.testing.assert_close(layer.mean, torch.full((3,), 2.0, dtype=torch.float64),
                               atol=0.05 * 5, rtol=0)
    torch.testing.assert_close(layer.var.sqrt(), scale, rtol=0.1, atol=0)
    layer.eval()
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64) * scale + 2.0
    before = layer.mean.clone()
    y, log_det = layer(x + 100.0)  # eval: statistics frozen
    assert torch.equal(layer.mean, before)
    y, log_det = layer(x)
    back, log_det_inv = layer.inverse(y)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x[0])
    assert float(log_det[0]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-9)


def test_standardised_prior_is_not_sharpened_by_the_first_batch() -> None:
    """A prior fitted to tightly packed latents that then spread out (a VAE's encoder
    learning) keeps a finite NLL when standardised by running statistics."""
    torch.manual_seed(0)
    nll = {}
    for standardize in (False, True):
        prior = FlowPrior(RealNVP(8, layers=4, hidden=32, actnorm=not standardize),
                          standardize=standardize).train()
        opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
        for step in range(300):
            spread = 0.01 * (1.05 ** step)  # the latents spread ~2000x over the run
            loss = -prior.log_prob(torch.randn(32, 8) * spread).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        prior.eval()
        with torch.no_grad():
            nll[standardize] = float(-prior.log_prob(torch.randn(256, 8) * spread).mean())
    gauss = 8 * (0.5 * math.log(2 * math.pi * spread ** 2) + 0.5)  # the true NLL
    assert abs(nll[True] - gauss) < 0.5 * 8, nll
    assert nll[False] > nll[True] + 8, nll
