"""The executor actor: a ClientWorker placed by Ray on a node with the resources asked for."""

from __future__ import annotations

import os
from typing import Any

import ray

from ..config import RunConfig
from ..selection import WorkUnit
from ..weights import Weights
from ..worker import ClientWorker

__all__ = ["ExecutorActor"]


@ray.remote
class ExecutorActor:
    def __init__(self, config: dict[str, Any], num_cpus: float) -> None:
        # Limit every numeric library to the CPUs this actor was given, so two
        # executors on one node do not oversubscribe it.
        threads = max(1, int(num_cpus))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.config = RunConfig.from_dict(config)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.worker = ClientWorker(self.config, node_id=self.node_id)
        if self.config.task.type == "classification":
            import torch

            torch.set_num_threads(threads)

    def ready(self) -> str:
        """Loads the data and the task, then answers with this executor's node id."""
        return self.worker.prepare()

    def init_weights(self) -> Weights:
        return self.worker.init_weights()

    def run_unit(self, round: int, weights: Weights, unit: WorkUnit):
        return self.worker.run_unit(round, weights, unit)

    def evaluate(self, weights: Weights) -> dict[str, float]:
        return self.worker.evaluate(weights)
