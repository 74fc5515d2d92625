"""The client work an executor does, as a plain class (the runtime wraps it in an actor).

A ClientWorker serves many logical clients one after another: it loads the
data set and its partition once, then trains each client of a work unit,
rejects bad updates, passes the good ones through the update pipeline
(elasticfl/updates.py), and returns one partial weighted sum for the unit, or
the updates one by one where the aggregation needs them (strategy.robust).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import ConfigError
from .controller._types import ClientReport, UnitResult
from .policies import RoundClosePolicy, RoundProgress
from .selection import WorkUnit, client_seed
from .simulation import attack, straggler_work
from .strategies import WeightedSum, build_strategy, resolve_precision
from .tasks import ClientData, Task, TrainContext, build_task
from .updates import UpdatePipeline
from .weights import Weights, check_update

__all__ = ["ClientWorker", "InProcessPool", "InProcessStream"]

log = logging.getLogger("elasticfl.worker")


class ClientWorker:
    def __init__(self, config: RunConfig, node_id: str = "local") -> None:
        self.config = config
        self.node_id = node_id
        self._task: Task | None = None
        self._clients: list[np.ndarray] | None = None  # row indices per client
        self._dataset: Any = None
        self._pipeline: UpdatePipeline | None = None
        self._byzantine = config.simulation.byzantine_ids()
        self._slow = config.simulation.slow_ids()

    # -- lazy set-up: the first call pays for imports and data loading ----------------
    @property
    def pipeline(self) -> UpdatePipeline:
        if self._pipeline is None:
            strategy = build_strategy(self.config.strategy, self.config.task, self.config.data.num_clients)
            self._pipeline = UpdatePipeline(self.config, strategy)
        return self._pipeline

    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = build_task(self.config.task, self.config.strategy)
        return self._task

    def _load_data(self) -> None:
        if self._clients is not None:
            return
        data = self.config.data
        if data.dataset == "none":
            self._clients = [np.empty(0, np.int64)] * data.num_clients
            return
        from .datasets import load_dataset
        from .partition import make_partition

        seed = data.partition.seed if data.partition.seed is not None else self.config.run.seed
        self._dataset = load_dataset(data.dataset, root=data.root, **data.loader_params(seed))
        if self._dataset.client_rows is not None:  # naturally partitioned (synthetic): client k is device k
            if len(self._dataset.client_rows) != data.num_clients:
                raise ConfigError(
                    f"data.dataset {data.dataset!r} holds {len(self._dataset.client_rows)} devices' data "
                    f"but data.num_clients is {data.num_clients}; make them equal"
                )
            self._clients = list(self._dataset.client_rows)
            return
        self._clients = make_partition(
            data.partition.name, self._dataset.y_train, data.num_clients, seed, **data.partition.params()
        )

    def client_data(self, client_id: int) -> ClientData:
        self._load_data()
        assert self._clients is not None
        if self._dataset is None:
            return ClientData(np.empty((0, 0), np.float32), np.empty(0, np.int64))
        rows = self._clients[client_id]
        ds = self._dataset
        return ClientData(ds.x_train[rows], ds.y_train[rows], ds.num_classes)

    def data_shape(self) -> tuple[int, int] | None:
        self._load_data()
        if self._dataset is None:
            return None
        return int(self._dataset.x_train.shape[1]), int(self._dataset.num_classes)

    def prepare(self) -> str:
        """Pay the start-up costs (imports, data loading, partitioning) before round 1."""
        self._load_data()
        warm_up = getattr(self.task, "warm_up", None)
        if warm_up is not None and self._dataset is not None:
            ds = self._dataset
            warm_up(ClientData(ds.x_test, ds.y_test, ds.num_classes))
        return self.node_id

    # -- the three things a controller asks for ---------------------------------------
    def init_weights(self) -> Weights:
        return self.task.init_weights(self.config.run.seed, self.data_shape())

    def run_unit(self, round: int, weights: Weights, unit: WorkUnit) -> UnitResult:
        self._load_data()
        task, pipeline, seed = self.task, self.pipeline, self.config.run.seed
        params = sum(int(w.size) for w in weights)
        summed = WeightedSum(precision=resolve_precision(self.config.strategy.accumulate, params))
        one_by_one: list[tuple[int, float, Weights]] | None = [] if self.config.strategy.robust else None
        reports, client_state = [], {}
        sim = self.config.simulation
        for cid in unit.client_ids:  # client-id order: the partial sum's bits depend on nothing else
            start = time.perf_counter()
            work = straggler_work(seed, round, cid, sim.stragglers)
            if work is not None and sim.straggler_policy == "drop":
                reports.append(self._report(cid, "late", start, reason=f"straggler (simulation.stragglers), did {work:.0%} of its work"))
                continue
            if cid in self._slow:  # simulated slow hardware: the client's training takes this much longer
                time.sleep(sim.slow_s)
            state = unit.state.get(cid, {})
            ctx = TrainContext(
                round, cid, seed, np.random.default_rng(client_seed(seed, round, cid)),
                work=work, correction=pipeline.correction(state, unit.shared),
            )
            try:
                result = task.train(weights, self.client_data(cid), ctx)
                reason = check_update(result.weights, weights)
                if reason is None and not (isinstance(result.num_examples, (int, np.integer)) and result.num_examples >= 0):
                    reason = f"num_examples must be a non-negative int, got {result.num_examples!r}"
                if reason is None and cid in self._byzantine:
                    result.weights = attack(result.weights, weights, sim.attack, sim.attack_scale, seed, round, cid)
                if reason is None:
                    update, metrics = pipeline.process(
                        round, cid, result.weights, weights, int(result.num_examples), result.metrics or {}, state, unit.shared
                    )
            except Exception as exc:  # user code: one bad client must not sink the unit
                log.warning("client %d failed in round %d: %r", cid, round, exc)
                reports.append(self._report(cid, "failed", start, reason=f"{type(exc).__name__}: {exc}"))
                continue
            if reason is not None:
                log.warning("rejected client %d's update in round %d: %s", cid, round, reason)
                reports.append(self._report(cid, "rejected", start, reason=reason))
                continue
            if one_by_one is not None:
                if update.weight > 0:  # a client with no data has nothing to vote with (Krum would favour it)
                    one_by_one.append((cid, update.weight, update.weights))
                summed.total_weight += update.weight
                summed.count += 1
            else:
                summed.add(update.weights, update.weight)
            summed.add_side(update.side)
            if any(value is not state.get(key) for key, value in update.state.items()):  # the strategy set new state
                client_state[cid] = update.state
            reports.append(self._report(cid, "ok", start, n=int(result.num_examples), metrics=metrics))
        return UnitResult(unit.unit_id, summed, reports, part=unit.part, updates=one_by_one, client_state=client_state)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        self._load_data()
        ds = self._dataset
        if ds is None:  # a task that brings no data set may still evaluate the weights themselves
            return dict(self.task.evaluate(weights, ClientData(np.empty((0, 0), np.float32), np.empty(0, np.int64))))
        return dict(self.task.evaluate(weights, ClientData(ds.x_test, ds.y_test, ds.num_classes)))

    def _report(self, cid: int, status: str, start: float, n: int = 0, reason: str | None = None, metrics=None) -> ClientReport:
        return ClientReport(cid, status, n, round(time.perf_counter() - start, 6), self.node_id, reason, dict(metrics or {}))


class InProcessStream:
    """Asynchronous training in this process: units run one at a time, first in, first out,
    which makes the arrival order (and so every staleness) a function of the config."""

    def __init__(self, worker: ClientWorker) -> None:
        self.worker = worker
        self.queue: deque[tuple[WorkUnit, Weights]] = deque()

    def submit(self, unit: WorkUnit, weights: Weights) -> None:
        self.queue.append((unit, weights))

    def next(self) -> UnitResult:
        unit, weights = self.queue.popleft()
        return self.worker.run_unit(unit.unit_id, weights, unit)  # a dispatch's number seeds its client


class InProcessPool:
    """Runs every unit in this process, in order: for tests and for debugging without Ray."""

    def __init__(self, config: RunConfig) -> None:
        self.worker = ClientWorker(config)

    def init_weights(self) -> Weights:
        return self.worker.init_weights()

    def train_units(
        self, round: int, weights: Weights, units: list[WorkUnit], close: RoundClosePolicy | None = None
    ) -> list[UnitResult]:
        results: list[UnitResult] = []
        ok = 0
        for i, unit in enumerate(units):
            if close is not None:  # over-selection closes a round early here too; deadlines need a clock
                reason = close.close_reason(RoundProgress(0.0, ok, len(units) - i))
                if reason is not None:
                    results.extend(
                        UnitResult(u.unit_id, WeightedSum(), [ClientReport(c, "late", reason=reason) for c in u.client_ids])
                        for u in units[i:]
                    )
                    break
            results.append(self.worker.run_unit(round, weights, unit))
            ok += sum(c.status == "ok" for c in results[-1].clients)
        return results

    def open_stream(self) -> InProcessStream:
        return InProcessStream(self.worker)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        return self.worker.evaluate(weights)

    def describe(self) -> dict[str, Any]:
        return {"executors": 1, "ready": 1, "starting": 0, "lost": 0, "preempted": 0, "nodes": ["local"]}

    def shutdown(self) -> None:
        pass
