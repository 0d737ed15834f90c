"""Text-to-speech metrics that need no downloaded model: mel cepstra, DTW-aligned mel
cepstral distortion (MCD), a mean-cepstrum voice signature and duration error.

All audio is mono float [T] at `sample_rate` Hz (any scale: the measures are level
independent apart from the silence gate). Cepstra are DCT-II (orthonormal) of natural-log
mel filterbank AMPLITUDES (half the log of the band energies), the convention under which
`(10 / ln 10) * sqrt(2 * sum_d diff_d ** 2)` is the usual MCD in dB.

Scale: an orthonormal DCT over `n_mels` bands gives coefficients sqrt(2 * n_mels) times
those of the cepstrum c_n of log|X(w)| = c_0 + 2 sum_n c_n cos(n w) (the SPTK convention
MCD is defined on), so `dtw_mcd` divides by that factor. Even so the values are close to,
not equal to, SPTK's (mel filterbank instead of an all-pass warped cepstrum; no
pitch-synchronous analysis): compare them with each other (same n_mels, n_coeffs, frames).
"""

from __future__ import annotations

import math

import numpy as np

from soundry.audio.dsp import mel_filterbank

SILENCE_DB = 40.0  # frames this far below the loudest one are silence
_POWER_FLOOR = 1e-15  # band energy floor (-150 dB) before the log
_MIN_PEAK = 1e-6  # audio whose peak is below this (-120 dBFS) counts as silent
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def _check_audio(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"{name}: expected mono audio of shape [T], got {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{name}: empty audio")
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{name}: audio has NaN or infinite samples")
    if np.abs(audio).max() < _MIN_PEAK:
        raise ValueError(f"{name}: silent audio (peak below -120 dBFS)")
    return audio


def _dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis [n_in, n_out]: `x @ basis` is the DCT of x's last axis."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis


def mel_cepstrum(
    audio: np.ndarray,
    sample_rate: int,
    n_coeffs: int = 13,
    n_mels: int = 40,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
) -> np.ndarray:
    """Mel cepstrum of mono audio [T] -> [frames, n_coeffs].

    Hann-windowed frames of `frame_ms` every `hop_ms` (no centring; a clip shorter than
    one frame is zero-padded to one), power spectrum normalised by the window's sum
    squared, Slaney mel filterbank of `n_mels` bands over 0..sample_rate/2, natural log of
    the band amplitudes (0.5 * ln energy, floored at -150 dB), then an orthonormal DCT-II.
    Coefficient 0 is the frame's energy (sqrt(n_mels) times its mean log band amplitude).
    Raises ValueError on empty, non-finite or silent audio.
    """
    audio = _check_audio(audio)
    if not 1 <= n_coeffs <= n_mels:
        raise ValueError(f"n_coeffs must be in 1..n_mels ({n_mels}), got {n_coeffs}")
    frame = max(1, round(sample_rate * frame_ms / 1000))
    hop = max(1, round(sample_rate * hop_ms / 1000))
    n_fft = 1 << (frame - 1).bit_length()
    if audio.size < frame:
        audio = np.pad(audio, (0, frame - audio.size))
    n = 1 + (audio.size - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop][:n]
    window = np.hanning(frame + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2 / window.sum() ** 2
    bank = mel_filterbank(sample_rate, n_fft, n_mels).double().numpy()  # [n_mels, bins]
    log_amp = 0.5 * np.log(np.maximum(power @ bank.T, _POWER_FLOOR))  # [frames, n_mels]
    return log_amp @ _dct_matrix(n_mels, n_coeffs)


def speech_frames(
    ceps: np.ndarray, n_mels: int = 40, floor_db: float = SILENCE_DB
) -> np.ndarray:
    """The non-silent rows of a mel cepstrum [frames, n_coeffs] -> [kept, n_coeffs].

    A frame is silent when its level (mean log mel band amplitude, from c0, in dB) is more
    than `floor_db` below the loudest frame's. `n_mels` must be the filterbank size the
    cepstrum was computed with. Raises ValueError when there are no frames or every frame
    is at the numerical floor (digital silence).
    """
    ceps = np.asarray(ceps, dtype=np.float64)
    if ceps.ndim != 2 or ceps.shape[0] == 0:
        raise ValueError(f"expected a non-empty cepstrum [frames, n_coeffs], got {ceps.shape}")
    level_db = ceps[:, 0] / math.sqrt(n_mels) * (20.0 / math.log(10.0))
    floor = 10.0 * math.log10(_POWER_FLOOR)
    if level_db.max() <= floor + 1e-6:
        raise ValueError("silent input: every frame is at the energy floor")
    return ceps[level_db >= level_db.max() - floor_db]


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost monotonic alignment of a cost matrix [N, M] (steps (1,0), (0,1), (1,1)).

    Returns the path [(0, 0), ..., (N - 1, M - 1)] as (row, column) pairs; on equal
    accumulated costs the backtrack prefers the diagonal step. Each row of the accumulated
    cost is computed with array operations (a running minimum over prefix sums), so a
    500 x 500 matrix takes a few milliseconds.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"expected a non-empty cost matrix [N, M], got {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost matrix has NaN or infinite entries")
    n, m = cost.shape
    acc = np.empty((n, m))
    acc[0] = np.cumsum(cost[0])
    for i in range(1, n):
        row = cost[i]
        # best arrival from the row above: straight down or diagonally
        above = acc[i - 1].copy()
        above[1:] = np.minimum(above[1:], acc[i - 1, :-1])
        entry = row + above
        # then horizontal moves: acc[i, j] = min_k<=j (entry[k] + sum(row[k+1..j]))
        prefix = np.cumsum(row)
        acc[i] = prefix + np.minimum.accumulate(entry - prefix)
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        if i == 0:
            j -= 1
        elif j == 0:
            i -= 1
        else:
            diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            if diag <= up and diag <= left:
                i, j = i - 1, j - 1
            elif up <= left:
                i -= 1
            else:
                j -= 1
        path.append((i, j))
    return path[::-1]


def dtw_mcd(
    a: np.ndarray, b: np.ndarray, sample_rate: int, n_coeffs: int = 13, n_mels: int = 40
) -> float:
    """Mel cepstral distortion in dB between two mono clips [T_a], [T_b], DTW-aligned.

    Silent frames are dropped from each clip, the clips' cepstra (coefficients
    1..n_coeffs-1; c0, the energy, is excluded) are aligned by DTW on their euclidean
    distance, and `(10 / ln 10) * sqrt(2 * sum_d (c_a,d - c_b,d) ** 2)` is averaged over
    the aligned pairs. 0 for identical clips; symmetric up to DTW tie-breaking.
    """
    ca = speech_frames(mel_cepstrum(a, sample_rate, n_coeffs, n_mels), n_mels)[:, 1:]
    cb = speech_frames(mel_cepstrum(b, sample_rate, n_coeffs, n_mels), n_mels)[:, 1:]
    dist = np.sqrt(np.maximum(
        (ca**2).sum(1)[:, None] + (cb**2).sum(1)[None, :] - 2.0 * ca @ cb.T, 0.0))
    path = dtw_path(dist)
    rows, cols = np.array(path).T
    pairs = np.sqrt(((ca[rows] - cb[cols]) ** 2).sum(1))  # exact, not the expanded form
    return float(_MCD_SCALE * pairs.mean() / math.sqrt(2.0 * n_mels))


def mean_cepstrum(
    audio: np.ndarray, sample_rate: int, n_coeffs: int = 13, n_mels: int = 40
) -> np.ndarray:
    """Voice signature of a mono clip [T]: mean of cepstral coefficients 1..n_coeffs-1
    over its non-silent frames -> [n_coeffs - 1] (natural-log amplitude units)."""
    ceps = speech_frames(mel_cepstrum(audio, sample_rate, n_coeffs, n_mels), n_mels)
    return ceps[:, 1:].mean(axis=0)


def nearest_voice(signature: np.ndarray, voices: dict[str, np.ndarray]) -> str:
    """Name of the voice whose signature [D] is nearest (euclidean) to `signature` [D]."""
    if not voices:
        raise ValueError("no voices to compare with")
    signature = np.asarray(signature, dtype=np.float64)
    best, best_d = "", math.inf
    for name, ref in voices.items():
        ref = np.asarray(ref, dtype=np.float64)
        if ref.shape != signature.shape:
            raise ValueError(f"voice {name!r}: signature shape {ref.shape} != "
                             f"{signature.shape}")
        d = float(np.linalg.norm(signature - ref))
        if d < best_d:
            best, best_d = name, d
    return best


def duration_error(predicted_frames: float, reference_frames: float) -> float:
    """Relative duration error |p - r| / r (unitless; any consistent unit: frames, s)."""
    if reference_frames <= 0:
        raise ValueError(f"reference duration must be positive, got {reference_frames}")
    if predicted_frames < 0:
        raise ValueError(f"predicted duration must be non-negative, got {predicted_frames}")
    return abs(predicted_frames - reference_frames) / reference_frames
