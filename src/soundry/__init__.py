"""soundry: train, evaluate and run neural audio models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: str) -> Any:
    """Load an exported model directory (config.json + model.safetensors)."""
    from soundry.models.export import load_export

    return load_export(path)


__all__ = ["__version__", "load"]
