"""The Strategy protocol and the weighted sum that strategies aggregate from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..weights import Weights

__all__ = ["Strategy", "WeightedSum", "accumulator_dtype"]


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """Floats are summed in float64: the bits of a float64 sum of float32 updates,
    cast back, do not depend on how the cohort was cut into work units."""
    return np.dtype(np.float64) if np.dtype(dtype).kind == "f" else np.dtype(dtype)


@dataclass
class WeightedSum:
    """Σ weight·update over some clients, plus Σ weight: what FedAvg-like strategies need.

    Executors build one per work unit (clients added in client-id order) and the
    controller merges units in unit order, so the result never depends on which
    executor ran which unit.
    """

    sums: list[np.ndarray] | None = None
    total_weight: float = 0.0
    count: int = 0
    dtypes: list[str] = field(default_factory=list)

    def add(self, update: Sequence[np.ndarray], weight: float) -> None:
        if self.sums is None:
            self.sums = [np.zeros(a.shape, accumulator_dtype(a.dtype)) for a in update]
            self.dtypes = [a.dtype.str for a in update]
        if weight:
            for acc, a in zip(self.sums, update):
                if weight == 1:
                    np.add(acc, a, out=acc, casting="unsafe")
                else:
                    # multiply in the accumulator's precision without a full-size temporary per array
                    acc += np.multiply(a, weight, dtype=acc.dtype)
        self.total_weight += float(weight)
        self.count += 1

    def merge(self, other: "WeightedSum") -> None:
        if other.sums is None:
            self.count += other.count
            return
        if self.sums is None:
            self.sums = [s.copy() for s in other.sums]
            self.dtypes = list(other.dtypes)
        else:
            for acc, s in zip(self.sums, other.sums):
                np.add(acc, s, out=acc)
        self.total_weight += other.total_weight
        self.count += other.count

    def mean(self) -> Weights:
        """The weighted mean, cast back to the update dtypes. Divides the sums in place
        (no model-sized temporaries): the WeightedSum is spent afterwards."""
        if self.sums is None or self.total_weight <= 0:
            raise ValueError("no weighted updates to average")
        for s in self.sums:
            np.divide(s, self.total_weight, out=s)
        mean = [s.astype(np.dtype(d)) for s, d in zip(self.sums, self.dtypes)]
        self.sums = None
        return mean


@runtime_checkable
class Strategy(Protocol):
    """Turns one round's updates into the next global weights.

    ``needs_all_updates`` False means the strategy only needs a WeightedSum, so
    executors may pre-aggregate work units where the updates are.
    """

    name: str
    needs_all_updates: bool

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
