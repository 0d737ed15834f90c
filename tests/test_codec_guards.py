"""Codec recipes reject keys they would ignore; exports take the best checkpoint by default;
the demo's verdict says whether a codec learned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from soundry.errors import ConfigError
from soundry.eval.verdict import Criteria, codec_verdict, output_problems, output_stats
from soundry.paths import recipes_dir
from soundry.train.recipes import load_recipe

TINY = recipes_dir() / "codec/tiny.yaml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("valid.levels=[0]", "valid.levels"),
        ("valid.levels=[-1]", "valid.levels"),
        ("valid.levels=[7]", "between 1 and"),
        ("data.degrade={noise: {prob: 1.0}}", "data.degrade has no effect on a codec"),
        ("data.sources=[{path: a, target: b}]", "paired targets"),
        ("data.mode=utterances", "learn the padding"),
        ("data.bucket.max_batch_seconds=3.0", "data.bucket only acts"),
    ],
)
def test_codec_recipe_rejects_keys_that_would_do_nothing(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(TINY, [override])


def test_valid_levels_inside_the_level_count_are_accepted() -> None:
    recipe = load_recipe(TINY, ["valid.levels=[1, 6]"])
    assert recipe.valid.levels == [1, 6]


def _fake_run(tmp_path: Path, best: str | None) -> Path:
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    for step in (200, 400):
        (ckpts / f"step_{step:08d}").mkdir(parents=True)
    index = {"last": "step_00000400"}
    if best:
        index.update(best=best, best_metric="valid/mel_distance", best_value=3.25)
    (ckpts / "index.json").write_text(json.dumps(index))
    return run


def test_auto_checkpoint_is_the_best_when_recorded(tmp_path: Path) -> None:
    from soundry.train.export import describe_choice, find_checkpoint

    run = _fake_run(tmp_path, best="step_00000200")
    chosen = find_checkpoint(run, "auto")
    assert chosen.name == "step_00000200"
    assert describe_choice(run, chosen) == "best by valid/mel_distance = 3.25 at step 200"
    assert find_checkpoint(run, "last").name == "step_00000400"


def test_auto_checkpoint_falls_back_to_the_last(tmp_path: Path) -> None:
    from soundry.train.export import describe_choice, find_checkpoint

    run = _fake_run(tmp_path, best=None)
    chosen = find_checkpoint(run, "auto")
    assert chosen.name == "step_00000400"
    assert describe_choice(run, chosen) == "last (step 400)"


def test_summary_line_survives_a_missing_best_value() -> None:
    from soundry.train.engine import summary_line

    line = summary_line({"train_seconds": 5, "best_checkpoint": "x", "last_checkpoint": "x",
                         "best_metric": "valid/si_sdr", "best_value": None, "steps": 3,
                         "run_dir": "r"})
    assert "valid/si_sdr = n/a" in line


# ----------------------------------------------------------------------------- verdict


def test_output_checks_catch_the_rail_silence_and_constants() -> None:
    t = np.arange(16000) / 16000
    good = 0.3 * np.sin(2 * np.pi * 220 * t)
    assert output_problems(output_stats(good)) == []
    assert "saturated" in output_problems(output_stats(np.ones(16000)))[0]  # DC at the rail
    assert any("silent" in p for p in output_problems(output_stats(np.zeros(16000))))
    assert any("constant" in p for p in output_problems(output_stats(np.full(16000, 0.2))))
    assert output_problems(output_stats(np.full(100, np.nan))) == ["non-finite samples"]


def test_verdict_needs_every_criterion() -> None:
    ok = {"a": [], "b": []}
    learned = codec_verdict(3.0, 8.0, [0.4, 0.3, 0.2], ok)
    assert learned.learned and not learned.broken
    assert "LEARNED" in learned.line()
    not_enough = codec_verdict(5.0, 8.0, [0.4, 0.3, 0.2], ok)
    assert not not_enough.learned and not not_enough.broken
    assert "mel distance 5.000" in not_enough.line()
    few_codes = codec_verdict(3.0, 8.0, [0.5, 0.05], ok)
    assert not few_codes.learned and "codebook usage" in few_codes.reasons[0]
    broken = codec_verdict(3.0, 8.0, [0.5], {"a": ["saturated (peak 1.000 >= 0.99)"]})
    assert broken.broken and not broken.learned
    diverged = codec_verdict(None, 8.0, [0.5], ok, diverged="non-finite loss")
    assert diverged.broken and any("n/a" in r for r in diverged.reasons)
    custom = codec_verdict(5.0, 8.0, [0.4], ok, criteria=Criteria(max_mel_ratio=0.7))
    assert custom.learned
    assert math.isclose(Criteria().max_mel_ratio, 0.5)


def test_scores_of_a_silent_output_are_null_with_a_note() -> None:
    from soundry.eval.fmt import clean_json
    from soundry.eval.verdict import score_outputs

    t = np.arange(8000) / 16000
    clips = [(f"c{i}", (0.2 * np.sin(2 * np.pi * 200 * (i + 1) * t))[None].astype(np.float32))
             for i in range(3)]
    card = score_outputs(clips, [np.zeros_like(c) for _, c in clips], 16000)
    assert card.si_sdr is None  # -inf on every clip: no finite mean
    assert any(n.startswith("si_sdr: -inf on 3 of 3") for n in card.notes)
    assert all(any("silent" in p for p in probs) for probs in card.clip_problems.values())
    assert json.loads(json.dumps(clean_json(card.row())))["si_sdr"] is None
