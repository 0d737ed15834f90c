"""Audio reading, writing and resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from soundry.audio.io import audio_info, read_audio, resample, write_audio
from soundry.errors import DataError


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def test_write_read_roundtrip_and_info(tmp_path):
    x = np.stack([_sine(440, 8000, 0.5), _sine(660, 8000, 0.5, 0.25)])
    write_audio(tmp_path / "a.wav", x, 8000, subtype="FLOAT")
    y, sr = read_audio(tmp_path / "a.wav")
    assert sr == 8000 and y.dtype == np.float32 and y.shape == (2, 4000)
    np.testing.assert_array_equal(y, x)
    info = audio_info(tmp_path / "a.wav")
    assert (info.sample_rate, info.channels, info.frames) == (8000, 2, 4000)
    assert info.duration == pytest.approx(0.5)

    write_audio(tmp_path / "a.flac", x, 8000)  # 16-bit FLAC
    z, _ = read_audio(tmp_path / "a.flac")
    assert np.max(np.abs(z - x)) < 2 / 32768
    assert sf.info(str(tmp_path / "a.flac")).subtype == "PCM_16"


def test_partial_read_returns_the_requested_frames(tmp_path):
    x = np.arange(1000, dtype=np.float32) / 1000.0
    write_audio(tmp_path / "ramp.wav", x[None], 8000, subtype="FLOAT")
    y, _ = read_audio(tmp_path / "ramp.wav", offset=250, frames=100)
    np.testing.assert_array_equal(y[0], x[250:350])
    tail, _ = read_audio(tmp_path / "ramp.wav", offset=950, frames=100)
    assert tail.shape == (1, 50)  # past the end: what is there
    write_audio(tmp_path / "ramp.flac", x[None] * 0.5, 8000)
    z, _ = read_audio(tmp_path / "ramp.flac", offset=700, frames=10)
    assert np.allclose(z[0], x[700:710] * 0.5, atol=1e-4)


def test_channel_mixing_and_duplication(tmp_path):
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.1)]).astype(np.float32)
    write_audio(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    mono, _ = read_audio(tmp_path / "s.wav", channels=1)
    assert mono.shape == (1, 100) and np.allclose(mono, 0.2)
    write_audio(tmp_path / "m.wav", stereo[:1], 8000, subtype="FLOAT")
    dup, _ = read_audio(tmp_path / "m.wav", channels=2)
    assert dup.shape == (2, 100) and np.array_equal(dup[0], dup[1])


@pytest.mark.parametrize("sr_in,sr_out", [(16000, 8000), (8000, 22050), (44100, 16000)])
def test_resampled_sine_keeps_frequency_and_length_ratio(sr_in, sr_out):
    x = _sine(440.0, sr_in, 1.0)[None]
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32 and y.shape[0] == 1
    assert y.shape[1] == round(x.shape[1] * sr_out / sr_in)
    assert abs(_peak_freq(y[0], sr_out) - 440.0) <= 1.5
    assert np.sqrt(np.mean(y**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_read_with_resampling(tmp_path):
    write_audio(tmp_path / "t.wav", _sine(300, 16000, 0.5)[None], 16000)
    y, sr = read_audio(tmp_path / "t.wav", sample_rate=8000)
    assert sr == 8000 and y.shape == (1, 4000)
    assert abs(_peak_freq(y[0], 8000) - 300) <= 2.5


def test_write_is_atomic_and_checks_extension(tmp_path):
    target = tmp_path / "out.wav"
    write_audio(target, np.zeros((1, 10)), 8000)
    before = target.read_bytes()
    with pytest.raises(ValueError):  # soundfile rejects the subtype
        write_audio(target, np.ones((1, 10)), 8000, subtype="NOT_A_SUBTYPE")
    assert target.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left
    with pytest.raises(DataError, match="extension"):
        write_audio(tmp_path / "x.mp4", np.zeros((1, 10)), 8000)
    write_audio(tmp_path / "clip.wav", np.full((1, 4), 3.0), 8000)  # clipped for PCM
    assert np.allclose(read_audio(tmp_path / "clip.wav")[0], 32767 / 32768)


def test_ogg_vorbis_partial_read(tmp_path):
    path = tmp_path / "t.ogg"
    sf.write(str(path), _sine(500, 16000, 1.0), 16000, format="OGG", subtype="VORBIS")
    y, sr = read_audio(path, offset=8000, frames=4000)
    assert sr == 16000 and y.shape == (1, 4000)
    assert abs(_peak_freq(y[0], sr) - 500) < 5


def test_unreadable_files_raise_data_error(tmp_path):
    (tmp_path / "text.wav").write_text("hello")
    with pytest.raises(DataError, match="text.wav"):
        read_audio(tmp_path / "text.wav")
    with pytest.raises(DataError):
        audio_info(tmp_path / "missing.wav")
