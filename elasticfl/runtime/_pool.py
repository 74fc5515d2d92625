"""The executor pool: executor actors that pull work units, and re-run units whose executor died.

Weights go into the object store once per round; each unit is one actor call
that trains a run of clients and returns their partial weighted sum, so a
round costs O(units) calls and O(units x model) bytes, not O(clients).

The pool is elastic: an executor lost with its node is replaced at once, and
the replacement waits (without blocking the round) until some node can hold
it — a node that joins later is used from the next dispatch on.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from ..config import RunConfig
from ..controller import UnitResult
from ..errors import ClusterError, RunFailedError, TaskError
from ..policies import Action, FailureKind, FailurePolicy, UnitFailure
from ..selection import WorkUnit, default_unit_size
from ..weights import Weights
from ._executor import ExecutorActor
from ._resources import executor_options, executors_that_fit

__all__ = ["RayExecutorPool"]

log = logging.getLogger("elasticfl.pool")

# Calls queued per executor: the next unit is already there when one finishes.
_PREFETCH = 2
# Once one executor is placed, how long a run's start waits for the others.
_START_GRACE_S = 10.0
# Errors that mean "the executor (or its node) is gone", not "the user's code raised".
_EXECUTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


class RayExecutorPool:
    def __init__(self, config: RunConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self._config_dict = config.to_dict()
        self._options = executor_options(config.executors)
        self._placement_timeout_s = config.executors.placement_timeout_s
        self._executors: dict[int, Any] = {}  # every live executor, placed or not
        self._nodes: dict[int, str] = {}  # the ready ones: index -> node id
        self._starting: dict[Any, int] = {}  # ready() call -> index, for those not ready yet
        self._spawned = 0
        self._generation = secrets.token_hex(2)
        self._weights_ref: tuple[Weights, Any] | None = None
        self.replaced = 0
        self._policy = FailurePolicy(config.executors.max_unit_retries)
        for _ in range(self._initial_count()):
            self._spawn()
        self._await_ready(all_of_them=True)

    # -- executors -------------------------------------------------------------------
    def _initial_count(self) -> int:
        cfg = self.config.executors
        if cfg.count is not None:
            return cfg.count
        n = self.config.data.num_clients
        units = -(-self.config.cohort.size(n) // (cfg.unit_size or default_unit_size(self.config.cohort.size(n))))
        fit = executors_that_fit(cfg, ray.cluster_resources())
        if fit < 1:
            raise ClusterError(
                f"no node in the cluster has the resources one executor asks for ({self._options}); "
                "lower executors.num_cpus / num_gpus / resources, or add a node that has them"
            )
        return max(1, min(fit, units))

    def _spawn(self) -> None:
        index = self._spawned
        self._spawned += 1
        actor = ExecutorActor.options(
            # the generation tells a restarted controller's executors from those of the one before
            name=f"{self.run_id}/executor-{self._generation}.{index}",
            max_restarts=0,  # a lost executor is replaced by the pool, its unit re-queued
            **self._options,
        ).remote(self._config_dict, self._options["num_cpus"])
        self._executors[index] = actor
        self._starting[actor.ready.remote()] = index

    def _lose(self, index: int) -> None:
        """An executor is gone: forget it and start a replacement, which is placed when it can be."""
        actor = self._executors.pop(index, None)
        if actor is None:
            return
        self._nodes.pop(index, None)
        for ref, i in list(self._starting.items()):
            if i == index:
                del self._starting[ref]
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone
            pass
        self.replaced += 1
        self._spawn()

    def _check_starting(self, timeout: float = 0.0, all_of_them: bool = False) -> None:
        """Move executors that have been placed and loaded their data into the ready set."""
        if not self._starting:
            return
        wanted = len(self._starting) if all_of_them else 1
        done, _ = ray.wait(list(self._starting), num_returns=wanted, timeout=timeout)
        if not all_of_them:  # take every one that is ready by now, not just the first
            done, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=0)
        for ref in done:
            index = self._starting.pop(ref)
            try:
                self._nodes[index] = ray.get(ref)
            except RayTaskError as exc:
                raise TaskError(f"an executor could not load the task or the data: {exc.cause!r}") from exc
            except _EXECUTOR_LOST:
                log.warning("executor %d died while starting; replacing it", index)
                self._lose(index)

    def _await_ready(self, all_of_them: bool = False) -> None:
        """Wait for executors to be placed: for all of them at start, for one later on.

        Whatever is placed by the deadline goes to work; the rest keep waiting for a
        node (the autoscaler's, or one a batch job joins) and take work once placed.
        """
        deadline = time.monotonic() + self._placement_timeout_s
        while not self._nodes and self._starting and time.monotonic() < deadline:
            self._check_starting(timeout=max(0.0, deadline - time.monotonic()))
        if all_of_them and self._nodes and self._starting:
            # Some are working already: give the rest a short grace, not the whole timeout.
            self._check_starting(timeout=min(_START_GRACE_S, max(0.0, deadline - time.monotonic())), all_of_them=True)
        if not self._nodes:
            raise ClusterError(
                f"{len(self._starting)} of {len(self._executors)} executors were not placed within "
                f"{self._placement_timeout_s:.0f}s: no node offers what one executor asks for ({self._options}); "
                "lower executors.num_cpus / num_gpus / resources / accelerator_type or executors.count, "
                "or add such nodes (`ray status`)"
            )
        if all_of_them and self._starting:
            log.warning(
                "%d of %d executors are not placed yet; the run starts with %d and the rest join "
                "when nodes can hold them", len(self._starting), len(self._executors), len(self._nodes)
            )

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

    def train_units(self, round: int, weights: Weights, units: list[WorkUnit]) -> list[UnitResult]:
        ref = self._put(weights)
        pending = deque(units)
        attempts: dict[int, int] = {}
        inflight: dict[Any, tuple[int, WorkUnit]] = {}
        load: dict[int, int] = {}
        results: list[UnitResult] = []
        while pending or inflight:
            self._check_starting()  # a node that joined: its executor takes work from now on
            if not self._nodes and not inflight:
                self._await_ready()
            for index in list(self._nodes):
                actor = self._executors[index]
                while pending and load.get(index, 0) < _PREFETCH:
                    unit = pending.popleft()
                    attempts[unit.unit_id] = attempts.get(unit.unit_id, 0) + 1
                    inflight[actor.run_unit.remote(round, ref, unit)] = (index, unit)
                    load[index] = load.get(index, 0) + 1
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5 if self._starting else 5.0)
            for obj in ready:
                index, unit = inflight.pop(obj)
                load[index] = load.get(index, 1) - 1
                try:
                    result: UnitResult = ray.get(obj)
                except _EXECUTOR_LOST as exc:
                    failure = UnitFailure(round, unit.unit_id, unit.client_ids[0], unit.client_ids[-1],
                                          attempts[unit.unit_id], FailureKind.EXECUTOR_LOST)
                    decision = self._policy.decide(failure)
                    if decision.action is Action.FAIL_RUN:
                        raise RunFailedError(decision.reason) from exc
                    log.warning("%s (%s)", decision.reason, type(exc).__name__)
                    self._lose(index)
                    load.pop(index, None)
                    pending.appendleft(unit)
                    continue
                except RayTaskError as exc:
                    raise TaskError(f"round {round}: work unit {unit.unit_id} raised: {exc.cause!r}") from exc
                result.attempts = attempts[unit.unit_id]
                results.append(result)
        return results

    def _call_any(self, method: str, *args: Any) -> Any:
        """Call one method on a ready executor, moving to another if it dies."""
        for _ in range(self.config.executors.max_unit_retries + 1):
            self._check_starting()
            if not self._nodes:
                self._await_ready()
            index = min(self._nodes)
            try:
                call = getattr(self._executors[index], method).remote(*args)
                return ray.get(call, timeout=self._placement_timeout_s)
            except _EXECUTOR_LOST:
                log.warning("executor %d lost during %s; retrying on another", index, method)
                self._lose(index)
            except GetTimeoutError as exc:
                raise ClusterError(f"{method} on an executor took longer than executors.placement_timeout_s") from exc
            except RayTaskError as exc:
                raise TaskError(f"{method} raised on an executor: {exc.cause!r}") from exc
        raise RunFailedError(f"{method}: executors kept dying; check the nodes' health")

    def describe(self) -> dict[str, Any]:
        return {
            "executors": len(self._executors),
            "ready": len(self._nodes),
            "starting": len(self._starting),
            "replaced": self.replaced,
            "nodes": sorted(set(self._nodes.values())),
        }

    def shutdown(self) -> None:
        for actor in self._executors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._executors.clear()
        self._nodes.clear()
        self._starting.clear()
