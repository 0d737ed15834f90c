"""STFT / mel helpers: definitions, caching, and the shared spectrogram cache."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import torch

from soundry.audio import dsp
from soundry.errors import ConfigError


def _noise(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_window_is_periodic_hann_and_cached() -> None:
    w = dsp.hann_window(512)
    np.testing.assert_allclose(w.numpy(), scipy.signal.get_window("hann", 512), atol=1e-6)
    symmetric = scipy.signal.get_window("hann", 512, fftbins=False)
    assert np.abs(w.numpy() - symmetric).max() > 1e-4
    assert dsp.hann_window(512) is w
    assert dsp.hann_window(256) is not w
    assert dsp.hann_window(512, dtype=torch.float64) is not w


def test_mel_filterbank_is_librosa_slaney_and_cached() -> None:
    fb = dsp.mel_filterbank(16000, 1024, 80)
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0,
                              htk=False, norm="slaney")
    assert fb.shape == (80, 513)
    np.testing.assert_allclose(fb.numpy(), ref, rtol=1e-5, atol=1e-8)
    assert dsp.mel_filterbank(16000, 1024, 80) is fb
    assert dsp.mel_filterbank(16000, 1024, 80, fmax=4000.0) is not fb


def test_stft_matches_direct_framing() -> None:
    x = _noise((2, 1, 1000), seed=1).double()
    n_fft, hop = 64, 16
    spec = dsp.stft(x, n_fft, hop)
    assert spec.shape == (2, 1, n_fft // 2 + 1, 1 + 1000 // hop)
    # Reference: reflect-pad by n_fft/2, frame j starts at j*hop, periodic Hann, rfft.
    xp = np.pad(x.numpy()[1, 0], n_fft // 2, mode="reflect")
    win = scipy.signal.get_window("hann", n_fft)
    for j in (0, 7, spec.shape[-1] - 1):
        frame = xp[j * hop : j * hop + n_fft] * win
        np.testing.assert_allclose(spec[1, 0, :, j].numpy(), np.fft.rfft(frame), atol=1e-10)


def test_stft_rejects_too_short_signal() -> None:
    with pytest.raises(ConfigError, match="too short"):
        dsp.stft(torch.zeros(1, 1, 100), 512, 128)


def test_cache_computes_each_transform_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_stft = dsp.stft

    def counting(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
        calls.append((n_fft, hop))
        return real_stft(audio, n_fft, hop)

    monkeypatch.setattr(dsp, "stft", counting)
    cache = dsp.SpectrogramCache(_noise((2, 1, 4000)))
    a = cache.stft(512, 128)
    assert cache.stft(512, 128) is a
    m = cache.mel(16000, 512, 128, 40)
    assert cache.mel(16000, 512, 128, 40) is m
    cache.magnitude(512, 128)
    cache.stft(256, 64)
    assert calls == [(512, 128), (256, 64)]
    # views share the parent's work
    cache.detach().stft(512, 128)
    cache.affine(torch.ones(2, 1, 1), torch.zeros(2, 1, 1)).stft(256, 64)
    assert calls == [(512, 128), (256, 64)]


def test_detached_view_has_no_history_and_same_values() -> None:
    x = _noise((2, 1, 3000)).requires_grad_()
    cache = dsp.SpectrogramCache(x * 2)
    view = cache.detach()
    s = view.stft(1024, 256)
    assert s.grad_fn is None and not s.requires_grad
    assert cache.stft(1024, 256).requires_grad
    torch.testing.assert_close(s, cache.stft(1024, 256).detach())


@pytest.mark.parametrize("n_fft", [2048, 512, 32])
def test_affine_view_equals_stft_of_normalised_signal(n_fft: int) -> None:
    x = (0.3 * _noise((3, 1, 5000), seed=2) + 0.2).double().requires_grad_()
    shift = x.mean(-1, keepdim=True)
    scale = 0.8 / (x - shift).abs().amax(-1, keepdim=True)
    direct = dsp.stft(scale * (x - shift), n_fft, n_fft // 4)
    derived = dsp.SpectrogramCache(x).affine(scale, shift).stft(n_fft, n_fft // 4)
    torch.testing.assert_close(derived, direct, atol=1e-9, rtol=1e-9)
    # gradients through the derived spectra equal those through a fresh STFT
    probe = _noise(direct.shape, seed=3).double()
    (g_direct,) = torch.autograd.grad((direct.abs() * probe).sum(), x, retain_graph=True)
    (g_derived,) = torch.autograd.grad((derived.abs() * probe).sum(), x)
    torch.testing.assert_close(g_derived, g_direct, atol=1e-8, rtol=1e-6)


def test_window_spectrum_support_is_two_bins_for_hann() -> None:
    w, support = dsp.window_spectrum(1024)
    assert support == 2
    assert w[0].real.item() == pytest.approx(512.0)
    assert w[1].real.item() == pytest.approx(-256.0)
    assert dsp.window_spectrum(1024)[0] is w


def test_mel_spectrogram_matches_librosa() -> None:
    x = _noise((1, 1, 4000), seed=4).double()
    mel = dsp.mel_spectrogram(x, 16000, 512, 128, 40)
    spec = np.abs(librosa.stft(x.numpy()[0, 0], n_fft=512, hop_length=128, window="hann",
                               center=True, pad_mode="reflect"))
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40) @ spec
    np.testing.assert_allclose(mel[0, 0].numpy(), ref, rtol=1e-4, atol=1e-6)


def test_downsample_keeps_passband_and_rejects_aliases() -> None:
    sr = 16000
    t = torch.arange(sr, dtype=torch.float64) / sr

    def gain(freq: float, factor: int) -> float:
        y = dsp.downsample(torch.sin(2 * torch.pi * freq * t)[None, None], factor)
        assert y.shape[-1] == -(-sr // factor)
        mid = y[..., 500:-500]
        return float(mid.pow(2).mean().sqrt() * 2**0.5)

    assert gain(1000, 2) == pytest.approx(1.0, abs=0.01)
    assert gain(6000, 2) < 1e-3  # above the new Nyquist (4 kHz): would alias
    assert gain(1000, 4) == pytest.approx(1.0, abs=0.01)
    assert gain(3000, 4) < 1e-3
    assert dsp.downsample(t[None, None], 1) is not None


def test_cat_cache_concatenates_parts_spectra_without_recomputing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = _noise((2, 1, 3000), seed=5), _noise((3, 1, 3000), seed=6).requires_grad_()
    ca, cb = dsp.SpectrogramCache(a), dsp.SpectrogramCache(b)
    sa, sb = ca.stft(512, 128), cb.stft(512, 128)
    calls = []
    real_stft = dsp.stft
    monkeypatch.setattr(dsp, "stft", lambda *args: calls.append(args[1:]) or real_stft(*args))
    both = dsp.SpectrogramCache.cat([ca, cb.detach()])
    assert both.shape == (5, 1, 3000) and not both.audio.requires_grad
    s = both.stft(512, 128)
    assert calls == []  # built from the parts' spectra
    torch.testing.assert_close(s, torch.cat([sa, sb.detach()]))
    assert s.transpose(-1, -2).is_contiguous()  # frames-major, like a fresh STFT
    torch.testing.assert_close(both.stft(256, 64), real_stft(both.audio, 256, 64))
