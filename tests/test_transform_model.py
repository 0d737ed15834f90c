"""Audio-to-audio generators: plain and U-Net stacks, waveform (full rate or PQMF bands) and
STFT domains, direct / residual / mask outputs: shapes, lengths, bounds, start near the
identity, and gradients that reach every parameter."""

from __future__ import annotations

import pytest
import torch

from soundry.config import validate
from soundry.errors import ConfigError, SoundryError
from soundry.models.transform import TransformModelConfig, build_transform

SMALL = {"sample_rate": 8000, "width": 8, "layers": 2, "strides": [2, 4],
         "dilations": [1, 3]}


def model(**extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_transform(validate(TransformModelConfig, {**SMALL, **extra}, source="test"))


CASES = [
    {"generator": "plain", "output": "direct"},
    {"generator": "plain", "output": "residual", "pqmf_bands": 4},
    {"generator": "unet", "output": "residual"},
    {"generator": "unet", "output": "mask"},
    {"generator": "unet", "output": "direct", "pqmf_bands": 4, "channels": 2},
    {"generator": "plain", "domain": "stft", "output": "mask", "n_fft": 128, "hop_length": 32},
    {"generator": "unet", "domain": "stft", "output": "mask", "n_fft": 128, "hop_length": 32,
     "strides": [2]},
]


@pytest.mark.parametrize("extra", CASES)
def test_shapes_lengths_and_gradients(extra: dict) -> None:
    net = model(**extra).train()
    c = net.channels
    for t in (1999, 4096):  # lengths not a multiple of the strides or bands are kept
        x = torch.randn(2, c, t) * 0.1
        y = net(x)
        assert y.shape == x.shape and y.isfinite().all()
    y.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("extra", [c for c in CASES if c["output"] != "direct"])
def test_residual_and_mask_start_near_the_identity(extra: dict) -> None:
    net = model(**extra).eval()
    x = torch.randn(1, net.channels, 4000) * 0.1
    with torch.no_grad():
        y = net(x)
    err = float((y - x).square().mean() / x.square().mean())
    assert err < 1e-2  # the STFT round trip and tiny head weights leave a little


def test_masks_are_bounded_and_direct_output_in_range() -> None:
    net = model(output="mask", mask_max=1.5)
    with torch.no_grad():
        for p in net.net.head.parameters():
            p.mul_(1e4)  # saturate the mask
        x = torch.randn(1, 1, 3000) * 0.1
        y = net(x)
    assert float((y.abs() - 1.5 * x.abs()).max()) <= 1e-6
    direct = model(output="direct")
    with torch.no_grad():
        assert float(direct(torch.randn(1, 1, 3000) * 10).abs().max()) <= 1.0


def test_bad_configs_and_inputs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="stft"):
        validate(TransformModelConfig, {"domain": "stft", "output": "residual"}, source="t")
    with pytest.raises(ConfigError, match="hop_length"):
        validate(TransformModelConfig, {"domain": "stft", "output": "mask", "n_fft": 64,
                                        "hop_length": 128}, source="t")
    with pytest.raises(SoundryError, match="takes"):
        model()(torch.randn(1, 2, 1000))


def test_chunked_enhancement_matches_one_pass() -> None:
    from soundry.models.transform import enhance_chunked

    net = model(output="residual").eval()
    x = torch.randn(1, 8000 * 3 + 123) * 0.1
    with torch.no_grad():
        for name, p in net.net.head.named_parameters():
            if name != "weight_v":  # zero gain and bias: an exact identity, so chunks and
                p.zero_()  # crossfades must add back to x
    torch.testing.assert_close(enhance_chunked(net, x, chunk_seconds=0.5), x)
    direct = model(output="direct", generator="plain").eval()
    whole = direct(x[None])[0]
    chunked = enhance_chunked(direct, x, chunk_seconds=0.5, overlap_seconds=0.1)
    assert chunked.shape == x.shape
    # the plain stack's receptive field (~60 samples) is far inside the 800-sample overlap
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-3)
    with pytest.raises(SoundryError, match="channels, time"):
        enhance_chunked(direct, x[None])


def test_export_round_trip(tmp_path) -> None:  # noqa: ANN001
    import soundry
    from soundry.models.export import save_export
    from soundry.models.transform import transform_export_config

    net = model(generator="unet", output="mask").eval()
    save_export(tmp_path / "exp", "transform", transform_export_config(net), net.state_dict())
    loaded = soundry.load(str(tmp_path / "exp"))
    x = torch.randn(1, 1, 3000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=1e-5, rtol=1e-4)
