"""The controller actor: one per run, named and detached, running the round loop in a thread.

Its methods answer status and stop requests while the loop runs. If the actor
is restarted (its node died), it reloads the run from the latest checkpoint.
After each round it updates the run's Ray metrics (see ``_metrics``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from ..checkpoint import CheckpointStore
from ..config import RunConfig
from ..controller import Controller, RunState
from ._metrics import RayMetricsSink, RoundMetrics
from ._pool import RayExecutorPool

__all__ = ["ControllerActor", "make_store"]

log = logging.getLogger("elasticfl.controller")


def make_store(config: RunConfig, run_id: str) -> CheckpointStore:
    return CheckpointStore(
        config.resolved_storage(),
        run_id,
        keep_last=config.checkpoint.keep_last,
        endpoint_url=config.resolved_endpoint(),
    )


@ray.remote(num_cpus=0, max_concurrency=16)
class ControllerActor:
    def __init__(self, config: dict[str, Any], run_id: str, resume: bool, linger_s: float = 600.0) -> None:
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.config = RunConfig.from_dict(config)
        self.run_id = run_id
        self._linger_s = linger_s
        self._released = threading.Event()
        self._pool: RayExecutorPool | None = None
        self.controller = _MeteredController(
            self.config, run_id, _LazyPool(self), make_store(self.config, run_id), resume=resume or restarted
        )
        self._thread = threading.Thread(target=self._main, name="elasticfl-rounds", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.controller.run()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
        # Stay reachable so a driver can read the outcome, then leave the cluster.
        self._released.wait(self._linger_s)
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def pool(self) -> RayExecutorPool:
        if self._pool is None:
            self._pool = RayExecutorPool(self.config, self.run_id)
        return self._pool

    # -- remote API ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.controller.status()

    def poll(self, after_round: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The status and the history records after ``after_round``, in one call."""
        return self.controller.poll(after_round)

    def stop(self, abandon: bool = False) -> None:
        self.controller.request_stop(abandon)

    def weights(self) -> list:
        return list(self.controller.weights or [])

    def release(self) -> None:
        """The driver has read the outcome; the actor may exit once the run is over."""
        self._released.set()


class _MeteredController(Controller):
    """The plain round loop, reporting each round to Ray's metrics (the Controller knows no Ray)."""

    def __init__(self, config: RunConfig, run_id: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, run_id, *args, **kwargs)
        self._metrics = RoundMetrics(run_id, config.run.rounds)
        self._sink = RayMetricsSink()

    def start(self) -> None:
        super().start()
        # A resumed run reloaded the rounds its earlier controller ran (and counted): gauges only.
        self._report(self._metrics.resumed, self.history)

    def step(self) -> RunState:
        state = super().step()
        self._report(self._metrics.round, self.history[-1])
        return state

    def _report(self, updates: Any, arg: Any) -> None:
        try:  # metrics are a report: never fail a run over them
            self._sink.apply(updates(arg))
        except Exception as exc:
            log.error("run %s: could not report metrics: %s: %s", self.run_id, type(exc).__name__, exc)


class _LazyPool:
    """Creates the executors in the round thread, so the actor's constructor returns at once."""

    def __init__(self, owner: ControllerActor) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner.pool(), name)
