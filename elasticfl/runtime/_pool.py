"""The executor pool: executor actors that pull work units, and re-run units whose executor died.

Weights go into the object store once per round; each unit is one actor call
that trains a run of clients and returns their partial weighted sum, so a
round costs O(units) calls and O(units x model) bytes, not O(clients).
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
# Errors that mean "the executor (or its node) is gone", not "the user's code raised".
_EXECUTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)


class RayExecutorPool:
    def __init__(self, config: RunConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self._config_dict = config.to_dict()
        self._options = executor_options(config.executors)
        self._ready_timeout_s = config.executors.placement_timeout_s
        self._executors: dict[int, Any] = {}
        self._nodes: dict[int, str] = {}
        self._spawned = 0
        self._generation = secrets.token_hex(2)
        self._weights_ref: tuple[Weights, Any] | None = None
        self.replaced = 0
        self._policy = FailurePolicy(config.executors.max_unit_retries)
        for _ in range(self._initial_count()):
            self._spawn()
        self._wait_ready()

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

    def _spawn(self) -> int:
        index = self._spawned
        self._spawned += 1
        actor = ExecutorActor.options(
            # the generation tells a restarted controller's executors from those of the one before
            name=f"{self.run_id}/executor-{self._generation}.{index}",
            max_restarts=0,  # a lost executor is replaced by the pool, its unit re-queued
            **self._options,
        ).remote(self._config_dict, self._options["num_cpus"])
        self._executors[index] = actor
        return index

    def _wait_ready(self) -> None:
        """Wait until every executor is placed and has loaded its data, or say why not."""
        refs = {actor.ready.remote(): index for index, actor in self._executors.items()}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=self._ready_timeout_s)
        for ref in ready:
            try:
                self._nodes[refs[ref]] = ray.get(ref)
            except RayTaskError as exc:
                raise TaskError(f"an executor could not load the task or the data: {exc.cause!r}") from exc
            except _EXECUTOR_LOST:
                self._replace(refs[ref])
        if waiting:
            raise ClusterError(
                f"{len(waiting)} of {len(refs)} executors were not placed within {self._ready_timeout_s:.0f}s: "
                f"no node offers what one executor asks for ({self._options}); lower executors.num_cpus / "
                "num_gpus / resources / accelerator_type or executors.count, or add such nodes (`ray status`)"
            )

    def _replace(self, index: int) -> None:
        actor = self._executors.pop(index, None)
        self._nodes.pop(index, None)
        if actor is not None:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.replaced += 1
        self._spawn()

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
        load = {i: 0 for i in self._executors}
        results: list[UnitResult] = []
        while pending or inflight:
            for index, actor in list(self._executors.items()):
                while pending and load.setdefault(index, 0) < _PREFETCH:
                    unit = pending.popleft()
                    attempts[unit.unit_id] = attempts.get(unit.unit_id, 0) + 1
                    inflight[actor.run_unit.remote(round, ref, unit)] = (index, unit)
                    load[index] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=5.0)
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
                    if index in self._executors:
                        self._replace(index)
                    load.pop(index, None)
                    pending.appendleft(unit)
                    continue
                except RayTaskError as exc:
                    raise TaskError(f"round {round}: work unit {unit.unit_id} raised: {exc.cause!r}") from exc
                result.attempts = attempts[unit.unit_id]
                results.append(result)
        return results

    def _call_any(self, method: str, *args: Any) -> Any:
        """Call one method on the least busy executor, moving to another if it dies."""
        deadline = time.monotonic() + self._ready_timeout_s
        for _ in range(self.config.executors.max_unit_retries + 1):
            index = min(self._executors)
            try:
                timeout = max(1.0, deadline - time.monotonic())
                return ray.get(getattr(self._executors[index], method).remote(*args), timeout=timeout)
            except _EXECUTOR_LOST:
                log.warning("executor %d lost during %s; retrying on another", index, method)
                self._replace(index)
            except GetTimeoutError as exc:
                raise ClusterError(
                    f"no executor became ready within {self._ready_timeout_s:.0f}s; the cluster may lack the "
                    f"resources one executor asks for ({self._options}) — check `ray status`"
                ) from exc
            except RayTaskError as exc:
                raise TaskError(f"{method} raised on an executor: {exc.cause!r}") from exc
        raise RunFailedError(f"{method}: executors kept dying; check the nodes' health")

    def describe(self) -> dict[str, Any]:
        return {"executors": len(self._executors), "replaced": self.replaced, "options": self._options}

    def shutdown(self) -> None:
        for actor in self._executors.values():
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self._executors.clear()
