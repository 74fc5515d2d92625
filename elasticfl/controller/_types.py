"""Values exchanged between the controller, its executor pool and its callers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..policies import RoundClosePolicy
from ..selection import WorkUnit
from ..strategies import WeightedSum
from ..weights import Weights

__all__ = ["RunState", "ClientReport", "UnitResult", "ExecutorPool", "UnitStream"]


class RunState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        return self in (RunState.COMPLETED, RunState.FAILED, RunState.STOPPED)


@dataclass
class ClientReport:
    """What one client's training in one round came to; goes into the history."""

    client_id: int
    status: str  # "ok" | "rejected" | "failed"
    num_examples: int = 0
    duration_s: float = 0.0
    node_id: str = ""
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pool: str = ""  # the node pool it ran in, where pools are configured

    def to_dict(self) -> dict[str, Any]:
        d = {  # by hand: dataclasses.asdict deep-copies, and this runs for every client every round
            "client_id": self.client_id,
            "status": self.status,
            "num_examples": self.num_examples,
            "duration_s": self.duration_s,
            "node_id": self.node_id,
            "metrics": self.metrics,
        }
        if self.reason is not None:
            d["reason"] = self.reason
        if self.pool:
            d["pool"] = self.pool
        return d


@dataclass
class UnitResult:
    """One work unit's pre-aggregated updates and per-client reports."""

    unit_id: int
    summed: WeightedSum
    clients: list[ClientReport]
    attempts: int = 1
    part: int = 0  # see WorkUnit.part
    # Every ok client's (id, weight, update) in client-id order, instead of a sum in
    # ``summed``, when the aggregation needs them one by one (strategy.robust).
    updates: list[tuple[int, float, Weights]] | None = None
    # The new carried state of the unit's ok clients (WorkUnit.state), by client id.
    client_state: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, int]:
        return (self.unit_id, self.part)


class UnitStream(Protocol):
    def submit(self, unit: WorkUnit, weights: Weights) -> None:
        """Queue a unit to train from ``weights``; its ``unit_id`` seeds its clients as a round would."""

    def next(self) -> UnitResult:
        """The next unit to finish, whichever it is (blocks until one does)."""


class ExecutorPool(Protocol):
    """Runs client work somewhere; the controller does not care where."""

    def init_weights(self) -> Weights: ...

    def train_units(
        self, round: int, weights: Weights, units: list[WorkUnit], close: RoundClosePolicy | None = None
    ) -> list[UnitResult]:
        """Every unit's result (or why its clients sent nothing), in ``order``."""

    def open_stream(self) -> "UnitStream":
        """For asynchronous training: units submitted one by one, results as they finish."""

    def evaluate(self, weights: Weights) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...
