"""Finding built-in recipes."""

from __future__ import annotations

from pathlib import Path

from soundry.errors import ConfigError

# In a source checkout (editable install) recipes live in <repo>/recipes.
_REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipes_dir() -> Path:
    return _REPO_RECIPES


def find_recipe(name: str | Path) -> Path:
    """A recipe path as given, or relative to the built-in recipes folder."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = _REPO_RECIPES / path
    if builtin.is_file():
        return builtin
    raise ConfigError(f"recipe '{name}' not found (looked in . and {_REPO_RECIPES})")
