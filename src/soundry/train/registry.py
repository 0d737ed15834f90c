"""Tasks by name: `task:` in a recipe names an entry here, with its recipe schema.

A task module registers itself with `@register_task("name")` when it is imported; the
built-in ones are imported by `soundry.train.tasks`, which `soundry.train.recipes` (the
recipe loader) imports. This module imports no task, so task modules can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from soundry.config import Strict
from soundry.registry import Registry
from soundry.train.task import Task

TASKS: Registry[type[Task]] = Registry("task")
# task name -> the Recipe subclass that holds the schema of a whole recipe file
TASK_RECIPES: Registry[type[Strict]] = Registry("task")

# task name -> fn(recipe, load_network) -> (export kind, config dict, state_dict); used by
# `soundry export` (soundry.train.export)
Exporter = Callable[[Any, Callable[[str], dict[str, torch.Tensor]]], tuple[str, dict, dict]]
EXPORTERS: Registry[Exporter] = Registry("exporter")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Register a Task subclass and its `recipe_class` under `name`."""

    def deco(cls: type[Task]) -> type[Task]:
        TASKS.register(name)(cls)
        TASK_RECIPES.register(name)(cls.recipe_class)
        return cls

    return deco
