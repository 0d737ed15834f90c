"""Metric values that are missing or not finite never crash a command or a report.

JSON holds null (strict JSON, no NaN/Infinity) plus notes saying which metric was not finite
and why; consoles and HTML show "n/a".
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from soundry.eval.fmt import clean_json, dumps_json, fmt_metric, nonfinite_note
from soundry.eval.report import write_report
from soundry.eval.report_assets.charts import format_number
from soundry.eval.runner import format_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_fixtures import make_run  # noqa: E402

SR = 16_000


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (which are not JSON)."""

    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, "text", True, [1.0]])
def test_fmt_metric_says_na_for_anything_not_a_finite_number(value) -> None:
    assert fmt_metric(value) == "n/a"
    assert fmt_metric(value, ".2e") == "n/a"
    assert format_number(value if not isinstance(value, str | list | bool) else None) == "n/a"


def test_fmt_metric_formats_finite_numbers() -> None:
    assert fmt_metric(1.23456) == "1.235"
    assert fmt_metric(np.float32(-2.5), ".1f") == "-2.5"
    assert fmt_metric(7, "d") == "7"  # an int-only spec on a float falls back, no crash
    assert fmt_metric(0.5, ".0%") == "50%"


def test_clean_json_replaces_every_non_finite_float() -> None:
    obj = {
        "a": math.nan,
        "b": [1.0, math.inf, {"c": -math.inf, "d": np.float64(2.0)}],
        "e": (np.float32("nan"), np.int64(3)),
        "f": "inf",
        "g": None,
        "h": True,
    }
    cleaned = clean_json(obj)
    assert cleaned == {"a": None, "b": [1.0, None, {"c": None, "d": 2.0}], "e": [None, 3],
                       "f": "inf", "g": None, "h": True}
    assert type(cleaned["b"][2]["d"]) is float and type(cleaned["e"][1]) is int
    assert strict_json(dumps_json(obj)) == cleaned
    with pytest.raises(ValueError):  # what dumps_json protects against
        json.dumps(obj["b"], allow_nan=False)


def test_nonfinite_note_counts_kinds_and_gives_reasons() -> None:
    values = [3.0, -math.inf, -math.inf, -math.inf, 2.0, math.nan, 1.0, 4.0]
    note = nonfinite_note("si_sdr", values)
    assert note == (
        "si_sdr: -inf on 3 of 8 clips (output silent or uncorrelated with the reference); "
        "nan on 1 of 8 clips (reference silent, so the ratio is undefined)"
    )
    assert nonfinite_note("mel_distance", [1.0, 2.0]) is None
    logged = nonfinite_note("valid/pesq", [None, 1.0], "logged steps")
    assert logged == "valid/pesq: null on 1 of 2 logged steps (not finite when it was written)"
    custom = nonfinite_note("pesq", [math.nan], reasons={"nan": "the scorer failed: too short"})
    assert custom == "pesq: nan on 1 of 1 clips (the scorer failed: too short)"


# ----------------------------------------------------------------------------- the report


def _poison(run: Path) -> None:
    """Rewrite a run's metrics.jsonl with NaN / Infinity literals, nulls and -inf SI-SDR."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r["kind"] == "valid":
            r["valid/si_sdr"] = None  # what the engine writes for -inf
            r["valid/stft_distance"] = math.nan
            r["valid/pesq"] = -math.inf
        elif r["step"] == 20:
            r["loss/mel"] = math.inf
            r["grad_norm/generator"] = None
    # json.dumps writes NaN / Infinity / -Infinity, as a non-strict writer would
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "checkpoints" / "index.json").write_text(
        json.dumps({"last": "step_00000200", "best": "step_00000200",
                    "best_metric": "valid/si_sdr", "best_value": None})
    )
    (run / "summary.json").write_text(
        json.dumps({"status": "completed", "steps_per_second": math.nan, "train_seconds": None})
    )


def test_report_of_a_run_with_nan_inf_and_null_metrics_renders_na(tmp_path: Path) -> None:
    run = make_run(tmp_path / "poisoned", steps=200, valid_every=100)
    _poison(run)
    assert "NaN" in (run / "metrics.jsonl").read_text()
    html = write_report([run], tmp_path / "report.html").path.read_text()

    # the headline card and the table of validation steps show n/a, not a crash or "nan"
    card = re.search(r'<div class="k">si_sdr \(last\)</div><div class="v">([^<]*)</div>', html)
    assert card and card.group(1) == "n/a"
    assert "step_00000200 (si_sdr n/a)" in html  # best checkpoint with a null best value
    cells = re.findall(r'<td class="num[^"]*"[^>]*>([^<]*)</td>', html)
    assert cells.count("n/a") >= 6  # 2 validations x si_sdr, stft_distance, pesq
    assert not {"nan", "inf", "-inf", "None", "NaN"} & set(cells)
    # the notes say which metric was not finite, how often, and why
    notes = re.findall(r"<li>([^<]*metrics.jsonl[^<]*)</li>", html)
    text = " | ".join(notes)
    assert "valid/si_sdr: null on 2 of 2 logged steps" in text
    assert "-inf for a silent or uncorrelated output" in text
    assert "valid/stft_distance: nan on 2 of 2 logged steps" in text
    assert "valid/pesq: -inf on 2 of 2 logged steps" in text
    assert "loss/mel: inf on 1 of 20 logged steps" in text
    assert "valid/mel_distance" not in text  # finite metrics get no note

    # a comparison with a healthy run renders too, the poisoned cells as n/a
    other = make_run(tmp_path / "healthy", name="healthy", steps=200, valid_every=100, seed=1)
    html2 = write_report([run, other], tmp_path / "compare.html").path.read_text()
    assert "n/a" in html2 and "healthy" in html2


def test_format_table_survives_missing_and_null_statistics() -> None:
    summary = {
        "files": 2,
        "sample_rate": SR,
        "metrics": ["mel_distance", "si_sdr", "pesq"],
        "higher_is_better": ["si_sdr", "pesq"],
        "systems": {
            "m[1]": {
                "n": 2,
                "bitrate_kbps": None,
                "metrics": {
                    "mel_distance": {"mean": 1.5, "ci95": [None, 2.0], "n": 2},
                    "si_sdr": {"mean": None, "ci95": [None, None], "n": 2, "n_infinite": 2},
                },
            },
            "opus": {"n": 2, "bitrate_kbps": math.nan, "metrics": {}},
        },
    }
    console = Console(record=True, width=200)
    console.print(format_table(summary))
    text = console.export_text()
    assert "m[1]" in text and "1.500" in text
    assert "[n/a, 2.000]" in text
    assert "2 of 2 infinite" in text
    assert text.count("n/a") >= 5


# ----------------------------------------------------------------------------- soundry eval


def silent_codec_dir(tmp_path: Path) -> Path:
    """An exported tiny codec whose output is exactly zero (output conv gain and bias 0)."""
    import torch

    from soundry.models.codec import CodecConfig, build_codec
    from soundry.models.export import export_codec

    torch.manual_seed(0)
    codec = build_codec(CodecConfig())
    with torch.no_grad():
        for name, p in codec.decoder.proj.named_parameters():
            if name in ("weight_g", "bias", "weight"):
                p.zero_()
    return export_codec(codec, tmp_path / "silent")


def test_eval_of_a_silent_model_writes_null_and_notes(tmp_path: Path, capsys) -> None:
    from soundry.cli import main

    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(int(0.5 * SR)) / SR
    for i, f0 in enumerate((220.0, 330.0, 440.0)):
        sf.write(data / f"tone{i}.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), SR)
    out = tmp_path / "eval"
    argv = ["eval", str(silent_codec_dir(tmp_path)), str(data), "--out", str(out),
            "--metrics", "none", "--bootstrap", "100"]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    summary = strict_json((out / "summary.json").read_text())
    si = summary["systems"]["silent"]["metrics"]["si_sdr"]
    assert si["mean"] is None and si["median"] is None and si["ci95"] == [None, None]
    assert si["n_infinite"] == 3
    expected = "si_sdr: -inf on 3 of 3 clips (output silent or uncorrelated with the reference)"
    assert summary["systems"]["silent"]["notes"] == [expected]
    assert summary["notes"] == [f"silent: {expected}"]
    mel = summary["systems"]["silent"]["metrics"]["mel_distance"]
    assert mel["mean"] is not None and mel["mean"] > 1.0  # finite, and large for silence
    # the console table and the notes: n/a, never a crash
    assert "n/a" in printed and "3 of 3 infinite" in printed
    assert "-inf on 3 of 3 clips" in " ".join(printed.split())
    with (out / "per_file.csv").open() as fh:
        assert fh.read().count("-inf") == 3
