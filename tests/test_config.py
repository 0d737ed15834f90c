"""Strict recipes: unknown keys, wrong types and bad values fail early with helpful messages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from soundry.config import (
    Strict,
    apply_overrides,
    flatten,
    parse_override,
    save_resolved,
    validate,
)
from soundry.errors import ConfigError
from soundry.registry import Registry
from soundry.train.recipe import RecipeBase
from soundry.train.recipes import load_recipe, recipe_from_dict


class _RVQ(Strict):
    type: Literal["rvq"] = "rvq"
    n_codebooks: int = Field(8, ge=1)


class _FSQ(Strict):
    type: Literal["fsq"]
    levels: list[int] = [8, 5, 5]


class _Model(Strict):
    quantizer: Annotated[_RVQ | _FSQ, Field(discriminator="type")] = _RVQ()


class _Recipe(RecipeBase):
    model: _Model = Field(default_factory=_Model)


def _check(raw: dict, overrides: list[str] | None = None) -> _Recipe:
    overrides = overrides or []
    return validate(_Recipe, apply_overrides(raw, overrides), "r.yaml", overrides)


def test_unknown_key_names_key_file_and_closest_valid_key() -> None:
    with pytest.raises(ConfigError) as err:
        _check({"task": "x", "data": {"batchsize": 3}})
    msg = str(err.value)
    assert "r.yaml" in msg
    assert "'data.batchsize'" in msg
    assert "did you mean 'batch_size'" in msg


def test_unknown_key_inside_tagged_union_is_reported_without_the_tag() -> None:
    with pytest.raises(ConfigError) as err:
        _check({"task": "x", "model": {"quantizer": {"type": "rvq", "n_codebook": 4}}})
    msg = str(err.value)
    assert "'model.quantizer.n_codebook'" in msg
    assert "did you mean 'n_codebooks'" in msg


def test_override_errors_name_the_override() -> None:
    with pytest.raises(ConfigError) as err:
        _check({"task": "x"}, ["data.batch_size=0", "train.max_step=3"])
    msg = str(err.value)
    assert "2 configuration errors" in msg
    assert "command-line override 'data.batch_size=0'" in msg
    assert "greater than or equal to 1" in msg
    assert "did you mean 'max_steps'" in msg


def test_wrong_type_and_bad_choice() -> None:
    with pytest.raises(ConfigError, match="train.precision"):
        _check({"task": "x", "train": {"precision": "bf15"}})
    with pytest.raises(ConfigError, match="data.sample_rate"):
        _check({"task": "x", "data": {"sample_rate": "fast"}})
    with pytest.raises(ConfigError, match="'fsk'"):
        _check({"task": "x", "model": {"quantizer": {"type": "fsk"}}})


def test_valid_overrides_are_applied_and_typed() -> None:
    cfg = _check(
        {"task": "x"},
        ["data.batch_size=4", "train.max_steps=7", "model.quantizer.n_codebooks=3", "seed=5"],
    )
    assert cfg.data.batch_size == 4
    assert cfg.train.max_steps == 7
    assert cfg.model.quantizer.n_codebooks == 3
    assert cfg.seed == 5


def test_parse_override_reads_numbers_lists_and_strings() -> None:
    assert parse_override("optim.lr=3e-4") == (["optim", "lr"], pytest.approx(3e-4))
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("name=hello") == (["name"], "hello")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError):
        parse_override("a..b=1")


def test_list_index_override() -> None:
    raw = {"data": {"sources": [{"path": "a"}, {"path": "b"}]}}
    out = apply_overrides(raw, ["data.sources.1.weight=0.5"])
    assert out["data"]["sources"][1] == {"path": "b", "weight": 0.5}
    assert raw["data"]["sources"][1] == {"path": "b"}  # the input is not modified
    with pytest.raises(ConfigError, match="indexes a list"):
        apply_overrides(raw, ["data.sources.x.weight=1"])


def test_missing_and_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing key 'task'"):
        recipe_from_dict({})
    with pytest.raises(ConfigError, match="unknown task type 'nope'"):
        recipe_from_dict({"task": "nope"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = _check({"task": "x", "data": {"batch_size": 3}})
    save_resolved(cfg, tmp_path / "config.yaml")
    again = validate(_Recipe, __import__("yaml").safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg
    flat = flatten(cfg.model_dump(mode="json"))
    assert flat["data.batch_size"] == 3
    assert flat["model.quantizer.type"] == "rvq"


def test_registry_lookup_suggests_closest() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    assert reg.get("alpha") == 1
    with pytest.raises(ValueError):
        reg.register("alpha")(2)
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        reg.get("alpah")
