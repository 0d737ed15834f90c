"""The built-in tasks. Importing this package registers each of them (and its recipe
schema) in `soundry.train.registry`."""

from __future__ import annotations

from soundry.train.registry import TASKS, register_task
from soundry.train.tasks import (  # noqa: F401  (each registers)
    codec,
    lm,
    semantic_codec,
    toy,
    transform,
    tts,
    vae,
)

__all__ = ["TASKS", "register_task"]
