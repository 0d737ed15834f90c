"""Codec building blocks: Snake, weight-normed causal/centred convs, spans, folding."""

from __future__ import annotations

import pytest
import torch

from soundry.nn.activations import Snake, make_activation, snake, snake_reference
from soundry.nn.conv import (
    Conv1d,
    ConvTranspose1d,
    ResizeUp,
    from_channels_last,
    has_weight_norm,
    input_span,
    remove_weight_norm,
    to_channels_last,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-off costs on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_snake_fast_paths_match_the_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 40) * 3
    original = x.clone()
    alpha = torch.rand(1, 5, 1) * 2 + 0.1
    ref = snake_reference(x, alpha)
    with torch.no_grad():
        assert torch.allclose(snake(x, alpha), ref, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(snake(x, alpha), ref, atol=1e-6)
    # the input is not modified by the in-place inference path
    assert torch.equal(x, original)


def test_snake_gradients_match_autograd_of_the_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 17, dtype=torch.float64, requires_grad=True)
    alpha = (torch.rand(1, 3, 1, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(snake, (x, alpha))
    g = torch.randn(2, 3, 17, dtype=torch.float64)
    gx, ga = torch.autograd.grad(snake(x, alpha), (x, alpha), g)
    rx, ra = torch.autograd.grad(snake_reference(x, alpha), (x, alpha), g)
    assert torch.allclose(gx, rx) and torch.allclose(ga, ra)
    # only one of the two needing a gradient
    (gx_only,) = torch.autograd.grad(snake(x, alpha.detach()), (x,), g)
    assert torch.allclose(gx_only, rx)
    (ga_only,) = torch.autograd.grad(snake(x.detach(), alpha), (alpha,), g)
    assert torch.allclose(ga_only, ra)
    # channels-last 4-D input with alpha [1, C, 1, 1]
    x4 = x.detach()[:, :, None, :].requires_grad_()
    a4 = alpha.detach().view(1, 3, 1, 1).requires_grad_()
    assert torch.autograd.gradcheck(snake, (x4, a4))


def test_snake_module_layout_and_elu() -> None:
    s = Snake(7)
    assert s.alpha.shape == (1, 7, 1)
    x = torch.randn(1, 7, 9)
    assert s(x).shape == x.shape
    elu = make_activation("elu", 7)
    assert torch.allclose(elu(x), torch.nn.functional.elu(x))


@pytest.mark.parametrize("padding", ["centred", "causal"])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation"),
    [(7, 1, 1), (7, 1, 9), (4, 2, 1), (10, 5, 1), (3, 1, 1), (4, 1, 1)],
)
def test_conv_lengths(padding: str, kernel: int, stride: int, dilation: int) -> None:
    conv = Conv1d(2, 3, kernel, stride=stride, dilation=dilation, padding=padding)
    x = torch.randn(1, 2, 40 * stride)
    assert conv(x).shape == (1, 3, 40)


@pytest.mark.parametrize(("kernel", "stride"), [(4, 2), (10, 5), (16, 8)])
@pytest.mark.parametrize("padding", ["centred", "causal"])
def test_transposed_conv_lengths(kernel: int, stride: int, padding: str) -> None:
    up = ConvTranspose1d(3, 2, kernel, stride, padding=padding)
    assert up(torch.randn(1, 3, 11)).shape == (1, 2, 11 * stride)
    if padding == "centred" and stride % 2:
        short = ConvTranspose1d(3, 2, kernel, stride, output_padding=False)
        assert short(torch.randn(1, 3, 11)).shape == (1, 2, 11 * stride - 1)


def _first_changed(layer: torch.nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """Which outputs change when the input changes at positions >= t."""
    x2 = x.clone()
    x2[..., t:] += torch.randn_like(x2[..., t:])
    with torch.no_grad():
        return (layer(x) - layer(x2)).abs().amax(dim=(0, 1)) > 0


def test_causal_conv_output_at_t_ignores_later_inputs() -> None:
    torch.manual_seed(0)
    conv = Conv1d(2, 2, 7, dilation=3, padding="causal")
    x = torch.randn(1, 2, 64)
    for t in (5, 20, 63):
        changed = _first_changed(conv, x, t)
        assert not changed[:t].any() and changed[t]
    # the centred conv does look ahead (so the check above can fail)
    centred = Conv1d(2, 2, 7, dilation=3, padding="centred")
    assert _first_changed(centred, x, 30)[:30].any()


def test_causal_strided_and_transposed_convs() -> None:
    torch.manual_seed(0)
    down = Conv1d(2, 2, 8, stride=4, padding="causal")
    x = torch.randn(1, 2, 64)
    changed = _first_changed(down, x, 24)  # frame n covers samples [4n, 4n + 4)
    assert not changed[:6].any() and changed[6]
    up = ConvTranspose1d(2, 2, 8, 4, padding="causal")
    z = torch.randn(1, 2, 16)
    changed = _first_changed(up, z, 5)  # frame 5 produces samples 20..23
    assert not changed[:20].any() and changed[20]


@pytest.mark.parametrize(
    "layer",
    [
        Conv1d(1, 1, 7, dilation=3),
        Conv1d(1, 1, 7, dilation=3, padding="causal"),
        Conv1d(1, 1, 10, stride=5),
        Conv1d(1, 1, 4, stride=2, padding="causal"),
        ConvTranspose1d(1, 1, 10, 5),
        ConvTranspose1d(1, 1, 10, 5, output_padding=False),
        ConvTranspose1d(1, 1, 8, 4, padding="causal"),
        ResizeUp(3),
    ],
    ids=lambda m: type(m).__name__,
)
def test_input_span_is_exact(layer: torch.nn.Module) -> None:
    """The reported span equals the inputs whose change reaches output t (interior t)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)  # no accidental zero taps
    n = 60
    x = torch.zeros(1, 1, n)
    out_len = layer(x).shape[-1]
    t = out_len // 2
    deps = []
    for i in range(n):
        x2 = x.clone()
        x2[..., i] = 1.0
        with torch.no_grad():
            if (layer(x2) - layer(x))[0, 0, t].abs() > 0:
                deps.append(i)
    assert (deps[0], deps[-1]) == input_span([layer], t, t)


def test_weight_norm_layout_and_folding_is_exact() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        Conv1d(2, 4, 7, dilation=3),
        ConvTranspose1d(4, 3, 10, 5),
        Conv1d(3, 1, 3, weight_norm=False),
    )
    keys = set(net.state_dict())
    assert {"0.weight_g", "0.weight_v", "1.weight_g", "1.weight_v", "2.weight"} <= keys
    # torch's weight_norm(dim=0) convention: g per output (conv) / input (transposed) channel
    assert net[0].weight_g.shape == (4, 1, 1) and net[1].weight_g.shape == (4, 1, 1)
    with torch.no_grad():
        net[0].weight_g.mul_(1.7)
    x = torch.randn(2, 2, 30)
    with torch.no_grad():
        before = net(x)
    assert has_weight_norm(net)
    remove_weight_norm(net)
    assert not has_weight_norm(net)
    assert "0.weight" in net.state_dict() and "0.weight_g" not in net.state_dict()
    with torch.no_grad():
        assert torch.equal(net(x), before)


def test_weight_norm_matches_torch_weight_norm() -> None:
    torch.manual_seed(0)
    ours = ConvTranspose1d(3, 2, 8, 4)
    ref = torch.nn.ConvTranspose1d(3, 2, 8, 4, padding=2)
    ref = torch.nn.utils.parametrizations.weight_norm(ref)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g * 1.3)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
        ours.weight_g.mul_(1.3)
        ref.bias.copy_(ours.bias)
        x = torch.randn(1, 3, 9)
        assert torch.allclose(ours(x), ref(x), atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv1d(3, 4, 7, dilation=3),
        lambda: Conv1d(3, 4, 7, dilation=3, padding="causal"),
        lambda: Conv1d(3, 4, 4),  # even kernel: uneven centred padding
        lambda: Conv1d(3, 4, 10, stride=5),
        lambda: Conv1d(3, 4, 10, stride=5, padding="causal"),
        lambda: Conv1d(3, 4, 1),
        lambda: ConvTranspose1d(3, 4, 10, 5),
        lambda: ConvTranspose1d(3, 4, 10, 5, output_padding=False),
        lambda: ConvTranspose1d(3, 4, 8, 4, padding="causal"),
        lambda: ResizeUp(3),
        lambda: Snake(3),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_layout_matches_1d(make, batch: int) -> None:
    """[B, C, 1, T] channels-last inputs give the 1-D results, values and gradients."""
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(batch, 3, 40, requires_grad=True)
    x4 = to_channels_last(x.detach()).requires_grad_()
    y, y4 = layer(x), layer(x4)
    assert y4.dim() == 4
    assert torch.allclose(from_channels_last(y4), y, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], g)
    grads4 = torch.autograd.grad(y4, [x4, *layer.parameters()], to_channels_last(g))
    assert torch.allclose(from_channels_last(grads4[0]), grads[0], atol=1e-5)
    for a, b in zip(grads[1:], grads4[1:], strict=True):
        assert torch.allclose(a, b, atol=1e-4)
