"""Per-family registries: a recipe's `type:` names an entry, never an import path.

Each component family (encoder, quantizer, discriminator, loss, pattern, optimizer, task, ...)
owns one `Registry`. Entries are registered where they are defined::

    QUANTIZERS = Registry("quantizer")

    @QUANTIZERS.register("rvq")
    def build_rvq(cfg: RVQConfig, dim: int) -> ResidualVQ: ...

and built from a validated config whose `type` field names the entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from soundry.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map for one component family, with helpful lookup errors."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; a duplicate name is a programming error."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The entry called `name`, or a ConfigError naming the closest valid one."""
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.family} type '{name}'"
                + did_you_mean(name, self._entries)
                + f" (valid: {', '.join(sorted(self._entries))})"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def build(self, cfg: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the builder named by `cfg.type` with `cfg` and any extra arguments."""
        return self.get(cfg.type)(cfg, *args, **kwargs)  # type: ignore[operator]


def did_you_mean(name: str, candidates: Any) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
