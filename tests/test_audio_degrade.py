"""On-the-fly degradations (`data.degrade`): each one does what it says (measured on the
output), keeps length and alignment, is seeded, and bad settings are clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundry.audio import degrade as dg
from soundry.audio.degrade import DEGRADATIONS, Degrader
from soundry.config import validate
from soundry.data.config import DegradeConfig
from soundry.errors import ConfigError

SR = 16000
OFF = {"noise": {"prob": 0.0}, "lowpass": {"prob": 0.0}, "clip": {"prob": 0.0},
       "gain": {"prob": 0.0}}


def tone(f0: float = 220.0, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    """A harmonic tone [1, T] (three partials) at f0 Hz."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(a * np.sin(2 * np.pi * k * f0 * t + k) for k, a in ((1, 0.3), (2, 0.15), (3, 0.08)))
    return x.astype(np.float32)[None]


def degrader(**sections: dict) -> Degrader:
    return Degrader(validate(DegradeConfig, {**OFF, **sections}, source="test"), SR)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))


def f0_of(x: np.ndarray, lo: float = 100.0, hi: float = 400.0) -> float:
    spec = np.abs(np.fft.rfft(x[0] * np.hanning(x.shape[-1]), n=16 * x.shape[-1]))
    f = np.fft.rfftfreq(16 * x.shape[-1], 1 / SR)
    band = (f > lo) & (f < hi)
    return float(f[band][np.argmax(spec[band])])


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x[0])) ** 2
    f = np.fft.rfftfreq(x.shape[-1], 1 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def test_every_section_is_a_registered_degradation() -> None:
    names = set(DEGRADATIONS.names())
    assert names == set(DegradeConfig().order) == set(dg.DEGRADATIONS.names())


@pytest.mark.parametrize("colour", ["white", "pink", "brown", "blue", "violet"])
def test_noise_reaches_the_drawn_snr(colour: str) -> None:
    d = degrader(noise={"prob": 1.0, "min_snr_db": 0, "max_snr_db": 10, "colours": [colour]})
    x = tone()
    for seed in range(4):
        params = d.draw(np.random.default_rng(seed))
        assert params["noise"]["colour"] == colour
        y = d.apply(x, params)
        assert snr_db(x, y) == pytest.approx(params["noise"]["snr_db"], abs=0.5)


def test_noise_colours_tilt_the_spectrum() -> None:
    rng = np.random.default_rng(0)
    tilt = {c: np.log10(band_energy(dg.coloured_noise((1, SR), c, rng), 4000, 8000)
                        / band_energy(dg.coloured_noise((1, SR), c, rng), 100, 200))
            for c in ("violet", "blue", "white", "pink", "brown")}
    values = list(tilt.values())  # 40x wider high band: white is ~log10(40) = 1.6
    assert values == sorted(values, reverse=True)
    assert tilt["white"] == pytest.approx(np.log10(40), abs=0.3)


def test_noise_from_a_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(2):  # shorter than the clip: looped
        sf.write(tmp_path / f"n{i}.wav", rng.standard_normal(SR // 3) * 0.1, SR)
    sf.write(tmp_path / "n2.flac", rng.standard_normal(SR) * 0.1, 22050)  # resampled
    d = degrader(noise={"prob": 1.0, "min_snr_db": 3, "max_snr_db": 3,
                        "folder": str(tmp_path)})
    x = tone()
    files = set()
    for seed in range(6):
        params = d.draw(np.random.default_rng(seed))
        files.add(params["noise"]["file"])
        y = d.apply(x, params)
        assert y.shape == x.shape and snr_db(x, y) == pytest.approx(3.0, abs=0.5)
    assert len(files) > 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no audio file"):
        degrader(noise={"prob": 1.0, "folder": str(tmp_path / "empty")})


@pytest.mark.parametrize("method", ["butterworth", "resample"])
def test_lowpass_removes_energy_above_its_cutoff(method: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, SR)) * 0.1).astype(np.float32)
    d = degrader(lowpass={"prob": 1.0, "min_hz": 2000, "max_hz": 2000, "method": method})
    params = d.draw(np.random.default_rng(0))
    assert params["lowpass"] == {"cutoff_hz": 2000.0, "method": method}
    y = d.apply(x, params)
    assert y.shape == x.shape
    assert band_energy(y, 3000, 8000) < 1e-3 * band_energy(x, 3000, 8000)
    assert band_energy(y, 100, 1500) > 0.8 * band_energy(x, 100, 1500)
    lag = np.argmax(np.correlate(y[0, 4000:12000], x[0, 4000:12000], "full")) - 7999
    if method == "resample":  # a linear-phase resampler: no shift
        assert lag == 0


@pytest.mark.parametrize("semitones", [3.0, -2.5, 7.0])
def test_pitch_shift_keeps_length_level_and_round_trips(semitones: float) -> None:
    x = tone(220.0)
    d = degrader(pitch={"prob": 1.0, "min_semitones": semitones, "max_semitones": semitones})
    y = d.apply(x, d.draw(np.random.default_rng(0)))
    assert y.shape == x.shape
    assert f0_of(y) == pytest.approx(220.0 * 2 ** (semitones / 12), rel=0.005)
    mid = slice(2000, -2000)
    assert np.sqrt(np.mean(y[:, mid] ** 2)) == pytest.approx(np.sqrt(np.mean(x[:, mid] ** 2)),
                                                             rel=0.1)
    back = dg.pitch_shift_keep_length(y, SR, -semitones)
    assert f0_of(back) == pytest.approx(220.0, rel=0.005)


def test_time_stretch_keeps_level_and_pitch() -> None:
    x = tone(260.0)
    for factor in (0.8, 1.5):
        y = dg.time_stretch(x, factor)
        assert y.shape[-1] == round(x.shape[-1] * factor)
        assert f0_of(y) == pytest.approx(260.0, rel=0.005)
        level = np.sqrt(np.mean(y[:, 3000:-3000] ** 2)) / np.sqrt(np.mean(x ** 2))
        assert level == pytest.approx(1.0, abs=0.05)


def schroeder_rt60(ir: np.ndarray) -> float:
    """RT60 from the -5 to -25 dB slope of the backward-integrated energy (T20 x 3)."""
    energy = np.cumsum(ir[::-1] ** 2)[::-1]
    db = 10 * np.log10(energy / energy[0] + 1e-30)
    return 3 * (np.argmax(db < -25) - np.argmax(db < -5)) / SR


def test_synthetic_reverb_has_the_drawn_rt60_and_keeps_the_direct_path() -> None:
    d = degrader(reverb={"prob": 1.0, "min_rt60": 0.3, "max_rt60": 0.9,
                         "min_drr_db": 3, "max_drr_db": 3})
    step = d.steps["reverb"]
    for seed in range(3):
        params = d.draw(np.random.default_rng(seed))["reverb"]
        ir = step.impulse_response(params)
        assert ir[0] == 1.0
        tail = ir[1:]
        assert schroeder_rt60(tail) == pytest.approx(params["rt60"], rel=0.2)
        assert 10 * np.log10(1.0 / np.sum(tail**2)) == pytest.approx(3.0, abs=0.01)
    x = np.zeros((1, SR), np.float32)
    x[0, 1000] = 0.5
    y = d.apply(x, d.draw(np.random.default_rng(0)))
    assert y.shape == x.shape and np.argmax(np.abs(y[0])) == 1000  # aligned: no delay
    assert np.sum(y[0, 1001:] ** 2) > 0.01 * np.sum(x**2)


def test_reverb_from_a_folder_is_aligned_to_its_peak(tmp_path: Path) -> None:
    ir = np.zeros(4000)
    ir[300] = 0.5  # 300 samples of pre-delay before the direct path
    ir[301:] = np.random.default_rng(0).standard_normal(3699) * 0.01 * np.exp(-np.arange(3699)
                                                                              / 800)
    sf.write(tmp_path / "room.wav", ir, SR)
    d = degrader(reverb={"prob": 1.0, "source": "folder", "folder": str(tmp_path)})
    x = np.zeros((1, SR), np.float32)
    x[0, 1000] = 0.5
    y = d.apply(x, d.draw(np.random.default_rng(0)))
    assert np.argmax(np.abs(y[0])) == 1000 and y[0, 1000] == pytest.approx(0.5)
    assert np.sum(y[0, 1001:] ** 2) > 0  # the tail is there


def test_reverb_in_a_simulated_room() -> None:
    pytest.importorskip("pyroomacoustics", reason="the 'room' IR source needs pyroomacoustics")
    d = degrader(reverb={"prob": 1.0, "source": "room", "min_rt60": 0.4, "max_rt60": 0.4})
    ir = d.steps["reverb"].impulse_response(d.draw(np.random.default_rng(0))["reverb"])
    assert np.argmax(np.abs(ir)) == 0 and ir[0] == pytest.approx(1.0)
    assert schroeder_rt60(ir) == pytest.approx(0.4, rel=0.5)


def test_codec_round_trip() -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the codec degradation needs ffmpeg (apt-get install ffmpeg)")
    d = degrader(codec={"prob": 1.0, "codecs": ["mp3"], "min_kbps": 32, "max_kbps": 32})
    x = tone()
    y = d.apply(x, d.draw(np.random.default_rng(0)))
    assert y.shape == x.shape and not np.array_equal(y, x)
    assert snr_db(x, y) > 10.0  # the same sound, with coding error


def test_codec_without_ffmpeg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dg.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="needs ffmpeg"):
        degrader(codec={"prob": 0.5})


def test_draws_are_seeded_and_streams_independent() -> None:
    d = degrader(noise={"prob": 1.0}, clip={"prob": 0.5}, pitch={"prob": 0.5})
    a, b = d.draw(np.random.default_rng(3)), d.draw(np.random.default_rng(3))
    assert a == b
    assert np.array_equal(d.apply(tone(), a), d.apply(tone(), b))
    assert d.draw(np.random.default_rng(4)) != a
    # turning reverb on leaves the other degradations' draws where they were
    more = degrader(noise={"prob": 1.0}, clip={"prob": 0.5}, pitch={"prob": 0.5},
                    reverb={"prob": 1.0})
    c = more.draw(np.random.default_rng(3))
    assert {k: v for k, v in c.items() if k != "reverb"} == a and "reverb" in c
    fired = [bool(d.draw(np.random.default_rng(s)).get("clip")) for s in range(200)]
    assert 0.35 < np.mean(fired) < 0.65  # prob 0.5


def test_order_is_followed() -> None:
    """Noise then clipping leaves flat tops at the clip level; clipping then noise does not."""
    sections = {"clip": {"prob": 1.0, "min_level": 0.5, "max_level": 0.5},
                "noise": {"prob": 1.0, "min_snr_db": 10, "max_snr_db": 10}}
    x = tone()
    flat = {}
    for order in (["noise", "clip"], ["clip", "noise"]):
        d = degrader(**sections, order=order)
        y = d.apply(x, d.draw(np.random.default_rng(0)))
        flat[order[0]] = float(np.mean(np.abs(y) >= np.abs(y).max() - 1e-7))
    assert flat["noise"] > 0.05 and flat["clip"] < 0.01


@pytest.mark.parametrize("section, match", [
    ({"order": ["noise", "echo"]}, "unknown degradation"),
    ({"order": ["noise", "noise"]}, "twice"),
    ({"reverb": {"prob": 0.5}, "order": ["noise", "lowpass", "clip", "gain"]}, "leaves out"),
    ({"reverb": {"prob": 0.5, "source": "folder"}}, "needs `folder:`"),
    ({"pitch": {"min_semitones": 3, "max_semitones": 1}}, "above maximum"),
    ({"noise": {"colours": ["purple"]}}, "colours"),
])
def test_bad_settings_are_clear_errors(section: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate(DegradeConfig, section, source="test")
