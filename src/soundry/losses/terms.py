"""Loss terms a system declares, and the one place their weights are applied.

A task's recipe class declares its terms (`loss_terms`): each has a name (logged as
`loss/<name>`), a default weight and a sentence saying what it measures. Schedule phases
that override weights (`weights: {mel: 0}`) are validated against those names, and
`LossTerms.total` refuses a value whose term was never declared. Systems add their own terms
(a KL, a distillation or a duration loss) by declaring them, not by editing another task's.

Loss modules and functions return unweighted values; `LossTerms.total` multiplies each by its
weight exactly once. (RAVE multiplied its feature-matching term by the weight twice,
training with 400x instead of 20x; keeping weights out of the loss functions prevents that.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from soundry.registry import did_you_mean


@dataclass(frozen=True)
class LossTerm:
    """One term of a training objective: `name`, default `weight`, what it measures."""

    name: str
    weight: float = 1.0
    doc: str = ""


class LossTerms:
    """An ordered set of declared terms; `a + b` joins two sets (names must not repeat)."""

    def __init__(self, terms: Iterable[LossTerm]) -> None:
        self._terms: dict[str, LossTerm] = {}
        for term in terms:
            if term.name in self._terms:
                raise ValueError(f"loss term '{term.name}' is declared twice")
            self._terms[term.name] = term

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms([*self, *other])

    def __iter__(self) -> Iterator[LossTerm]:
        return iter(self._terms.values())

    def __contains__(self, name: object) -> bool:
        return name in self._terms

    def __len__(self) -> int:
        return len(self._terms)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._terms)

    def defaults(self) -> dict[str, float]:
        """name -> default weight."""
        return {t.name: float(t.weight) for t in self}

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names that are not declared terms, each with a closest-match hint."""
        return [f"'{n}'{did_you_mean(n, self._terms)}" for n in names if n not in self._terms]

    def check(self, weights: Mapping[str, float], where: str) -> None:
        """ValueError naming `where` when `weights` names a term that is not declared."""
        bad = self.unknown(weights)
        if bad:
            raise ValueError(f"{where}: unknown loss {', '.join(bad)} in weights "
                             f"(valid: {', '.join(self.names)})")

    def total(self, values: Mapping[str, torch.Tensor], weights: Mapping[str, float]
              ) -> torch.Tensor:
        """sum_k weights[k] * values[k]; every value must be a declared term."""
        bad = self.unknown(values)
        if bad:
            raise KeyError(f"loss {', '.join(bad)} is not a declared term of this task "
                           f"(declared: {', '.join(self.names)})")
        return weighted_total(values, weights)


def weighted_total(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """sum_k weights[k] * terms[k] over the given terms, each weight applied once.

    Terms with weight 0 are left out (so a NaN in an unused term cannot poison the total).
    A term without a weight is a programming error and raises KeyError.
    """
    total: torch.Tensor | None = None
    for name, value in terms.items():
        if name not in weights:
            raise KeyError(f"loss term '{name}' has no weight (known: {', '.join(weights)})")
        w = float(weights[name])
        if w == 0.0:
            continue
        total = value * w if total is None else total + value * w
    if total is None:
        first = next(iter(terms.values()), None)
        return first.new_zeros(()) if first is not None else torch.zeros(())
    return total


# The terms of every adversarial step (soundry.train.gan): unweighted generator-side values.
ADVERSARIAL_TERMS = LossTerms([
    LossTerm("adversarial", 1.0, "the generator's adversarial loss, summed over "
             "sub-discriminators (lsgan: mean (1 - D(fake))^2; hinge: mean -D(fake))"),
    LossTerm("feature_matching", 2.0, "L1 between the discriminator's feature maps of "
             "generated and real audio, summed over layers and sub-discriminators"),
])
