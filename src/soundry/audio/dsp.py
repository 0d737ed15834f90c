"""STFT, mel and resampling helpers shared by losses, discriminators and metrics.

Conventions (the same as DAC / audiotools, so losses and metrics match published figures):

- Window: periodic Hann of length `n_fft` (`torch.hann_window(n_fft, periodic=True)`, which
  equals `scipy.signal.get_window("hann", n_fft)`, audiotools' default window).
- STFT: `torch.stft(center=True, pad_mode="reflect")`, window length = n_fft, complex output
  `[B, C, n_fft // 2 + 1, 1 + T // hop]`; frame `j` is centred on sample `j * hop`.
- Mel filterbank: `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False,
  norm="slaney")` (librosa's defaults, as audiotools uses them); `fmax=None` means sr / 2.

Windows, window spectra, mel filterbanks and resampling kernels are built once per
(parameters, device, dtype) and cached: repeated calls return the same tensor object, so a
training step never rebuilds or re-uploads them.

`SpectrogramCache` wraps one signal and computes each (n_fft, hop) STFT lazily and once, so
the mel loss, the STFT loss and the multi-band discriminator share the same transforms. Its
`affine` view gives the spectra of `scale * (x - shift)` from those of `x` without another
STFT (the STFT is linear), which is how the discriminator's DC-removal and peak normalisation
reuse the generator loss's transforms.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from soundry.errors import ConfigError

_Key = tuple

_WINDOWS: dict[_Key, torch.Tensor] = {}
_WINDOW_SPECTRA: dict[_Key, tuple[torch.Tensor, int]] = {}
_MEL_BANKS: dict[_Key, torch.Tensor] = {}
_LOWPASS: dict[_Key, torch.Tensor] = {}


def _device_key(device: torch.device | str | None) -> torch.device:
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def hann_window(
    n_fft: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Periodic Hann window [n_fft], cached per (n_fft, device, dtype)."""
    key = (n_fft, _device_key(device), dtype)
    window = _WINDOWS.get(key)
    if window is None:
        window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=key[1])
        _WINDOWS[key] = window
    return window


def window_spectrum(
    n_fft: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, int]:
    """DFT of the analysis window, i.e. the STFT of a constant 1, and its support.

    Returns (W [k] complex, k) where bins >= k of the window's rfft are zero (to 1e-7 of the
    DC value): a periodic Hann window has only bins 0 and 1 (k = 2). With centred reflect
    padding every STFT frame of a constant c is exactly c * W, which lets
    `SpectrogramCache.affine` remove a DC offset from cached spectra.
    """
    key = (n_fft, _device_key(device), dtype)
    cached = _WINDOW_SPECTRA.get(key)
    if cached is None:
        window = hann_window(n_fft, key[1], dtype)
        spectrum = torch.fft.rfft(window.double())
        mag = spectrum.abs()
        support = int((mag > 1e-7 * mag[0]).nonzero().max()) + 1
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        cached = (spectrum[:support].to(complex_dtype), support)
        _WINDOW_SPECTRA[key] = cached
    return cached


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Slaney-style mel filterbank [n_mels, n_fft // 2 + 1], cached (librosa definition).

    Some small configurations (e.g. 320 mels on a 2048-point FFT at 16 kHz) have filters
    narrower than one FFT bin; librosa warns about the resulting empty filters. DAC's
    multi-scale mel loss uses exactly such configurations, so the warning is silenced here.
    """
    key = (sample_rate, n_fft, n_mels, float(fmin), fmax, _device_key(device), dtype)
    bank = _MEL_BANKS.get(key)
    if bank is None:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fb = librosa.filters.mel(
                sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                htk=False, norm="slaney", dtype=np.float64,
            )
        bank = torch.from_numpy(fb).to(device=key[-2], dtype=dtype)
        _MEL_BANKS[key] = bank
    return bank


def n_frames(length: int, hop: int) -> int:
    """Number of frames of a centred STFT of `length` samples."""
    return 1 + length // hop


def stft(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """Centred complex STFT of [..., T] audio -> [..., n_fft // 2 + 1, 1 + T // hop].

    The result is a view of a frames-major buffer ([..., frames, bins] contiguous), which
    is the layout both the mel matmul and the discriminator's convolutions want.
    """
    length = audio.shape[-1]
    if length <= n_fft // 2:
        raise ConfigError(
            f"a signal of {length} samples is too short for an STFT window of {n_fft} "
            f"(reflect padding needs more than {n_fft // 2}); use longer segments or "
            "smaller windows"
        )
    if audio.dtype in (torch.float16, torch.bfloat16):
        audio = audio.float()  # FFTs run in fp32 (CPU has no half-precision FFT)
    lead = audio.shape[:-1]
    window = hann_window(n_fft, audio.device, audio.dtype)
    spec = torch.stft(
        audio.reshape(-1, length), n_fft, hop, window=window, center=True,
        pad_mode="reflect", return_complex=True,
    )
    return spec.reshape(*lead, spec.shape[-2], spec.shape[-1])


def mel_spectrogram(
    audio: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Magnitude (power 1) mel spectrogram of [..., T] audio -> [..., n_mels, frames]."""
    return SpectrogramCache(audio).mel(sample_rate, n_fft, hop, n_mels, fmin, fmax)


class SpectrogramCache:
    """Lazily computed, memoised spectra of one signal [B, C, T].

    `stft(n_fft, hop)` is computed on first request and returned from memory afterwards;
    `magnitude` and `mel` are memoised the same way. Share one cache per signal between
    every consumer of a training step (mel loss, STFT loss, multi-band discriminator).

    Derived views share the parent's work instead of recomputing it:

    - `SpectrogramCache.cat(parts)`: the batch concatenation of several caches;
    - `detach()`: the same spectra without autograd history (for the discriminator update
      on a generated signal whose generator graph is still needed later);
    - `affine(scale, shift)`: spectra of `scale * (x - shift)` with per-item `scale`,
      `shift` of shape [B, C, 1], derived as `scale * (S - shift * W)` where W is the
      window's DFT (exact: the STFT is linear and reflect padding maps a constant to itself).
    """

    def __init__(self, audio: torch.Tensor) -> None:
        if audio.dim() != 3:
            raise ValueError(f"SpectrogramCache expects audio [B, C, T], got {tuple(audio.shape)}")
        self._audio = audio
        self._stft: dict[tuple[int, int], torch.Tensor] = {}
        self._mag: dict[tuple[int, int], torch.Tensor] = {}
        self._mel: dict[_Key, torch.Tensor] = {}

    @property
    def audio(self) -> torch.Tensor:
        """The signal [B, C, T] these spectra describe."""
        return self._audio

    @property
    def shape(self) -> torch.Size:
        return self._audio.shape

    def _compute_stft(self, n_fft: int, hop: int) -> torch.Tensor:
        return stft(self._audio, n_fft, hop)

    def stft(self, n_fft: int, hop: int) -> torch.Tensor:
        """Complex STFT [B, C, n_fft // 2 + 1, 1 + T // hop] (computed once)."""
        key = (n_fft, hop)
        spec = self._stft.get(key)
        if spec is None:
            spec = self._compute_stft(n_fft, hop)
            self._stft[key] = spec
        return spec

    def magnitude(self, n_fft: int, hop: int) -> torch.Tensor:
        """|STFT| [B, C, bins, frames] (computed once)."""
        key = (n_fft, hop)
        mag = self._mag.get(key)
        if mag is None:
            mag = self.stft(n_fft, hop).abs()
            self._mag[key] = mag
        return mag

    def mel(
        self,
        sample_rate: int,
        n_fft: int,
        hop: int,
        n_mels: int,
        fmin: float = 0.0,
        fmax: float | None = None,
    ) -> torch.Tensor:
        """Mel spectrogram of the magnitude (power 1) [B, C, n_mels, frames] (computed once)."""
        key = (sample_rate, n_fft, hop, n_mels, float(fmin), fmax)
        mel = self._mel.get(key)
        if mel is None:
            mag = self.magnitude(n_fft, hop)
            bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, mag.device, mag.dtype)
            # Full precision even under autocast: log-mel losses need more than bf16's 3 digits.
            with torch.autocast(mag.device.type, enabled=False):
                # mag is frames-major: [.., frames, bins] @ [bins, mels] is one plain matmul.
                mel = torch.matmul(mag.transpose(-1, -2), bank.t()).transpose(-1, -2)
            self._mel[key] = mel
        return mel

    def detach(self) -> SpectrogramCache:
        """A view of the same spectra without autograd history (shares computed work)."""
        return _DetachedCache(self)

    @staticmethod
    def cat(parts: list[SpectrogramCache]) -> SpectrogramCache:
        """A cache of the batch concatenation of `parts`, built from their spectra.

        For scoring real and generated audio as one discriminator batch: each part's STFT
        is computed (once) by the part itself, where its other consumers (the mel loss)
        need it anyway, and the batch only concatenates the results.
        """
        if not parts:
            raise ValueError("SpectrogramCache.cat needs at least one part")
        return _CatCache(parts)

    def affine(
        self, scale: torch.Tensor, shift: torch.Tensor, audio: torch.Tensor | None = None
    ) -> SpectrogramCache:
        """Spectra of `scale * (audio - shift)`; `scale`, `shift` are [B, C, 1].

        `audio` may pass the already computed `scale * (self.audio - shift)`.
        """
        return _AffineCache(self, scale, shift, audio)


class _DetachedCache(SpectrogramCache):
    """Spectra of `parent.audio.detach()`, computed (once) by the parent."""

    def __init__(self, parent: SpectrogramCache) -> None:
        super().__init__(parent.audio.detach())
        self._parent = parent

    def _compute_stft(self, n_fft: int, hop: int) -> torch.Tensor:
        return self._parent.stft(n_fft, hop).detach()


class _CatCache(SpectrogramCache):
    """Spectra of `torch.cat([p.audio for p in parts])`, concatenated from the parts'."""

    def __init__(self, parts: list[SpectrogramCache]) -> None:
        super().__init__(torch.cat([p.audio for p in parts]))
        self._parts = parts

    def _compute_stft(self, n_fft: int, hop: int) -> torch.Tensor:
        # Concatenate in the frames-major layout the parts have, and keep it.
        spectra = [p.stft(n_fft, hop).transpose(-1, -2) for p in self._parts]
        return torch.cat(spectra).transpose(-1, -2)


class _AffineCache(SpectrogramCache):
    """Spectra of `scale * (parent.audio - shift)` derived from the parent's spectra."""

    def __init__(
        self,
        parent: SpectrogramCache,
        scale: torch.Tensor,
        shift: torch.Tensor,
        audio: torch.Tensor | None = None,
    ) -> None:
        super().__init__(scale * (parent.audio - shift) if audio is None else audio)
        self._parent = parent
        self._scale = scale
        self._shift = shift

    def _compute_stft(self, n_fft: int, hop: int) -> torch.Tensor:
        spec = self._parent.stft(n_fft, hop)
        w, support = window_spectrum(n_fft, spec.device, spec.real.dtype)
        scale = self._scale.unsqueeze(-1)  # [B, C, 1, 1]
        out = spec * scale
        # The DC offset only touches the window's few non-zero DFT bins (2 for Hann).
        # `out` is a fresh product not saved by autograd, so in-place update is safe.
        offset = (scale * self._shift.unsqueeze(-1)) * w.unsqueeze(-1)  # [B, C, k, 1]
        out[..., :support, :] -= offset
        return out


def _lowpass_kernel(
    factor: int, device: torch.device, dtype: torch.dtype, zeros: int = 24, rolloff: float = 0.945
) -> torch.Tensor:
    """Hann-windowed sinc low-pass [1, 1, 2W+1] for decimation by `factor` (cached)."""
    key = (factor, zeros, rolloff, _device_key(device), dtype)
    kernel = _LOWPASS.get(key)
    if kernel is None:
        cutoff = rolloff / factor  # in cycles per 2 samples (1 = Nyquist)
        half = math.ceil(zeros / cutoff)
        t = torch.arange(-half, half + 1, dtype=torch.float64)
        taps = cutoff * torch.sinc(cutoff * t) * torch.cos(math.pi * t / (2 * half + 2)) ** 2
        taps = taps / taps.sum()  # unit DC gain
        kernel = taps.to(device=key[-2], dtype=dtype).view(1, 1, -1)
        _LOWPASS[key] = kernel
    return kernel


def downsample(audio: torch.Tensor, factor: int) -> torch.Tensor:
    """Anti-aliased decimation of [B, C, T] audio by an integer factor -> [B, C, ceil(T/f)].

    A windowed-sinc low-pass (cut-off 0.945 of the new Nyquist, 24 zero crossings) applied
    with stride `factor`, edges padded by replication.
    """
    if factor == 1:
        return audio
    b, c, t = audio.shape
    kernel = _lowpass_kernel(factor, audio.device, audio.dtype)
    half = kernel.shape[-1] // 2
    x = F.pad(audio.reshape(b * c, 1, t), (half, half), mode="replicate")
    y = F.conv1d(x, kernel, stride=factor)
    return y.reshape(b, c, y.shape[-1])
