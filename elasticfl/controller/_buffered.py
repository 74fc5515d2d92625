"""Buffered asynchronous training (FedBuff: Nguyen et al., 2022, "Federated Learning
with Buffered Asynchronous Aggregation") as a plain class the controller steps.

``concurrency`` clients train at all times, each from the newest global weights
(version t) when it starts. Executors never wait for each other: as soon as a
client's update arrives, another client starts. An update that arrives when the
server is at version t' is τ = t' − t versions stale; it enters a buffer as
s(τ)·Δ, with Δ its change from the version it started from and s(τ) = (1 + τ)^−a.
After ``buffer_size`` (K) updates the server steps: the strategy sees the mean
x + Σ s(τ_i)·Δ_i / K (FedAvg takes it as it is; FedAvgM or FedAdam step on it as
a pseudo-gradient) and the version goes up by one. ``run.rounds`` counts versions.

Which client starts next comes from (run seed, dispatch number): uniform over the
clients not training. A dispatch's number also seeds the client's training, so a
dispatch retried after an executor died computes the same update. The arrival
order is the cluster's timing, so two runs differ; in-process, where units run
first in, first out, it is a function of the config.

The checkpoint after a server step holds the clients in flight (dispatch number,
client, version) and the weights of every version they started from; the buffer
is empty then, since a step has just drained it. A resumed run restarts the
same dispatches from the same versions before any new one.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from ..errors import RunFailedError
from ..selection import WorkUnit
from ..strategies import WeightedSum
from ..weights import Weights
from ._types import ClientReport, UnitStream

__all__ = ["BufferedAsync"]

log = logging.getLogger("elasticfl.controller")
_PICK_KEY = 0xFEDB  # keeps the dispatch draws apart from the clients' streams


class BufferedAsync:
    def __init__(self, config) -> None:  # a RunConfig
        a = config.asynchronous
        self.buffer_size = a.buffer_size
        self.concurrency = a.concurrency
        self.exponent = a.staleness_exponent
        self.max_staleness = a.max_staleness
        self.seed = config.run.seed
        self.num_clients = config.data.num_clients
        self.placement = config.client_pools()
        self.next_dispatch = 0
        self.in_flight: dict[int, tuple[int, int]] = {}  # dispatch number -> (client id, version it started from)
        self.versions: dict[int, Weights] = {}  # the weights each in-flight client started from

    def staleness_weight(self, staleness: int) -> float:
        return float((1 + staleness) ** -self.exponent)

    # -- dispatch --------------------------------------------------------------------
    def _pick(self, dispatch: int) -> int:
        """A client not training now, uniformly, from (seed, dispatch number)."""
        busy = {c for c, _ in self.in_flight.values()}
        rng = np.random.default_rng([self.seed, dispatch, _PICK_KEY])
        while True:  # busy clients are at most `concurrency` of num_clients: few redraws
            client = int(rng.integers(self.num_clients))
            if client not in busy:
                return client

    def _submit(self, stream: UnitStream, dispatch: int, client_state: dict) -> None:
        client, version = self.in_flight[dispatch]
        state = {client: client_state[client]} if client in client_state else {}
        stream.submit(WorkUnit(dispatch, (client,), self.placement.get(client, ()), state=state), self.versions[version])

    def fill(self, stream: UnitStream, version: int, weights: Weights, client_state: dict) -> None:
        """Start clients until ``concurrency`` are training."""
        while len(self.in_flight) < self.concurrency:
            dispatch = self.next_dispatch
            self.next_dispatch += 1
            self.in_flight[dispatch] = (self._pick(dispatch), version)
            self.versions.setdefault(version, weights)
            self._submit(stream, dispatch, client_state)

    def resubmit(self, stream: UnitStream, client_state: dict) -> None:
        """After a resume (or a controller restart): the dispatches that were in flight, in order."""
        for dispatch in sorted(self.in_flight):
            self._submit(stream, dispatch, client_state)

    # -- one server step -------------------------------------------------------------
    def collect(
        self, stream: UnitStream, version: int, weights: Weights, client_state: dict, abandoned: Callable[[], bool]
    ) -> tuple[WeightedSum, list[ClientReport], dict[str, Any]] | None:
        """Take arrivals until the buffer holds ``buffer_size`` updates; None if a stop abandons it."""
        buffer = [np.zeros(w.shape, np.float64) for w in weights]  # Σ s(τ)·Δ
        clients: list[ClientReport] = []
        staleness: list[int] = []
        dispatches: list[int] = []
        while len(staleness) < self.buffer_size:
            if abandoned():
                return None
            self.fill(stream, version, weights, client_state)
            result = stream.next()
            client, started = self.in_flight.pop(result.unit_id)
            tau = version - started
            report = result.clients[0]
            report.metrics = {**report.metrics, "staleness": tau, "dispatch": result.unit_id}
            if report.status == "ok" and self.max_staleness is not None and tau > self.max_staleness:
                report.status, report.reason = "stale", f"{tau} versions old, over asynchronous.max_staleness"
            if report.status == "ok" and result.summed.total_weight > 0:
                base, weight = self.versions[started], self.staleness_weight(tau)
                for acc, new, old in zip(buffer, result.summed.mean(), base):
                    acc += weight * (new.astype(np.float64) - old)
                staleness.append(tau)
                dispatches.append(result.unit_id)
                client_state.update(result.client_state)
            clients.append(report)
            self._forget_versions(version)
            if len(clients) >= 10 * self.buffer_size + self.concurrency and len(staleness) < len(clients) // 10:
                reasons = sorted({c.reason for c in clients if c.reason})[:3]
                raise RunFailedError(
                    f"version {version + 1}: {len(clients)} client updates arrived and only {len(staleness)} "
                    f"were usable; reasons: {reasons or 'none reported'}"
                )
        k = float(self.buffer_size)
        summed = WeightedSum(  # its mean is x + Σ s(τ)·Δ / K: the strategy steps on that
            sums=[k * w.astype(np.float64) + acc for w, acc in zip(weights, buffer)],
            total_weight=k, count=len(staleness), dtypes=[w.dtype.str for w in weights],
        )
        fields = {
            "cohort": [c.client_id for c in clients if c.status == "ok"],  # in arrival order
            "asynchronous": {
                "buffer_size": self.buffer_size,
                "staleness_mean": float(np.mean(staleness)),
                "staleness_max": int(max(staleness)),
                "dispatches": dispatches,
                "in_flight": len(self.in_flight),
            },
            "units": len(clients),
        }
        return summed, clients, fields

    def _forget_versions(self, current: int) -> None:
        needed = {v for _, v in self.in_flight.values()} | {current}
        self.versions = {v: w for v, w in self.versions.items() if v in needed}

    # -- checkpoints -----------------------------------------------------------------
    def state(self, current: int) -> tuple[dict[str, Any], dict[int, Weights]]:
        """(JSON state, the weights of the older versions clients in flight started from)."""
        self._forget_versions(current)
        older = {v: w for v, w in self.versions.items() if v != current}
        return {
            "next_dispatch": self.next_dispatch,
            "in_flight": [[d, c, v] for d, (c, v) in sorted(self.in_flight.items())],
        }, older

    def load(self, state: dict[str, Any], versions: dict[int, Weights], current: int, weights: Weights) -> None:
        self.next_dispatch = int(state.get("next_dispatch", 0))
        self.in_flight = {int(d): (int(c), int(v)) for d, c, v in state.get("in_flight", [])}
        self.versions = {**versions, current: weights}
        missing = {v for _, v in self.in_flight.values()} - set(self.versions)
        if missing:
            raise RunFailedError(f"the checkpoint lacks the weights of versions {sorted(missing)} that clients trained from")
