"""The executor pool: executor actors in named node pools, pulling work units.

Weights go into the object store once per round; each unit is one actor call
that trains a run of clients and returns their partial weighted sum, so a
round costs O(units) calls and O(units x model) bytes, not O(clients).

The pool is elastic. Each node pool's executor count follows the round's work,
the nodes that can hold its executors, and the pool's min/max: a node that
joins gets executors from the next dispatch on, a node that leaves takes its
executors (and the units in flight there, which are re-queued with the same
seeds) with it. Before each round the pool tells the autoscaler what the
round needs, and withdraws the request when the run ends.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from ..config import RunConfig
from ..controller import ClientReport, UnitResult
from ..errors import ClusterError, RunFailedError, TaskError
from ..policies import Action, FailureKind, FailurePolicy, RoundClosePolicy, RoundProgress, UnitFailure
from ..selection import WorkUnit, default_unit_size
from ..strategies import WeightedSum
from ..weights import Weights
from ._executor import ExecutorActor
from ._resources import executor_options, executors_that_fit, resource_bundle

__all__ = ["RayExecutorPool"]

log = logging.getLogger("elasticfl.pool")

# Calls queued per executor: the next unit is already there when one finishes.
_PREFETCH = 2
# Once one executor is placed, how long a run's start waits for the others.
_START_GRACE_S = 10.0
# How long an executor may go on with a closed round's call before it is replaced: a
# client that was merely late finishes within it and keeps its executor (and loaded data).
_LEFTOVER_GRACE_S = 0.1
# How often, at most, the pool re-reads the cluster's nodes while a round runs.
_REBALANCE_EVERY_S = 1.0
# How Ray records a node that was shut down on purpose (NodeDeathInfo.Reason): EXPECTED_TERMINATION
# (SIGTERM to its raylet), AUTOSCALER_DRAIN_PREEMPTED, AUTOSCALER_DRAIN_IDLE.
_TAKEN_AWAY = (1, 3, 4)
# Errors that mean "the executor (or its node) is gone", not "the user's code raised".
_EXECUTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class _Executor:
    index: int
    pool: str
    actor: Any
    ready_call: Any | None  # the ready() call until it answers: placed and data loaded
    node_id: str | None = None
    load: int = 0  # calls queued or running on it
    leftover: list[Any] = field(default_factory=list)  # calls of a closed round still on it: no new work till done
    leftover_since: float = 0.0

    @property
    def placed(self) -> bool:
        return self.node_id is not None


class RayExecutorPool:
    def __init__(self, config: RunConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self._config_dict = config.to_dict()
        self._shapes = config.pool_shapes()
        self._options = {name: executor_options(shape) for name, shape in self._shapes.items()}
        self._placement = config.client_pools()
        self._placement_timeout_s = config.executors.placement_timeout_s
        self._policy = FailurePolicy(config.executors.max_unit_retries, config.executors.max_preemptions)
        self._executors: dict[int, _Executor] = {}
        self._spawned = 0
        self._generation = secrets.token_hex(2)  # tells a restarted controller's executors from the last one's
        self._weights_ref: tuple[Weights, Any] | None = None
        self._nodes: list[dict[str, Any]] = []
        self._draining: set[str] = set()  # nodes told to go: no new work there
        self._drained: set[str] = set()  # every node seen draining: losses there are preemptions
        self._nodes_read_at = -math.inf
        self._requested: list[dict[str, float]] | None = None
        self.lost = 0
        self.preempted = 0
        self._typical_work, primary = self._expected_work()
        self._request_capacity(primary)
        self._rebalance(self._typical_work, force=True)
        self._await_start()

    # -- sizing ----------------------------------------------------------------------
    def _pools_of(self, unit: WorkUnit) -> tuple[str, ...]:
        return unit.pools or tuple(self._shapes)

    def _expected_work(self) -> tuple[Counter, Counter]:
        """Units a typical round has for each pool (any unit that may run there) and
        for each pool as first choice, before the first cohort is known."""
        n = self.config.data.num_clients
        selected = self.config.cohort.selected(n)
        size = self.config.executors.unit_size or default_unit_size(selected)
        if self.config.asynchronous.enabled:  # a steady `concurrency` one-client units
            selected, size = self.config.asynchronous.concurrency, 1
        allowed, first = Counter(), Counter()
        for pools, count in Counter(self._placement.get(c, ()) for c in range(n)).items():
            pools = pools or tuple(self._shapes)
            units = math.ceil(selected * count / n / size)
            first[pools[0]] += units
            for p in pools:
                allowed[p] += units
        return allowed, first

    def _read_nodes(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._nodes_read_at < _REBALANCE_EVERY_S:
            return
        self._nodes_read_at = now
        nodes = ray.nodes()
        self._nodes = [n for n in nodes if n.get("Alive")]
        # Nodes that went on purpose (SIGTERM from Slurm or a cloud, a drain): their losses
        # are preemptions, not failures. A crashed or vanished node is "unexpected".
        self._drained |= {n["NodeID"] for n in nodes if not n.get("Alive") and n.get("DeathReason") in _TAKEN_AWAY}
        try:  # nodes told they will go (drained for preemption, a batch job's end): no new work there
            from ray._private.state import state

            self._draining = set(state.get_draining_nodes())
        except Exception:  # a private API: without it, draining nodes are noticed when they die
            self._draining = set()
        self._drained |= self._draining
        alive = {n["NodeID"] for n in self._nodes}
        for executor in [e for e in self._executors.values() if e.placed and e.node_id not in alive]:
            # Its node left: let it go now rather than when a call to it fails.
            self._lose(executor.index, self._kind_of(executor, None))

    def _rebalance(self, work: Counter, force: bool = False) -> None:
        """Start executors where nodes can hold them and there is work; withdraw unplaced
        ones that no longer have a node or work (they would hold autoscaler demand)."""
        self._read_nodes(force)
        # Draining nodes are as good as gone: their executors are replaced during the notice.
        staying = [n for n in self._nodes if n["NodeID"] not in self._draining]
        for name, shape in self._shapes.items():
            # A pool with work but no node that fits still gets one executor: it waits for a
            # node (an autoscaler's, a batch job's) and turns "never placed" into a clear error.
            fit = max(1, executors_that_fit(shape, staying))
            want = max(shape.min, min(work[name], fit, shape.max or math.inf))
            mine = [e for e in self._executors.values() if e.pool == name and e.node_id not in self._draining]
            for _ in range(want - len(mine)):
                self._spawn(name)
            extra = len(mine) - want
            for e in sorted((e for e in mine if not e.placed), key=lambda e: -e.index)[: max(0, extra)]:
                self._kill(e.index)

    def _request_capacity(self, first_choice: Counter) -> None:
        """Tell the autoscaler the executors this round could use (their first-choice pools)."""
        bundles, selectors = [], []
        for name, shape in self._shapes.items():
            count = max(shape.min, min(first_choice[name], shape.max or math.inf))
            bundles += [resource_bundle(shape)] * int(count)
            selectors += [dict(shape.labels)] * int(count)
        if bundles == self._requested:
            return
        try:
            from ray.autoscaler.sdk import request_resources

            if any(selectors):
                request_resources(bundles=bundles, bundle_label_selectors=selectors)
            else:
                request_resources(bundles=bundles)
            self._requested = bundles
        except Exception as exc:  # a hint to the autoscaler, never a reason to fail a round
            log.warning("could not send the autoscaler a resource request: %s", exc)

    # -- executors -------------------------------------------------------------------
    def _spawn(self, pool: str) -> None:
        index = self._spawned
        self._spawned += 1
        options = self._options[pool]
        actor = ExecutorActor.options(
            name=f"{self.run_id}/executor-{pool}-{self._generation}.{index}",  # the dashboard's actor list shows the pool
            max_restarts=0,  # a lost executor is replaced by the pool, its units re-queued
            **options,
        ).remote(self._config_dict, options["num_cpus"])
        self._executors[index] = _Executor(index, pool, actor, actor.ready.remote())

    def _kill(self, index: int) -> _Executor | None:
        executor = self._executors.pop(index, None)
        if executor is not None:
            try:
                ray.kill(executor.actor, no_restart=True)
            except Exception:  # already gone
                pass
        return executor

    def _lose(self, index: int, kind: FailureKind) -> None:
        """An executor is gone with its node or process; the next rebalance replaces it
        where a node can hold it."""
        if self._kill(index) is not None:
            self.lost += 1
            self.preempted += kind is FailureKind.PREEMPTED
            self._nodes_read_at = -math.inf  # re-read the nodes: the cluster just changed

    def _reap_leftovers(self, wait_s: float = 0.0) -> None:
        """Free executors whose closed-round calls have finished (waiting up to ``wait_s``);
        replace those still busy after the grace: a straggler would hold them for the rest of
        its work, while a client that was merely late keeps its executor and loaded data."""
        busy = [e for e in self._executors.values() if e.leftover]
        if not busy:
            return
        calls = [c for e in busy for c in e.leftover]
        done = set(ray.wait(calls, num_returns=len(calls), timeout=wait_s)[0])
        now = time.monotonic()
        for executor in busy:
            finished = [c for c in executor.leftover if c in done]
            executor.leftover = [c for c in executor.leftover if c not in done]
            executor.load -= len(finished)
            if executor.leftover and now - executor.leftover_since >= _LEFTOVER_GRACE_S:
                log.info("executor %d is still busy with a closed round's client; replacing it", executor.index)
                self._kill(executor.index)

    def _check_starting(self, timeout: float = 0.0) -> None:
        """Mark executors that have been placed and loaded their data as ready."""
        calls = {e.ready_call: e for e in self._executors.values() if e.ready_call is not None}
        if not calls:
            return
        done, _ = ray.wait(list(calls), num_returns=1, timeout=timeout)
        if done:  # take every one that is ready by now, not just the first
            done, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0)
        for call in done:
            executor = calls[call]
            executor.ready_call = None
            try:
                executor.node_id = ray.get(call)
            except RayTaskError as exc:
                raise TaskError(f"an executor could not load the task or the data: {exc.cause!r}") from exc
            except _EXECUTOR_LOST:
                log.warning("executor %d died while starting", executor.index)
                self._lose(executor.index, FailureKind.EXECUTOR_LOST)

    def _placed(self) -> list[_Executor]:
        return [e for e in self._executors.values() if e.placed]

    def _await_start(self) -> None:
        """Wait until one executor is placed, then briefly for the others; the rest join
        when nodes can hold them (the autoscaler's, or those a batch job joins)."""
        deadline = time.monotonic() + self._placement_timeout_s
        while not self._placed() and time.monotonic() < deadline:
            self._check_starting(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._rebalance(self._typical_work)
        if not self._placed():
            raise ClusterError(
                f"no executor was placed within executors.placement_timeout_s={self._placement_timeout_s:g}s: "
                f"no node offers what they ask for ({self._describe_shapes()}); lower num_cpus / num_gpus / "
                "resources / accelerator_type / labels, or add such nodes (`ray status` shows what there is)"
            )
        grace = time.monotonic() + min(_START_GRACE_S, max(0.0, deadline - time.monotonic()))
        while any(not e.placed for e in self._executors.values()) and time.monotonic() < grace:
            self._check_starting(timeout=min(0.5, max(0.0, grace - time.monotonic())))
        starting = sum(not e.placed for e in self._executors.values())
        if starting:
            log.warning("%d executors are not placed yet; they join when nodes can hold them", starting)

    def _loss_kind(self, executor: _Executor | None, exc: Exception | None) -> FailureKind:
        """Preempted: Ray says so (a node drained for preemption), the node had been draining
        or was shut down on purpose (SIGTERM: a Slurm job's end, a spot reclaim), or the pool
        is declared spot. Anything else is a failure."""
        if executor is not None and executor.node_id not in self._drained:
            self._read_nodes(force=True)  # learn how its node went, if it has
        return self._kind_of(executor, exc)

    def _kind_of(self, executor: _Executor | None, exc: Exception | None) -> FailureKind:
        preempted = bool(getattr(exc, "preempted", False)) or (
            executor is not None and (self._shapes[executor.pool].spot or executor.node_id in self._drained)
        )
        return FailureKind.PREEMPTED if preempted else FailureKind.EXECUTOR_LOST

    def _describe_shapes(self, pools: tuple[str, ...] | None = None) -> str:
        return "; ".join(f"pool {p!r}: {self._options[p]}" for p in (pools or tuple(self._shapes)))

    def _put(self, weights: Weights) -> Any:
        # The same weights object is evaluated and then trained on: put it once.
        if self._weights_ref is None or self._weights_ref[0] is not weights:
            self._weights_ref = (weights, ray.put(weights))
        return self._weights_ref[1]

    # -- the ExecutorPool protocol ----------------------------------------------------
    def init_weights(self) -> Weights:
        return self._call_any("init_weights")

    def evaluate(self, weights: Weights) -> dict[str, float]:
        return self._call_any("evaluate", self._put(weights))

    def train_units(
        self, round: int, weights: Weights, units: list[WorkUnit], close: RoundClosePolicy | None = None
    ) -> list[UnitResult]:
        return _Round(self, round, self._put(weights), units, close).run()

    def open_stream(self) -> "_Stream":
        return _Stream(self)

    def _call_any(self, method: str, *args: Any) -> Any:
        """Call one method on a ready executor, moving to another if it dies."""
        cfg = self.config.executors
        for _ in range(cfg.max_unit_retries + cfg.max_preemptions + 1):
            self._reap_leftovers(wait_s=_LEFTOVER_GRACE_S)  # never queue behind a closed round's straggler
            deadline = time.monotonic() + self._placement_timeout_s
            while not self._placed() and time.monotonic() < deadline:
                self._check_starting(timeout=1.0)
                self._rebalance(self._typical_work)
            if not self._placed():
                raise ClusterError(f"{method}: no executor is placed; {self._describe_shapes()}")
            executor = min(self._placed(), key=lambda e: (e.load, e.index))
            try:
                return ray.get(getattr(executor.actor, method).remote(*args), timeout=self._placement_timeout_s)
            except _EXECUTOR_LOST as exc:
                log.warning("executor %d lost during %s; retrying on another", executor.index, method)
                self._lose(executor.index, self._loss_kind(executor, exc))
            except GetTimeoutError as exc:
                raise ClusterError(f"{method} on an executor took longer than executors.placement_timeout_s") from exc
            except RayTaskError as exc:
                raise TaskError(f"{method} raised on an executor: {exc.cause!r}") from exc
        raise RunFailedError(f"{method}: executors kept dying; check the nodes' health")

    def describe(self) -> dict[str, Any]:
        placed = self._placed()
        return {
            "executors": len(self._executors),
            "ready": len(placed),
            "starting": len(self._executors) - len(placed),
            "lost": self.lost,
            "preempted": self.preempted,
            "nodes": sorted({e.node_id for e in placed if e.node_id}),
            "pools": {
                name: {
                    "ready": sum(e.pool == name for e in placed),
                    "starting": sum(e.pool == name and not e.placed for e in self._executors.values()),
                }
                for name in self._shapes
            },
        }

    def shutdown(self) -> None:
        for index in list(self._executors):
            self._kill(index)
        if self._requested:  # the run no longer needs those nodes: let the autoscaler scale down
            self._request_capacity(Counter({name: 0 for name in self._shapes}))


class _Round:
    """One round's dispatch: units to executors, failures to the policy, until the
    round has every unit back or the close policy ends it early."""

    def __init__(self, pool: RayExecutorPool, round: int, weights_ref: Any, units: list[WorkUnit], close) -> None:
        self.pool = pool
        self.round = round
        self.weights_ref = weights_ref
        self.close = close
        # The most constrained units first, so a unit that may run anywhere does not take
        # the last free slot of a pool that another unit is pinned to.
        self.queue = sorted(units, key=lambda u: len(pool._pools_of(u)))
        self.inflight: dict[Any, tuple[int, WorkUnit]] = {}
        self.failures: Counter = Counter()
        self.preemptions: Counter = Counter()
        self.attempts: Counter = Counter()
        self.results: list[UnitResult] = []
        self.ok = 0
        self.started = time.monotonic()
        self.starved_since: dict[tuple[str, ...], float] = {}
        self.work = Counter(p for u in units for p in pool._pools_of(u))
        pool._reap_leftovers(wait_s=_LEFTOVER_GRACE_S)  # the last round's late clients: done, or replaced now
        pool._request_capacity(Counter(pool._pools_of(u)[0] for u in units))
        pool._rebalance(self.work, force=True)

    def run(self) -> list[UnitResult]:
        while self.queue or self.inflight:
            self._advance()
            if self.close is not None:
                elapsed = time.monotonic() - self.started
                reason = self.close.close_reason(RoundProgress(elapsed, self.ok, len(self.queue) + len(self.inflight)))
                if reason is not None:
                    self._abandon(reason)
                    break
            self._await_results()
        return sorted(self.results, key=lambda r: r.order)

    def _advance(self) -> None:
        """Bring the executors up to date (freed, placed, started, replaced) and hand out work."""
        pool = self.pool
        pool._reap_leftovers()
        pool._check_starting()
        pool._rebalance(self.work)
        self._dispatch()

    def _await_results(self) -> None:
        """Wait briefly for calls to finish, or with none in flight for an executor to be placed."""
        self._check_starved()
        if not self.inflight:
            self.pool._check_starting(timeout=0.5)
            return
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
        for call in ready:
            self._collect(call)

    def _dispatch(self) -> None:
        pool = self.pool
        free = [e for e in pool._placed() if e.load < _PREFETCH and not e.leftover and e.node_id not in pool._draining]
        if not free:
            return
        waiting = []
        for unit in self.queue:
            executor = None
            for name in pool._pools_of(unit):  # preference order: fall back when a pool is full
                candidates = [e for e in free if e.pool == name and e.load < _PREFETCH]
                if candidates:
                    executor = min(candidates, key=lambda e: (e.load, e.index))
                    break
            if executor is None:
                waiting.append(unit)
                continue
            self._send(unit, executor)
        self.queue = waiting
        if not self.queue:
            self._steal(free)

    def _send(self, unit: WorkUnit, executor: _Executor) -> None:
        self.attempts[unit.order] += 1
        round, weights_ref = self._inputs(unit)
        self.inflight[executor.actor.run_unit.remote(round, weights_ref, unit)] = (executor.index, unit)
        executor.load += 1

    def _inputs(self, unit: WorkUnit) -> tuple[int, Any]:
        """The round number (its clients' seeds) and the weights a unit trains from."""
        return self.round, self.weights_ref

    def _steal(self, free: list[_Executor]) -> None:
        """An idle executor takes a unit that waits behind another executor's running call
        (a straggler, say): the waiting call is cancelled (not started, so it never ran)."""
        idle = [e for e in free if e.load == 0]
        for executor in idle:
            waiting = [  # the newest call on an executor with more than one: it has not started
                (call, index, unit) for call, (index, unit) in self.inflight.items()
                if index != executor.index and self.pool._executors.get(index) is not None
                and self.pool._executors[index].load > 1
                and self.pool._executors[index].pool in self.pool._pools_of(unit)
                and executor.pool in self.pool._pools_of(unit)
            ]
            if not waiting:
                return
            call, index, unit = waiting[-1]
            try:
                ray.cancel(call)
            except Exception:  # already running or done: let both run; the first result counts
                continue
            del self.inflight[call]
            self.pool._executors[index].load -= 1
            self.attempts[unit.order] -= 1  # the cancelled call never ran
            self._send(unit, executor)

    def _collect(self, call: Any) -> None:
        pool = self.pool
        index, unit = self.inflight.pop(call)
        executor = pool._executors.get(index)
        if executor is not None:
            executor.load -= 1
        try:
            result: UnitResult = ray.get(call)
        except _EXECUTOR_LOST as exc:
            self._retry_or_drop(unit, executor, exc)
            return
        except RayTaskError as exc:
            raise TaskError(f"round {self.round}: work unit {unit.unit_id} raised: {exc.cause!r}") from exc
        result.part = unit.part
        result.attempts = self.attempts[unit.order]
        for client in result.clients:
            client.pool = executor.pool if executor is not None else ""
        self.ok += sum(c.status == "ok" for c in result.clients)
        self.results.append(result)

    def _retry_or_drop(self, unit: WorkUnit, executor: _Executor | None, exc: Exception) -> None:
        pool = self.pool
        kind = pool._loss_kind(executor, exc)
        (self.preemptions if kind is FailureKind.PREEMPTED else self.failures)[unit.order] += 1
        decision = pool._policy.decide(
            UnitFailure(self.round, unit.unit_id, unit.client_ids, self.failures[unit.order],
                        self.preemptions[unit.order], kind)
        )
        if executor is not None:
            pool._lose(executor.index, kind)
        if decision.action is Action.RETRY:
            log.warning("%s (%s)", decision.reason, type(exc).__name__)
            self.queue.insert(0, unit)
        elif decision.action is Action.SPLIT:
            log.warning("%s", decision.reason)
            self.queue[0:0] = unit.split()
        else:
            log.error("round %d: dropped client(s) %s: %s", self.round, list(unit.client_ids), decision.reason)
            self.results.append(_unreported(unit, "failed", decision.reason, self.attempts[unit.order]))

    def _abandon(self, reason: str) -> None:
        """The round closes early: queued units are not run and running ones are discarded.
        An executor with calls of the round left is given a short grace to finish them and is
        replaced after it (see _reap_leftovers). The calls are not cancelled: cancelling a
        call already sent to an actor leaves a gap in its ordered queue, which Ray 2.60 waits
        30 s on and then fails the actor's next call."""
        pool = self.pool
        now = time.monotonic()
        for call, (index, unit) in self.inflight.items():
            executor = pool._executors.get(index)
            if executor is not None:
                executor.leftover.append(call)
                if len(executor.leftover) == 1:
                    executor.leftover_since = now
            self.results.append(_unreported(unit, "late", reason, self.attempts[unit.order]))
        for unit in self.queue:
            self.results.append(_unreported(unit, "late", reason, self.attempts[unit.order]))
        self.inflight.clear()
        self.queue = []

    def _check_starved(self) -> None:
        """Units whose pools have had no placed executor for the placement timeout: an
        error that names the pool, instead of the silent wait Ray would give."""
        now = time.monotonic()
        placed_pools = {e.pool for e in self.pool._placed()}
        starved = {self.pool._pools_of(u) for u in self.queue if not placed_pools.intersection(self.pool._pools_of(u))}
        self.starved_since = {p: self.starved_since.get(p, now) for p in starved}
        for pools, since in self.starved_since.items():
            if now - since >= self.pool._placement_timeout_s:
                clients = sorted(c for u in self.queue if self.pool._pools_of(u) == pools for c in u.client_ids)
                raise ClusterError(
                    f"round {self.round}: clients {clients[:5]}{'...' if len(clients) > 5 else ''} may only run in "
                    f"pool(s) {list(pools)}, and no executor there was placed within "
                    f"executors.placement_timeout_s={self.pool._placement_timeout_s:g}s "
                    f"({self.pool._describe_shapes(pools)}); add nodes with those resources/labels "
                    "(an autoscaler node type, a Slurm job joining the head), or change the `clients` rules"
                )


class _Stream(_Round):
    """Asynchronous training (FedBuff): units are submitted one at a time, each with the
    weights version it starts from, and come back in the order they finish. Failures
    follow the same policy as a round's: retried, split, or reported as dropped."""

    def __init__(self, pool: RayExecutorPool) -> None:
        super().__init__(pool, 0, None, [], None)
        self.work = pool._typical_work  # the executors a steady stream of `concurrency` units needs
        self._refs: dict[int, Any] = {}  # unit id (its dispatch number) -> its weights' object ref
        self._versions: dict[int, tuple[Weights, Any]] = {}  # id(weights) -> (weights, ref): each version put once

    def _inputs(self, unit: WorkUnit) -> tuple[int, Any]:
        return unit.unit_id, self._refs[unit.unit_id]  # a dispatch's number seeds its client, as a round does

    def submit(self, unit: WorkUnit, weights: Weights) -> None:
        if id(weights) not in self._versions:
            self._versions[id(weights)] = (weights, ray.put(weights))
        self._refs[unit.unit_id] = self._versions[id(weights)][1]
        self.queue.append(unit)

    def next(self) -> UnitResult:
        """The next unit to finish (blocks until one does)."""
        while not self.results:
            if not self.queue and not self.inflight:
                raise RuntimeError("next() with nothing submitted")
            self._advance()
            self._await_results()
        result = self.results.pop(0)
        self._refs.pop(result.unit_id, None)
        live = {id(ref) for ref in self._refs.values()}
        self._versions = {k: v for k, v in self._versions.items() if id(v[1]) in live}  # versions nobody trains from
        return result


def _unreported(unit: WorkUnit, status: str, reason: str, attempts: int) -> UnitResult:
    """A unit whose clients sent no update this round, with why, for the history."""
    reports = [ClientReport(cid, status, reason=reason) for cid in unit.client_ids]
    return UnitResult(unit.unit_id, WeightedSum(), reports, attempts=attempts, part=unit.part)
