"""Errors and defaults of the `data:` recipe section."""

from __future__ import annotations

import pytest

from soundry.config import apply_overrides, validate
from soundry.data.config import DataConfig
from soundry.errors import ConfigError
from soundry.train.recipes import DataRecipe, load_data_section


def _data(raw: dict, overrides: list[str] | None = None) -> DataConfig:
    raw = apply_overrides({"data": raw}, overrides or [])
    return validate(DataRecipe, raw, source="r.yaml", overrides=overrides).data


def test_defaults_turn_augmentations_off():
    cfg = _data({"sources": [{"path": "x"}]})
    assert cfg.mode == "clips" and not cfg.paired and cfg.degrade is None
    assert all(getattr(cfg.augment, k).prob == 0 for k in type(cfg.augment).model_fields)


def test_misspelled_augment_key_names_the_key_file_and_closest_key():
    with pytest.raises(ConfigError) as err:
        _data({"augment": {"phase": {"probability": 0.5}}})
    msg = str(err.value)
    assert "r.yaml" in msg and "'data.augment.phase.probability'" in msg
    assert "did you mean 'prob'" in msg
    with pytest.raises(ConfigError, match="did you mean 'augment'"):
        _data({"augments": {}})


@pytest.mark.parametrize(
    "raw,key",
    [
        ({"augment": {"gain": {"prob": 1.5}}}, "data.augment.gain.prob"),
        ({"augment": {"phase": {"r": 1.0}}}, "data.augment.phase.r"),
        ({"mode": "crops"}, "data.mode"),
        ({"sources": [{"path": "a", "weight": 0}]}, "data.sources.0.weight"),
        ({"segment_seconds": -1}, "data.segment_seconds"),
        ({"channels": 3}, "data.channels"),
        ({"bucket": {"max_batch_seconds": 0}}, "data.bucket.max_batch_seconds"),
    ],
)
def test_out_of_range_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _data(raw)


def test_inverted_ranges_are_errors():
    with pytest.raises(ConfigError, match="gain min_db/max_db"):
        _data({"augment": {"gain": {"min_db": 3, "max_db": -3}}})
    with pytest.raises(ConfigError, match="pitch min_ratio/max_ratio"):
        _data({"augment": {"pitch": {"min_ratio": 1.2, "max_ratio": 0.9}}})
    with pytest.raises(ConfigError, match="lowpass"):
        _data({"degrade": {"lowpass": {"min_hz": 8000, "max_hz": 1000}}})


def test_pairs_must_be_consistent_unless_degrading():
    mixed = {"sources": [{"path": "in", "target": "clean"}, {"path": "other"}]}
    with pytest.raises(ConfigError, match="target"):
        _data(mixed)
    cfg = _data({**mixed, "degrade": {}})
    assert cfg.paired and cfg.degrade is not None


def test_overrides_reach_nested_data_keys():
    cfg = _data({}, ["data.augment.phase.prob=0.8", "data.loudness.min_lufs=-35"])
    assert cfg.augment.phase.prob == 0.8 and cfg.loudness.min_lufs == -35
    with pytest.raises(ConfigError, match="command-line override 'data.augment.gain.db=3'"):
        _data({}, ["data.augment.gain.db=3"])


def test_load_data_section_accepts_data_only_and_bare_files(tmp_path):
    (tmp_path / "d.yaml").write_text("seed: 4\ndata:\n  sources: [{path: a}]\n")
    cfg, seed = load_data_section(tmp_path / "d.yaml", ["data.batch_size=3"])
    assert seed == 4 and cfg.batch_size == 3 and cfg.sources[0].path == "a"
    (tmp_path / "bare.yaml").write_text("sources: [{path: b}]\nsegment_seconds: 0.25\n")
    cfg, seed = load_data_section(tmp_path / "bare.yaml")
    assert seed == 0 and cfg.segment_seconds == 0.25
    (tmp_path / "bad.yaml").write_text("data:\n  sorces: []\n")
    with pytest.raises(ConfigError, match="did you mean 'sources'"):
        load_data_section(tmp_path / "bad.yaml")
