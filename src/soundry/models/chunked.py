"""Encode and decode long audio in overlapping chunks: bounded memory, no seams.

A chunk of `chunk_seconds` (rounded to whole frames) is processed together with enough
context on each side that every kept output depends only on real input, never on a chunk
edge. The context comes from the codec's exact receptive field (`Codec.receptive_field()`)
plus one frame of margin, so a chunked pass equals a whole-file pass up to float rounding
(different conv lengths may pick different kernels). Chunk starts lie on frame boundaries,
so every chunk sees the same frame grid as the whole file; the first and last chunks see the
file's own edges, which the whole-file pass pads in the same way.

Memory holds one chunk's activations at a time (plus the input, the codes and the output),
so it does not grow with file length.

Shapes: audio [C, T] (the codec's channel count), codes [C, K, F].
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from soundry.errors import SoundryError

# Margin in frames on top of the exact receptive field: it also covers upsampling layers that
# drop their last sample (DAC-compatible odd strides without output padding).
MARGIN_FRAMES = 1


@contextlib.contextmanager
def _inference(codec: Any) -> Iterator[None]:
    """Eval mode and no autograd for the block; the codec's mode is restored afterwards."""
    was_training = codec.training
    codec.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        codec.train(was_training)


def _chunk_frames(codec: Any, chunk_seconds: float) -> int:
    if chunk_seconds <= 0:
        raise SoundryError(f"chunk_seconds must be positive, got {chunk_seconds}")
    return max(1, round(chunk_seconds * codec.frame_rate))


def _check_audio(codec: Any, audio: torch.Tensor) -> torch.Tensor:
    if audio.dim() != 2:
        raise SoundryError(f"audio must be [channels, time], got {tuple(audio.shape)}")
    if audio.shape[0] != codec.channels:
        raise SoundryError(
            f"the codec takes {codec.channels} channel(s), the audio has {audio.shape[0]}"
        )
    return audio


def _device(codec: Any) -> torch.device:
    return next(codec.parameters()).device


def encode_chunked(
    codec: Any,
    audio: torch.Tensor,
    chunk_seconds: float = 10.0,
    n_levels: int | None = None,
) -> torch.Tensor:
    """Audio [C, T] -> codes [C, n_levels, ceil(T / hop)] (long, on the CPU)."""
    audio = _check_audio(codec, audio)
    hop = codec.hop_length
    frames = math.ceil(audio.shape[-1] / hop)
    chunk = _chunk_frames(codec, chunk_seconds)
    left, right = codec.receptive_field().encoder_context_frames()
    left, right = left + MARGIN_FRAMES, right + MARGIN_FRAMES
    device = _device(codec)
    out = []
    with _inference(codec):
        for f0 in range(0, frames, chunk):
            f1 = min(frames, f0 + chunk)
            a, b = max(0, f0 - left), min(frames, f1 + right)
            piece = audio[:, a * hop : b * hop].to(device=device, dtype=torch.float32)
            # The last chunk may be shorter than b * hop; the codec pads it like the whole file.
            codes = codec.encode(piece[None], n_levels)  # [C, K, b - a]
            out.append(codes[:, :, f0 - a : f1 - a].cpu())
    return torch.cat(out, dim=-1)


def decode_chunked(
    codec: Any,
    codes: torch.Tensor,
    chunk_seconds: float = 10.0,
) -> torch.Tensor:
    """Codes [C, K', F] (any level prefix) -> audio [C, F * hop] (float32, on the CPU)."""
    if codes.dim() != 3 or codes.shape[0] != codec.channels:
        raise SoundryError(
            f"codes must be [channels={codec.channels}, levels, frames], got {tuple(codes.shape)}"
        )
    hop = codec.hop_length
    frames = codes.shape[-1]
    chunk = _chunk_frames(codec, chunk_seconds)
    rf = codec.receptive_field()
    left, right = rf.decoder_left + MARGIN_FRAMES, rf.decoder_right + MARGIN_FRAMES
    device = _device(codec)
    out = []
    with _inference(codec):
        for f0 in range(0, frames, chunk):
            f1 = min(frames, f0 + chunk)
            a, b = max(0, f0 - left), min(frames, f1 + right)
            wave = codec.decode_codes(codes[:, :, a:b].to(device).long())  # [1, C, (b-a) hop]
            out.append(wave[0, :, (f0 - a) * hop : (f1 - a) * hop].float().cpu())
    return torch.cat(out, dim=-1)


def reconstruct_chunked(
    codec: Any,
    audio: torch.Tensor,
    chunk_seconds: float = 10.0,
    n_levels: int | None = None,
) -> torch.Tensor:
    """Audio [C, T] -> decode(encode(audio)) [C, T], chunk by chunk."""
    codes = encode_chunked(codec, audio, chunk_seconds, n_levels)
    return decode_chunked(codec, codes, chunk_seconds)[:, : audio.shape[-1]]
