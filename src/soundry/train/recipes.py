"""Recipe files -> validated recipe objects of their task's schema.

`task:` in the file selects the schema among the registered tasks (the built-in ones are
registered by importing `soundry.train.tasks`, which this module does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

import soundry.train.tasks  # noqa: F401  (registers the built-in tasks and their schemas)
from soundry.config import Strict, apply_overrides, read_yaml, validate
from soundry.data.config import DataConfig
from soundry.errors import ConfigError
from soundry.train.registry import TASK_RECIPES


def recipe_class(raw: dict[str, Any], source: str = "<dict>") -> type[Strict]:
    """The schema named by the mapping's `task` key, or a ConfigError listing the tasks."""
    task = raw.get("task")
    if task is None:
        names = ", ".join(TASK_RECIPES.names())
        raise ConfigError(f"{source}: missing key 'task' (one of: {names})")
    try:
        return TASK_RECIPES.get(str(task))
    except ConfigError as exc:
        raise ConfigError(f"{source}: key 'task': {exc}") from None


def recipe_from_dict(
    raw: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None
) -> Strict:
    """Validate a raw recipe mapping; `task` selects the schema."""
    return validate(recipe_class(raw, source), raw, source=source, overrides=overrides)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Strict:
    """Load a recipe file, apply dotted overrides and validate it against its task's schema."""
    overrides = list(overrides or [])
    raw = apply_overrides(read_yaml(path), overrides)
    return recipe_from_dict(raw, source=str(path), overrides=overrides)


class DataRecipe(Strict):
    """A data-only YAML file: a `data:` section and the seed (no task needed)."""

    name: str | None = None
    seed: int = Field(0, ge=0)
    data: DataConfig


def load_data_section(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[DataConfig, int]:
    """(data config, seed) of a recipe, a data-only YAML or a bare `data:` section.

    A file with `task:` is a full recipe, validated against its task's schema. Otherwise a
    file with `data:` is read as `DataRecipe`, and anything else as a bare `DataConfig`.
    """
    raw = read_yaml(path)
    if "task" in raw:
        recipe = load_recipe(path, overrides)
        return recipe.data, int(recipe.seed)  # type: ignore[attr-defined]
    raw = apply_overrides(raw, list(overrides or []))
    if "data" in raw:
        cfg = validate(DataRecipe, raw, source=str(path), overrides=overrides)
        return cfg.data, cfg.seed
    data = validate(DataConfig, raw, source=str(path), overrides=overrides)
    return data, 0
