"""Task registry: `task:` in a recipe names an entry here.

Importing this package registers every built-in task (and its recipe schema).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from soundry.config import TASK_RECIPES
from soundry.registry import Registry
from soundry.train.task import Task

TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Register a Task subclass and its `recipe_class` under `name`."""

    def deco(cls: type[Task]) -> type[Task]:
        TASKS.register(name)(cls)
        TASK_RECIPES.register(name)(cls.recipe_class)
        return cls

    return deco


# Built-in task modules; each registers itself on import.
_BUILTIN = ["toy", "codec", "lm"]

for _name in _BUILTIN:
    importlib.import_module(f"soundry.train.tasks.{_name}")
