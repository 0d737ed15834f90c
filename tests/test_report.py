"""HTML run reports built from fabricated run directories (see report_fixtures)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import soundfile as sf
from report_fixtures import make_run

from soundry.cli import main
from soundry.errors import SoundryError
from soundry.eval.report import pick_evenly, write_report
from soundry.eval.report_assets import media as media_mod
from soundry.eval.report_assets.charts import LineChart, Series, decimate, nice_ticks


class _Collect(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]


def parse(path: Path) -> tuple[str, _Collect]:
    html = path.read_text()
    p = _Collect()
    p.feed(html)
    return html, p


def diff_rows(html: str) -> list[list[str]]:
    """Cells (key first) of each row of the config-diff table."""
    m = re.search(r'<table class="config-diff">.*?<tbody>(.*?)</tbody>', html, re.S)
    if not m:
        return []
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", m.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)]
        for r in rows
    ]


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    head, _, data = uri.partition(",")
    assert head.endswith(";base64")
    return head[5:].split(";")[0], base64.b64decode(data)


@pytest.fixture()
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = make_run(tmp_path / "adamw")
    b = make_run(
        tmp_path / "muon", config_changes={"optim.generator.type": "muon"}, quality=2.0, seed=1
    )
    return a, b


def test_single_run_report_has_players_images_curves_and_tables(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", name="tiny", clips={"clip00": 1.0, "clip01": 0.5})
    result = write_report([run], tmp_path / "report.html", listen_steps=3)
    html, p = parse(result.path)
    assert result.media_mode == "embed" and result.media_folder is None

    # 4 validations (100..400); 3 shown (100, 300, 400); each clip: one reference (the same
    # audio at every step) + an output per step.
    audios = p.find("audio")
    assert len(audios) == result.players == 2 * (1 + 3)
    assert "output at step 300" in html and "output at step 200" not in html
    durations = sorted(float(a["data-duration"]) for a in audios)
    assert durations == pytest.approx([0.5] * 4 + [1.0] * 4)
    for a in audios:
        mime, data = decode_data_uri(a["src"])
        assert mime == "audio/wav"
        info = sf.info(io.BytesIO(data))
        assert info.duration == pytest.approx(float(a["data-duration"]))
        assert info.subtype == "PCM_16"  # float WAVs are converted for every browser
    images = p.find("img")
    assert len(images) == result.images == 8
    for img in images:
        mime, data = decode_data_uri(img["src"])
        assert mime == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
        assert img["alt"].startswith("Mel spectrogram")

    # Curves: validation metrics, generator vs discriminator, grad norms (log scale), lr.
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    for expected in (
        "mel_distance (lower is better)",
        "si_sdr (higher is better)",
        "Generator vs discriminator",
        "loss/mel",
        "loss/d",
        "Gradient norms",
        "Learning rates",
    ):
        assert expected in captions
    grad_svg = re.search(r"<figcaption>Gradient norms</figcaption><svg([^>]*)>", html).group(1)
    assert 'data-log="1"' in grad_svg
    assert html.index("<h3>Discriminator losses") < html.index("<figcaption>loss/d</figcaption>")

    # Validation table: one row per step; best mel (lowest) and si_sdr (highest) at 400.
    table = re.search(r'<table class="valid-metrics">.*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr><th scope=\"row\" class=\"num\">(\d+)</th>(.*?)</tr>", table, re.S)
    assert [int(s) for s, _ in rows] == [100, 200, 300, 400]
    assert rows[-1][1].count('class="num best"') == 3
    assert 'class="num best"' not in rows[0][1]

    # Config and provenance.
    assert "git_commit" in html and "0123456789abcdef" in html
    assert "soundry train recipes/codec/tiny.yaml" in html
    assert "codebook_size: 256" in html


def test_report_loads_nothing_from_the_network(two_runs: tuple[Path, Path], tmp_path: Path):
    result = write_report(list(two_runs), tmp_path / "cmp.html")
    html = result.path.read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_comparison_diff_shows_exactly_the_differing_key(two_runs, tmp_path: Path) -> None:
    result = write_report(list(two_runs), tmp_path / "cmp.html", listen_steps=2)
    html, p = parse(result.path)
    assert diff_rows(html) == [["optim.generator.type", "adamw", "muon"]]
    assert result.runs == ["adamw", "muon"]  # folder names: the configs have no `name`

    # 4 common validation steps, 2 shown; per step and clip one shared reference + 2 outputs.
    audios = p.find("audio")
    assert len(audios) == result.players == 2 * 2 * (1 + 2)
    assert len(p.find("img")) == result.images == 12
    assert html.count("<h3>Step 100</h3>") == 1 and html.count("<h3>Step 400</h3>") == 1
    labels = [a["aria-label"] for a in audios]
    assert sum(lab.startswith("adamw at step 400") for lab in labels) == 2
    assert sum(lab.startswith("muon at step 400") for lab in labels) == 2

    # Curves overlaid: one chart per key with a line for each run.
    chart = re.search(r"<figcaption>loss/mel</figcaption>(<svg.*?</svg>)", html, re.S).group(1)
    names = set(re.findall(r'class="line" data-name="([^"]+)"', chart))
    assert names == {"adamw", "muon"}


def test_config_diff_flattens_nested_keys_and_marks_missing(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", name="base")
    b = make_run(
        tmp_path / "b",
        name="wide",
        config_changes={"model.encoder.strides": [2, 4, 8], "train.grad_clip": 1.0},
    )
    html = write_report([a, b], tmp_path / "r.html").path.read_text()
    rows = diff_rows(html)
    assert [r[0] for r in rows] == ["model.encoder.strides", "name", "train.grad_clip"]
    assert rows[0][1:] == ["[2, 4, 5]", "[2, 4, 8]"]
    assert rows[2][1:] == ["—", "1.0"]


def test_identical_configs_say_so(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", seed=3)
    html = write_report([a, b], tmp_path / "r.html").path.read_text()
    assert diff_rows(html) == [] and "The configs are identical." in html


def test_metrics_side_by_side_use_matched_steps(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", valid_every=100)
    b = make_run(tmp_path / "b", valid_every=200, config_changes={"seed": 1})
    html = write_report([a, b], tmp_path / "r.html").path.read_text()
    table = re.search(
        r'<table class="side-by-side"><caption>mel_distance.*?</table>', html, re.S
    ).group(0)
    steps = re.findall(r'<th scope="row" class="num">(\d+)</th>', table)
    assert steps == ["200", "400"]
    # Audio at the common steps only, too.
    assert "<h3>Step 200</h3>" in html and "<h3>Step 100</h3>" not in html


def test_different_references_get_their_own_players(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", clips={"clip00": 1.0})
    b = make_run(tmp_path / "b", clips={"clip00": 0.75})
    result = write_report([a, b], tmp_path / "r.html", listen_steps=1)
    _, p = parse(result.path)
    labels = [x["aria-label"] for x in p.find("audio")]
    assert [lab.split(",")[0] for lab in labels] == [
        "reference (a)",
        "reference (b)",
        "a at step 400",
        "b at step 400",
    ]


def test_media_folder_mode_and_auto_threshold(two_runs, tmp_path: Path, monkeypatch) -> None:
    result = write_report(list(two_runs), tmp_path / "out" / "cmp.html", media="folder")
    html, p = parse(result.path)
    folder = tmp_path / "out" / "cmp_media"
    assert result.media_folder == folder and folder.is_dir()
    assert 'src="data:' not in html
    srcs = [a["src"] for a in p.find("audio")] + [i["src"] for i in p.find("img")]
    for src in srcs:
        assert src.startswith("cmp_media/") and (tmp_path / "out" / src).is_file()
    # Identical media are stored once: the shared references appear in several places.
    assert len(set(srcs)) == len(list(folder.iterdir())) < len(srcs)

    monkeypatch.setattr(media_mod, "EMBED_LIMIT_BYTES", 1000)
    auto = write_report(list(two_runs), tmp_path / "auto.html")
    assert auto.media_mode == "folder" and (tmp_path / "auto_media").is_dir()
    monkeypatch.setattr(media_mod, "EMBED_LIMIT_BYTES", 10**9)
    assert write_report(list(two_runs), tmp_path / "e.html").media_mode == "embed"


def test_partial_and_bad_runs(tmp_path: Path) -> None:
    with pytest.raises(SoundryError, match="does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "r.html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoundryError, match="not a run directory"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
    # A run killed mid-write: a truncated last line, no valid/ folder, no checkpoints.
    run = tmp_path / "crashed"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "kind": "train", "loss/mel": 1.5})
        + "\n"
        + json.dumps({"step": 2, "kind": "train", "loss/mel": float("nan")})
        + "\n"
        + '{"step": 3, "kind": "tr'
    )
    result = write_report([run], tmp_path / "r.html")
    html = result.path.read_text()
    assert "1 unreadable line(s) skipped" in html
    assert "saved no validation audio" in html and result.players == 0
    assert "<figcaption>loss/mel</figcaption>" in html


def test_cli_report(two_runs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.html"
    assert main(["report", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_pick_evenly_includes_first_and_last() -> None:
    assert pick_evenly([1, 2, 3, 4, 5, 6, 7], 3) == [1, 4, 7]
    assert pick_evenly([1, 2], 4) == [1, 2]
    assert pick_evenly([1, 2, 3], 1) == [3]


def test_chart_ticks_gaps_log_scale_and_decimation() -> None:
    ticks = nice_ticks(0.13, 0.91)
    assert ticks[0] >= 0.13 and ticks[-1] <= 0.91 and len(ticks) >= 3
    steps = [round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(set(steps)) == 1 and steps[0] in (0.1, 0.2, 0.25)

    nan = float("nan")
    chart = LineChart("t", [Series("s", [1, 2, 3, 4, 5], [1.0, 2.0, nan, 4.0, 5.0])])
    assert chart.svg().count('class="line"') == 2  # the NaN splits the line
    wide = LineChart("g", [Series("g", list(range(10)), [10.0**k for k in range(-3, 7)])])
    assert wide.log_y and 'data-log="1"' in wide.svg()
    assert not LineChart("n", [Series("n", [1, 2], [-1.0, 1e6])]).log_y  # negative: linear

    x = list(range(10_000))
    y = [0.0] * 10_000
    y[4321] = 99.0
    dx, dy = decimate(x, y, limit=200)
    assert len(dx) <= 200 and max(dy) == 99.0 and 4321 in dx


def test_level_variants_share_a_chart_and_stay_out_of_the_headline_table(tmp_path: Path):
    run = make_run(tmp_path / "run", steps=200, valid_every=100)
    extra = [
        {
            "step": s,
            "kind": "valid",
            "valid/mel_distance@2": 2.0 - s / 400,
            "valid/usage/l0": 0.5,
            "valid/usage/l1": 0.25,
            "valid/usage/mean": 0.375,
            "valid/bitrate_kbps": 2.4,
        }
        for s in (200, 100)  # out of order on purpose
    ]
    extra.append({"step": 150, "kind": "train", "loss/mel": None})  # non-finite, written as null
    with (run / "metrics.jsonl").open("a") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in extra)
    html = write_report([run], tmp_path / "r.html").path.read_text()

    def series_in(caption: str) -> list[str]:
        svg = re.search(
            rf"<figcaption>{re.escape(caption)}</figcaption>(<svg.*?</svg>)", html, re.S
        ).group(1)
        return list(dict.fromkeys(re.findall(r'data-name="([^"]+)"', svg)))

    assert series_in("mel_distance (lower is better)") == ["all levels", "2 levels"]
    assert series_in("usage (higher is better)") == ["mean", "level 0", "level 1"]
    assert "<figcaption>bitrate_kbps</figcaption>" in html  # a setting, not a score
    headline = re.search(r'<table class="valid-metrics">.*?</thead>', html, re.S).group(0)
    assert "usage/mean" in headline and "bitrate_kbps" in headline
    assert "mel_distance@2" not in headline and "usage/l0" not in headline
    full = re.search(r'<table class="valid-metrics-all">.*?</thead>', html, re.S).group(0)
    assert "mel_distance@2" in full and "usage/l1" in full
    # The null at step 150 splits the training curve into two lines.
    mel = re.search(r"<figcaption>loss/mel</figcaption>(<svg.*?</svg>)", html, re.S).group(1)
    assert mel.count('class="line"') == 2


def _as_transform_run(run: Path, input_si_sdr: float, gain: float) -> Path:
    """Turn a fabricated run into an audio-to-audio one: `input_*` validation scores beside
    the output's, the artifact measures, and a `<clip>_in.wav` (the same input every step)."""
    import numpy as np
    from report_fixtures import SAMPLE_RATE, reference_clip

    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["kind"] == "valid":
            line["valid/input_si_sdr"] = input_si_sdr
            line["valid/si_sdr"] = input_si_sdr + gain
            line["valid/si_sdr_gain"] = gain
            line["valid/input_mel_distance"] = 3.0
            line["valid/onset_pop_db"] = 4.0
            line["valid/spectral_line_db"] = 20.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    noise = 0.1 * np.random.default_rng(7).standard_normal(SAMPLE_RATE).astype(np.float32)
    for step_dir in (run / "valid").iterdir():
        for ref in step_dir.glob("*_ref.wav"):
            base = ref.name[: -len("_ref.wav")]
            clean = reference_clip(base, sf.info(str(ref)).duration)
            sf.write(step_dir / f"{base}_in.wav", clean + noise[: len(clean)], SAMPLE_RATE,
                     subtype="FLOAT")
    return run


def test_transform_runs_get_an_output_versus_input_table_and_input_players(tmp_path: Path):
    a = _as_transform_run(make_run(tmp_path / "gan"), 4.5, 6.8)
    b = _as_transform_run(make_run(tmp_path / "plain", config_changes={"gan": False}), 4.5, 6.1)
    result = write_report([a, b], tmp_path / "r.html", listen_steps=1)
    html, p = parse(result.path)
    table = re.search(r'<table class="versus-input">.*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr.*?</tr>", table, re.S)
    heads = re.findall(r'<th scope="col"[^>]*>([a-z_]+)', rows[0])
    assert heads[0] == "run"
    assert {"si_sdr", "mel_distance", "si_sdr_gain", "onset_pop_db", "spectral_line_db"} <= set(
        heads
    )
    col = heads.index("si_sdr")
    values = [re.findall(r'<td class="num">([^<]*)</td>', r) for r in rows[1:]]
    names = [re.search(r'<th scope="row">([^<]*)', r).group(1).strip() for r in rows[1:]]
    assert names == ["gan", "plain", "unprocessed input"]
    si = [float(v[col - 1]) for v in values]
    assert si == pytest.approx([11.3, 10.6, 4.5], abs=0.01)
    # Each clip plays its input once (the same in both runs), then the reference, then runs.
    labels = [x["aria-label"].split(",")[0] for x in p.find("audio")]
    assert labels[:4] == ["input (unprocessed)", "reference", "gan at step 400",
                          "plain at step 400"]
    # An `_in` clip of a triple is not listed again as a single item.
    assert "clip00_in" not in html


def test_codec_runs_have_no_versus_input_section(two_runs, tmp_path: Path) -> None:
    html = write_report(list(two_runs), tmp_path / "r.html").path.read_text()
    assert "versus-input" not in html


def test_quality_against_training_time_with_baseline_lines(tmp_path: Path) -> None:
    run = make_run(tmp_path / "timed")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if line["kind"] == "valid":
            line["valid/train_minutes"] = line["step"] / 40.0  # 400 steps in 10 minutes
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run / "valid" / "baselines.json").write_text(json.dumps(
        {"baselines": {"opus 6k": {"kbps": 6.0, "mel_distance": 1.2, "si_sdr": 3.0},
                       "opus 12k": {"kbps": 12.0, "mel_distance": 0.8, "si_sdr": 9.0}},
         "skipped": {}, "clips": 2}))
    html = write_report([run], tmp_path / "r.html").path.read_text()
    section = html[html.index("Quality against training time"):]
    section = section[: section.index("</div>", section.index('class="charts grid"'))]
    # one chart per metric the baselines were scored on, drawn against minutes
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", section)
    assert [c.split(" (")[0] for c in captions] == ["mel_distance", "si_sdr"]
    assert "training minutes" in section
    assert section.count("opus 6k") >= 2 and section.count("opus 12k") >= 2  # both charts
    assert ">10<" in section  # the x axis reaches the 10 minutes of the last validation
    # a run without train_minutes gets no such section
    plain = write_report([make_run(tmp_path / "plain")], tmp_path / "p.html").path.read_text()
    assert "Quality against training time" not in plain
