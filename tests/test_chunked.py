"""Chunked encode/decode: no seams against a whole-file pass, memory bounded by chunk size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fixtures.numerics import assert_codes_agree

from soundry.errors import SoundryError
from soundry.models.chunked import decode_chunked, encode_chunked, reconstruct_chunked
from soundry.models.codec import codec_from_preset


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides):
    torch.manual_seed(0)
    codec = codec_from_preset("tiny", **overrides)
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 2.0)
    return codec.eval()


def whole_file(codec, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        codes = codec.encode(audio[None])
        return codes, codec.decode_codes(codes)[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"channels": 2},
        {"causal": True},
        {"upsample_output_padding": False, "upsample": "transposed"},
    ],
    ids=["mono", "stereo", "causal", "dac-odd-stride"],
)
def test_chunked_pass_has_no_seams(overrides: dict) -> None:
    codec = tiny(**overrides)
    torch.manual_seed(1)
    seconds, chunk = 2.0, 0.3  # 7 chunks, 101 frames per channel
    audio = torch.randn(codec.channels, int(16000 * seconds) + 77) * 0.3
    ref_codes, ref_audio = whole_file(codec, audio)

    # Chunks run the convs on other lengths, so other kernel blockings: the latents agree to
    # float32 rounding and the codes up to argmax ties (see fixtures.numerics); decoding is
    # compared through the same codes, to 1e-4 on outputs of order 1.
    codes = encode_chunked(codec, audio, chunk_seconds=chunk)
    assert codes.shape == ref_codes.shape
    assert_codes_agree(codes, ref_codes)
    audio_out = decode_chunked(codec, ref_codes, chunk_seconds=chunk)
    assert audio_out.shape == ref_audio.shape
    assert ref_audio.abs().mean() > 0.01
    assert (audio_out - ref_audio).abs().max() < 1e-4
    rec = reconstruct_chunked(codec, audio, chunk_seconds=chunk)
    assert rec.shape == audio.shape
    with torch.inference_mode():
        rec_ref = codec.decode_codes(codes)[0]  # the codes reconstruct_chunked makes
    assert (rec - rec_ref[:, : audio.shape[-1]]).abs().max() < 1e-4


def test_level_prefixes_and_mode_restore() -> None:
    codec = tiny()
    codec.train()
    audio = torch.randn(1, 16000) * 0.3
    codes = encode_chunked(codec, audio, chunk_seconds=0.25, n_levels=2)
    assert codes.shape == (1, 2, 50)
    assert codec.training  # the caller's mode is restored
    codec.eval()
    ref_codes, _ = whole_file(codec, audio)
    assert_codes_agree(codes, ref_codes[:, :2])  # chunks: other kernel paths
    with torch.inference_mode():
        ref = codec.decode_codes(ref_codes[:, :2])[0]
    assert (decode_chunked(codec, codes, chunk_seconds=0.25) - ref).abs().max() < 1e-4


def test_too_little_context_would_show_seams(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seam test can fail: with the context cut short the chunks disagree."""
    import soundry.models.chunked as chunked

    codec = tiny()
    audio = torch.randn(1, 16000) * 0.3
    ref_codes, ref_audio = whole_file(codec, audio)
    monkeypatch.setattr(chunked, "MARGIN_FRAMES", -4)
    out = decode_chunked(codec, ref_codes, chunk_seconds=0.2)
    assert (out - ref_audio).abs().max() > 1e-3


def test_bad_inputs() -> None:
    codec = tiny()
    with pytest.raises(SoundryError, match="channel"):
        encode_chunked(codec, torch.randn(2, 1000))
    with pytest.raises(SoundryError):
        decode_chunked(codec, torch.zeros(1, 2, 10, dtype=torch.long), chunk_seconds=0)


PEAK_RSS = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from soundry.models.codec import codec_from_preset
    from soundry.models.chunked import reconstruct_chunked
    seconds, mode = float(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    codec = codec_from_preset("tiny").eval()
    audio = torch.randn(1, int(16000 * seconds)) * 0.3
    if mode == "chunked":
        out = reconstruct_chunked(codec, audio, chunk_seconds=0.5)
    else:
        with torch.inference_mode():
            out = codec.decode_codes(codec.encode(audio[None]))
    # VmHWM: this program's peak resident memory (ru_maxrss would also count the memory
    # of the parent process at fork time).
    status = open("/proc/self/status").read()
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(json.dumps({"peak_mb": peak_mb, "n": out.shape[-1]}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_file_length(tmp_path) -> None:
    """Peak RSS (a real measurement, in fresh processes) for 2 s and 8 s of audio.

    Every process imports the same modules and builds the same model, so differences in
    peak RSS are what the pass itself needed.
    """
    script = tmp_path / "peak.py"
    script.write_text(PEAK_RSS)
    # A fixed mmap threshold makes glibc return freed large blocks at once, so the peak
    # reflects live memory rather than the allocator's adaptive caching.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    runs = [("chunked", 2.0), ("chunked", 8.0), ("whole", 8.0)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(seconds), mode],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for mode, seconds in runs
    ]
    peaks = {}
    for run, proc in zip(runs, procs, strict=True):
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        peaks[run] = json.loads(stdout.strip().splitlines()[-1])["peak_mb"]
    chunked_growth = peaks["chunked", 8.0] - peaks["chunked", 2.0]
    whole_excess = peaks["whole", 8.0] - peaks["chunked", 8.0]
    # 6 more seconds of input and output are < 1 MB; the chunk activations must not scale.
    assert chunked_growth < 8.0, peaks
    # A whole-file pass of the long file does need more (so the measurement can tell).
    assert whole_excess > 25.0, peaks
