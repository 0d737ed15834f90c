"""The report's Evaluation section: `soundry eval` summaries given with --eval or found in
RUN/eval/ (see soundry.eval.report_assets.page_eval)."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from report_fixtures import make_run

from soundry.cli import main
from soundry.errors import DataError, SoundryError
from soundry.eval import runner
from soundry.eval.report import write_report

# The model is best on the distances, opus 12k on the scores; opus 12k's loudness difference
# is closest to zero although the model's is the lowest (a signed difference).
SYSTEMS: dict[str, tuple[str, float, dict[str, list[float]]]] = {
    "model": ("model", 6.0, {
        "mel_distance": [0.7, 0.9], "stft_distance": [1.0, 1.2], "si_sdr": [8.0, 10.0],
        "pesq": [2.0, 3.0], "stoi": [0.8, 0.9], "loudness_diff_lufs": [-1.0, -0.5],
    }),
    "opus 6k": ("baseline", 6.0, {
        "mel_distance": [1.4, 1.6], "stft_distance": [1.9, 2.1], "si_sdr": [2.0, 4.0],
        "pesq": [1.5, 1.7], "stoi": [0.7, 0.8], "loudness_diff_lufs": [1.5, 2.5],
    }),
    "opus 12k": ("baseline", 12.0, {
        "mel_distance": [1.0, 1.2], "stft_distance": [1.4, 1.6], "si_sdr": [5.0, 7.0],
        "pesq": [3.0, 3.4], "stoi": [0.9, 0.96], "loudness_diff_lufs": [0.2, 0.4],
    }),
}


def write_summary(
    folder: Path,
    systems: dict[str, tuple[str, float, dict[str, list[float]]]] = SYSTEMS,
    data: str = "speech/test",
) -> Path:
    """summary.json and per_file.csv as `soundry eval` writes them: per-file rows through
    the runner's statistics (`describe`) and its writer (`write_outputs`)."""
    metrics = list(next(iter(systems.values()))[2])
    n_files = len(next(iter(systems.values()))[2][metrics[0]])
    rows = [
        {"system": name, "file": f"f{i}.wav", "offset_seconds": 0.0, "seconds": 1.0,
         **{m: values[m][i] for m in metrics}}
        for name, (_, _, values) in systems.items() for i in range(n_files)
    ]
    summary: dict[str, Any] = {
        "soundry_version": "0.1.0",
        "model": "exports/tiny",
        "data": data,
        "levels": 4,
        "skipped_files": [],
        "sample_rate": 16000,
        "channels": 1,
        "crop_seconds": None,
        "files": n_files,
        "failed_files": [],
        "metrics": metrics,
        "higher_is_better": [m for m in metrics if runner.higher_is_better(m)],
        "skipped_metrics": {"visqol": "needs the optional package 'visqol'"},
        "bootstrap": {"resamples": 200, "seed": 0, "confidence": 0.95, "method": "percentile"},
        "seconds_taken": 1.0,
        "notes": [],
        "systems": {},
    }
    for name, (kind, kbps, _) in systems.items():
        mine = [r for r in rows if r["system"] == name]
        summary["systems"][name] = {
            "kind": kind,
            "bitrate_kbps": kbps,
            "n": len(mine),
            "metrics": {m: runner.describe([r[m] for r in mine], 0, 200) for m in metrics},
            "notes": [],
        }
    folder.mkdir(parents=True, exist_ok=True)
    runner.write_outputs(folder, rows, runner.clean_json(summary), metrics)
    return folder


def small_run(path: Path, name: str | None = None) -> Path:
    return make_run(path, name=name, steps=200, valid_every=100, clips={"clip00": 0.25})


def eval_tables(html: str) -> list[dict[str, Any]]:
    """Each Evaluation table: caption, columns, and rows {system: {column: (text, best)}}."""
    tables = []
    for m in re.finditer(
        r'<table class="eval-summary"><caption>(.*?)</caption><thead><tr>(.*?)</tr></thead>'
        r"<tbody>(.*?)</tbody>",
        html,
        re.S,
    ):
        heads = re.findall(r'<th scope="col"[^>]*>(.*?)</th>', m.group(2), re.S)
        columns = [re.sub(r"<[^>]+>", "", h).split()[0] for h in heads][1:]
        rows: dict[str, dict[str, tuple[str, bool]]] = {}
        for row in re.findall(r"<tr>(.*?)</tr>", m.group(3), re.S):
            name = unescape(re.match(r'<th scope="row">(.*?)(?: <small>|</th>)', row).group(1))
            cells = re.findall(r'<td class="([^"]*)"[^>]*>(.*?)</td>', row, re.S)
            assert len(cells) == len(columns)
            rows[name] = {
                col: (unescape(re.sub(r"<[^>]+>", " ", text)).split(), "best" in cls.split())
                for col, (cls, text) in zip(columns, cells, strict=True)
            }
        tables.append({"caption": unescape(m.group(1)), "columns": columns, "rows": rows})
    return tables


def best_row(table: dict[str, Any], column: str) -> list[str]:
    return [name for name, cells in table["rows"].items() if cells[column][1]]


def test_eval_section_rows_values_ci_and_best(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run", name="tiny")
    ev = write_summary(tmp_path / "eval-out")
    html = write_report([run], tmp_path / "r.html", evals=[ev]).path.read_text()
    assert '<section id="evaluation"' in html and '<a href="#evaluation">Evaluation</a>' in html
    # After the in-run validation metrics, before listening.
    assert html.index('id="metrics"') < html.index('id="evaluation"') < html.index('id="listen"')

    (table,) = eval_tables(html)
    assert "exports/tiny on speech/test (2 files, 16000 Hz)" in table["caption"]
    assert list(table["rows"]) == ["model", "opus 6k", "opus 12k"]
    assert table["columns"] == [
        "mel_distance", "stft_distance", "si_sdr", "pesq", "stoi", "loudness_diff_lufs"
    ]
    cell, _ = table["rows"]["model"]["mel_distance"]
    assert cell[0] == "0.8"  # the mean of 0.7 and 0.9
    lo, hi = (float(x) for x in "".join(cell[1:]).strip("[]").split(","))
    assert 0.7 <= lo < 0.8 < hi <= 0.9  # the bootstrap CI of the mean
    assert table["rows"]["opus 12k"]["pesq"][0][0] == "3.2"

    assert best_row(table, "mel_distance") == ["model"]  # lower is better
    assert best_row(table, "stft_distance") == ["model"]
    assert best_row(table, "si_sdr") == ["model"]  # higher is better
    assert best_row(table, "pesq") == ["opus 12k"]
    assert best_row(table, "stoi") == ["opus 12k"]
    assert best_row(table, "loudness_diff_lufs") == ["opus 12k"]  # closest to zero
    assert "visqol not computed: needs the optional package" in html


def test_no_summary_no_section(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run")
    html = write_report([run], tmp_path / "r.html").path.read_text()
    assert 'id="evaluation"' not in html and "eval-summary" not in html


def test_summaries_inside_the_run_are_found(tmp_path: Path) -> None:
    """RUN/eval/summary.json and RUN/eval/*/summary.json, the runner's real output; a corrupt
    one is left out with a note."""
    run = small_run(tmp_path / "run", name="tiny")
    sr = 8000
    files = []
    rng = np.random.default_rng(0)
    for i in range(3):
        t = np.arange(sr // 2) / sr
        audio = (0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t)).astype(np.float32)
        files.append(tmp_path / "clips" / f"c{i}.wav")
        files[-1].parent.mkdir(exist_ok=True)
        sf.write(files[-1], audio, sr)

    def noisy(level: float) -> runner.System:
        return lambda a: a + level * rng.standard_normal(a.shape).astype(np.float32)

    systems = [runner.SystemSpec("my codec", "model", noisy(0.01), bitrate_kbps=3.0),
               runner.SystemSpec("opus 6k", "baseline", noisy(0.1), bitrate_kbps=6.0)]
    runner.evaluate(systems, files, root=tmp_path / "clips", sample_rate=sr, channels=1,
                    out_dir=run / "eval", resamples=200, progress=False,
                    settings={"model": "exports/my codec", "data": "clips"})
    write_summary(run / "eval" / "speech", data="speech/other")
    (run / "eval" / "broken").mkdir()
    (run / "eval" / "broken" / "summary.json").write_text('{"systems": {')

    html = write_report([run], tmp_path / "r.html").path.read_text()
    first, second = eval_tables(html)
    assert "exports/my codec on clips (3 files, 8000 Hz)" in first["caption"]
    assert list(first["rows"]) == ["my codec", "opus 6k"]
    assert first["columns"] == ["mel_distance", "stft_distance", "si_sdr", "l1"]
    assert best_row(first, "mel_distance") == ["my codec"]
    assert best_row(first, "si_sdr") == ["my codec"]
    assert best_row(first, "l1") == ["my codec"]
    assert "speech/other" in second["caption"]
    assert "<code>eval/speech/summary.json</code> in run tiny" in html
    assert "eval/broken/summary.json is not valid JSON; left out of the Evaluation section" in html

    # --eval naming a folder the run already holds shows it once.
    again = write_report([run], tmp_path / "r2.html", evals=[run / "eval"]).path.read_text()
    assert len(eval_tables(again)) == 2


def test_comparison_names_the_run_of_each_summary(tmp_path: Path) -> None:
    a = small_run(tmp_path / "a", name="alpha")
    b = small_run(tmp_path / "b", name="beta")
    write_summary(b / "eval")
    html = write_report([a, b], tmp_path / "r.html").path.read_text()
    (table,) = eval_tables(html)
    assert table["caption"].startswith("beta: exports/tiny on speech/test")


def test_html_in_names_is_escaped(tmp_path: Path) -> None:
    run = small_run(tmp_path / "run")
    evil = '<script>alert("x")</script> & co'
    systems = {evil: SYSTEMS["model"], "opus 6k": SYSTEMS["opus 6k"]}
    ev = write_summary(tmp_path / "ev", systems, data="<b>data</b>")
    html = write_report([run], tmp_path / "r.html", evals=[ev]).path.read_text()
    assert "<script>alert" not in html and "<b>data" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in html
    assert "&lt;b&gt;data&lt;/b&gt;" in html
    (table,) = eval_tables(html)
    assert list(table["rows"]) == [evil, "opus 6k"]


def test_bad_eval_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    run = small_run(tmp_path / "run")
    out = tmp_path / "r.html"
    missing = tmp_path / "no-such-eval"
    assert main(["report", str(run), "--out", str(out), "--eval", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --eval:") and str(missing) in err and "does not exist" in err
    assert "Traceback" not in err and not out.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no summary.json"):
        write_report([run], out, evals=[empty])
    (empty / "summary.json").write_text("{oops")
    with pytest.raises(SoundryError, match="is not valid JSON"):
        write_report([run], out, evals=[empty])
    (empty / "summary.json").write_text(json.dumps({"files": 3}))
    with pytest.raises(SoundryError, match="not a soundry eval summary"):
        write_report([run], out, evals=[empty / "summary.json"])
    assert not out.exists()

    good = write_summary(tmp_path / "good")
    assert main(["report", str(run), "--out", str(out), "--eval", str(good),
                 "--eval", str(good / "summary.json")]) == 0
    assert len(eval_tables(out.read_text())) == 1  # the same file given twice: once
