"""The Strategy protocol and the weighted sum that strategies aggregate from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..weights import Weights

__all__ = [
    "Strategy", "WeightedSum", "ClientUpdate", "accumulator_dtype", "resolve_precision", "AUTO_FLOAT64_MAX_PARAMS",
]


# Models up to this many parameters are summed in float64 under "auto".
AUTO_FLOAT64_MAX_PARAMS = 2**24


def resolve_precision(setting: str, num_params: int) -> str:
    """The accumulator precision a strategy's ``accumulate`` setting means for this model.

    float64 makes the sum of float32 updates agree bit for bit with any other
    float64 reduction (a plain loop, another framework); float32 halves the bytes
    moved and the memory traffic of large models. Either way the bits are fixed by
    the run's unit boundaries, so every run and resume of a config agrees.
    """
    if setting == "auto":
        return "float64" if num_params <= AUTO_FLOAT64_MAX_PARAMS else "float32"
    return setting


def accumulator_dtype(dtype: np.dtype, precision: str = "float64") -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return dtype
    if precision == "float64":
        return np.dtype(np.float64)
    return np.promote_types(dtype, np.float32)  # half precision is summed in float32 at least


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
    precision: str = "float64"
    # Unweighted sums a strategy asks its clients for besides the update (FedNova's
    # Σ n·τ, SCAFFOLD's Σ Δc): floats or lists of arrays, merged by addition.
    side: dict[str, Any] = field(default_factory=dict)

    def add_side(self, side: Mapping[str, Any]) -> None:
        for key, value in side.items():
            have = self.side.get(key)
            if have is None:
                self.side[key] = [np.array(v, dtype=np.float64) for v in value] if isinstance(value, list) else float(value)
            elif isinstance(have, list):
                for acc, v in zip(have, value):
                    np.add(acc, v, out=acc, casting="unsafe")
            else:
                self.side[key] = have + float(value)

    def add(self, update: Sequence[np.ndarray], weight: float) -> None:
        if self.sums is None:
            self.dtypes = [a.dtype.str for a in update]
            kinds = [accumulator_dtype(a.dtype, self.precision) for a in update]
            # The first update starts the sums (0 + w*x is exactly w*x): no zero-filled pass.
            if weight == 1:
                self.sums = [a.astype(k, copy=True) for a, k in zip(update, kinds)]
            elif weight:
                self.sums = [np.multiply(a, weight, dtype=k) for a, k in zip(update, kinds)]
            else:
                self.sums = [np.zeros(a.shape, k) for a, k in zip(update, kinds)]
        elif weight:
            for acc, a in zip(self.sums, update):
                if weight == 1:
                    np.add(acc, a, out=acc, casting="unsafe")
                else:
                    # multiply in the accumulator's precision without a full-size temporary per array
                    acc += np.multiply(a, weight, dtype=acc.dtype)
        self.total_weight += float(weight)
        self.count += 1

    def merge(self, other: "WeightedSum") -> None:
        """Add another unit's sums. The first unit's arrays are adopted, not copied: when
        they are read-only (zero-copy from Ray's object store) the next add makes new ones."""
        if other.side:
            self.add_side(other.side)
        if other.sums is None:
            self.count += other.count
            self.total_weight += other.total_weight
            return
        if self.sums is None:
            self.sums = list(other.sums)
            self.dtypes = list(other.dtypes)
        else:
            self.sums = [
                np.add(acc, s, out=acc) if acc.flags.writeable else np.add(acc, s)
                for acc, s in zip(self.sums, other.sums)
            ]
        self.total_weight += other.total_weight
        self.count += other.count

    def mean(self) -> Weights:
        """The weighted mean, cast back to the update dtypes. Divides the sums in place
        (no model-sized temporaries): the WeightedSum is spent afterwards."""
        if self.sums is None or self.total_weight <= 0:
            raise ValueError("no weighted updates to average")
        quotients = [np.divide(s, self.total_weight, out=s if s.flags.writeable else None) for s in self.sums]
        mean = [q.astype(np.dtype(d), copy=False) for q, d in zip(quotients, self.dtypes)]
        self.sums = None
        return mean


@dataclass
class ClientUpdate:
    """One client's trained weights on their way into the round's aggregate.

    A strategy with a client half (``prepare``) rewrites it on the executor:
    FedNova normalises ``weights`` by the local steps, SCAFFOLD computes the new
    control variate into ``state`` and its change into ``side``.
    """

    client_id: int
    weights: Weights  # what gets aggregated
    weight: float  # its weight in the mean (the client's examples)
    local_steps: int | None = None  # the optimizer steps the task reported (metric "local_steps")
    state: dict[str, Weights] = field(default_factory=dict)  # this client's carried state: old in, new out
    side: dict[str, Any] = field(default_factory=dict)  # unweighted sums, see WeightedSum.side


@runtime_checkable
class Strategy(Protocol):
    """Turns one round's updates into the next global weights.

    A strategy sees only a WeightedSum, so executors pre-aggregate work units where
    the updates are. Robust aggregation (strategy.robust) needs every update: the
    controller then builds that WeightedSum from them (see controller._robust_mean).

    Optional, for strategies with a client half (duck-typed, see SCAFFOLD and FedNova):
    ``shared(global_weights) -> dict`` server state every client of the round gets;
    ``correction(state, shared) -> Weights | None`` a gradient correction for local
    training; ``prepare(update, global_weights, shared)`` rewrites a ClientUpdate on
    the executor before it is summed.
    """

    name: str

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
