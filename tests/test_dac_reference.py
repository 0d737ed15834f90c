"""soundry's mel_distance, stft_distance and si_sdr equal descript-audio-codec's own code.

tests/fixtures/dac_reference.json holds the values DAC's MelSpectrogramLoss (7 scales, as
its training config sets them), MultiScaleSTFTLoss and SI-SDR gave on the signal pairs of
tests/fixtures/make_dac_reference_pairs.py (see that file to regenerate them). The pairs are
rebuilt here from the same formulas and seeds.

Tolerance: DAC computes in float32, soundry in float64. Against the float64 values DAC's mel
distance is off by < 1e-6 relative and its STFT distance by up to ~2e-5 (log10 of
magnitudes near the 1e-5 clamp, where float32 STFT rounding is relatively large), SI-SDR by
< 1e-6; rel 1e-4 leaves a 5x margin. A definitional difference (a missing scale, another
window, mel norm, padding or clamp) changes the values by 1% or more.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.make_dac_reference_pairs import PAIRS, fingerprint, make_pair

from soundry.eval.metrics import mel_distance, si_sdr, stft_distance

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "dac_reference.json").read_text())
RTOL = 1e-4


def test_the_reference_covers_every_pair_and_both_rates() -> None:
    assert set(REFERENCE["pairs"]) == set(PAIRS)
    assert REFERENCE["versions"]["descript-audio-codec"] == "1.0.0"
    rates = {p["sample_rate"] for p in REFERENCE["pairs"].values()}
    assert rates == {16000, 44100}
    assert any(p["channels"] == 2 for p in REFERENCE["pairs"].values())


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_regenerated_pairs_are_the_signals_dac_scored(name: str) -> None:
    stored = REFERENCE["pairs"][name]
    ref, est, sr = make_pair(name)
    assert sr == stored["sample_rate"]
    assert ref.shape == est.shape == (stored["channels"], stored["samples"])
    for which, signal in (("reference", ref), ("estimate", est)):
        assert fingerprint(signal) == pytest.approx(stored["fingerprint"][which], rel=1e-6,
                                                    abs=1e-9)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_metrics_match_dac(name: str) -> None:
    stored = REFERENCE["pairs"][name]
    ref, est, sr = make_pair(name)
    assert mel_distance(ref, est, sr) == pytest.approx(stored["mel_distance"], rel=RTOL)
    assert stft_distance(ref, est, sr) == pytest.approx(stored["stft_distance"], rel=RTOL)
    if stored["si_sdr_comparable"]:
        assert si_sdr(ref, est) == pytest.approx(stored["si_sdr"], rel=RTOL)
    else:  # a pure gain change: both are rounding noise above 100 dB (or +inf)
        assert stored["si_sdr"] is None or stored["si_sdr"] > 100
        assert si_sdr(ref, est) > 100


def test_the_comparison_can_fail() -> None:
    """The spread between pairs dwarfs the tolerance: a mix-up of pairs or rates is caught."""
    stored = REFERENCE["pairs"]
    ref, est, _ = make_pair("chirp_noise_16k")
    at_44k = mel_distance(ref, est, 44100)  # the right audio scored at the wrong rate
    assert at_44k != pytest.approx(stored["chirp_noise_16k"]["mel_distance"], rel=100 * RTOL)
    values = sorted(p["mel_distance"] for p in stored.values())
    assert all(b / a - 1 > 100 * RTOL for a, b in zip(values, values[1:], strict=False))
