"""Attribute domains and noisy marginal measurements.

These two value types are the contract between the parts: the schema produces
a ``Domain`` (attribute names in schema order, each with its number of codes),
measurement produces ``Measurement`` objects, releases carry them, and the
estimator fits a model to them. Nothing here touches private rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from p2psynth.errors import SchemaError


@dataclass(frozen=True)
class Domain:
    """Ordered attribute names with the number of integer codes of each."""

    attributes: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.attributes) != len(self.sizes):
            raise SchemaError(
                f"domain has {len(self.attributes)} attributes but {len(self.sizes)} sizes"
            )
        if len(set(self.attributes)) != len(self.attributes):
            raise SchemaError(f"domain has duplicate attribute names: {self.attributes}")
        for name, size in zip(self.attributes, self.sizes):
            if int(size) < 1:
                raise SchemaError(f"attribute {name!r} has size {size}; every size must be at least 1")

    @classmethod
    def from_dict(cls, sizes: dict[str, int]) -> "Domain":
        return cls(tuple(sizes), tuple(int(v) for v in sizes.values()))

    def size(self, attribute: str) -> int:
        try:
            return self.sizes[self.attributes.index(attribute)]
        except ValueError:
            raise SchemaError(
                f"unknown attribute {attribute!r}; known attributes: {', '.join(self.attributes)}"
            ) from None

    def shape(self, attributes: Iterable[str]) -> tuple[int, ...]:
        return tuple(self.size(a) for a in attributes)

    def index(self, attribute: str) -> int:
        self.size(attribute)  # raises SchemaError naming the attribute
        return self.attributes.index(attribute)

    def project(self, attributes: Sequence[str]) -> "Domain":
        return Domain(tuple(attributes), self.shape(attributes))

    def to_dict(self) -> dict[str, int]:
        return dict(zip(self.attributes, self.sizes))

    def __contains__(self, attribute: object) -> bool:
        return attribute in self.attributes

    def __len__(self) -> int:
        return len(self.attributes)


@dataclass(frozen=True, eq=False)
class Measurement:
    """One noisy marginal: integer counts over ``attributes`` with Gaussian noise.

    ``counts`` has shape ``domain.shape(attributes)`` and dtype int64; each cell
    is the true count plus independent discrete Gaussian noise of standard
    deviation ``sigma`` (so its variance is at most ``sigma**2``).
    """

    attributes: tuple[str, ...]
    counts: np.ndarray
    sigma: float

    def __post_init__(self) -> None:
        if self.counts.ndim != len(self.attributes):
            raise SchemaError(
                f"measurement over {self.attributes} has {self.counts.ndim} axes; "
                f"expected {len(self.attributes)}"
            )
        if not self.sigma > 0:
            raise SchemaError(f"measurement over {self.attributes} has sigma {self.sigma}; it must be positive")

    @property
    def total(self) -> int:
        return int(self.counts.sum())
