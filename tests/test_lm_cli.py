"""`soundry train` on token-LM recipes: --data names the token directory, --valid and
audio `data:` keys (which would do nothing for a token LM) are refused before any work."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from soundry import cli
from soundry.commands.train import prepare
from soundry.config import to_dict
from soundry.data.config import DataConfig
from soundry.data.tokens import TokenShardWriter
from soundry.errors import ConfigError
from soundry.train.logging import read_metrics
from soundry.train.recipes import recipe_from_dict

LM_RECIPE = str(Path(__file__).resolve().parents[1] / "recipes" / "lm" / "tiny.yaml")
# recipes/lm/tiny.yaml models 4 levels of 256 codes; a much smaller network, 2 steps
SMALL = ["model.transformer.dim=16", "model.transformer.layers=1", "model.transformer.heads=2",
         "model.transformer.max_len=128", "model.text.max_bytes=8", "tokens.window_seconds=1.0",
         "tokens.max_batch_seconds=4.0", "tokens.valid_count=1", "valid.demo_count=0",
         "valid.windows=1", "train.max_steps=2", "train.log_every=1", "train.valid_every=2",
         "train.checkpoint_every=2", "train.progress=false", "train.tensorboard=false"]
META = {"codec": {}, "levels": 4, "codebook_size": 256, "frame_rate": 10.0,
        "sample_rate": 8000, "channels": 1}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm") / "tokens"
    writer = TokenShardWriter(root, META)
    rng = np.random.default_rng(0)
    for i, n in enumerate([12, 20, 9, 15, 18, 11]):
        writer.add(f"s{i}.wav", [rng.integers(0, 256, (4, n))], [f"item{i}"], tags=[f"t{i}"])
    writer.flush()
    return root


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", *argv])


def test_data_flag_sets_the_token_directory(tokens: Path, tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", LM_RECIPE, "--data", str(tokens), "--out", str(run), *SMALL]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["tokens"]["path"] == str(tokens)
    assert "data" not in config, "a token LM has no audio data: section"
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2]
    # the resolved config resumes (it holds no data: section to refuse)
    assert cli.main(["train", "--resume", str(run), "train.max_steps=3"]) == 0
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3]
    # an explicit key=value still wins over the flag
    recipe, _ = prepare(parse([LM_RECIPE, "--data", str(tokens), "tokens.path=elsewhere"]))
    assert recipe.tokens.path == "elsewhere"


@pytest.mark.parametrize("argv,message", [
    (["--valid", "/audio/valid"], "--valid: a token LM validates on tokens.valid_count items"),
    (["--data", "a", "--data", "b"], "a token LM reads one token directory (tokens.path)"),
    (["data.batch_size=4"], "data.batch_size has no effect on a token LM; set "
                            "tokens.max_batch_size"),
    (["data.num_workers=3"], "data.num_workers has no effect on a token LM; set "
                             "tokens.num_workers"),
    (["data.segment_seconds=2"], "data.segment_seconds has no effect on a token LM; set "
                                 "tokens.window_seconds"),
    (["data.sample_rate=24000"], "data.sample_rate has no effect on a token LM; it is fixed "
                                 "by the codec"),
    (["data.augment.gain.prob=0.5"], "data.augment.gain.prob has no effect on a token LM"),
    (["data.sources=[{path: /audio}]"], "data.sources has no effect on a token LM; set "
                                        "tokens.path (or --data)"),
    (["data.nonsense=1"], "data.nonsense has no effect on a token LM; the token LM's data "
                          "settings are under tokens:"),
])
def test_audio_data_settings_are_refused_before_work(tokens: Path, tmp_path: Path, capsys: Any,
                                                     argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", LM_RECIPE, "--out", str(out), "tokens.path=" + str(tokens),
                     *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_python_api_refuses_data_keys_and_reads_old_resolved_configs() -> None:
    with pytest.raises(ConfigError, match="data.batch_size has no effect on a token LM"):
        recipe_from_dict({"task": "lm", "data": {"batch_size": 4}})
    # a data: section equal to the defaults, as LM runs' config.yaml held before
    old = {"task": "lm", "data": to_dict(DataConfig())}
    assert "data" not in to_dict(recipe_from_dict(old))
    changed = to_dict(DataConfig())
    changed["batch_size"] = 3
    with pytest.raises(ConfigError, match="data.batch_size"):
        recipe_from_dict({"task": "lm", "data": changed})


def test_audio_tasks_keep_data_sources(tmp_path: Path) -> None:
    recipe_file = tmp_path / "codec.yaml"
    recipe_file.write_text("task: codec\n")
    recipe, _ = prepare(parse([str(recipe_file), "--data", "/a", "--data", "/b",
                               "--valid", "/v"]))
    assert [s.path for s in recipe.data.sources] == ["/a", "/b"]
    assert recipe.data.valid == "/v"
