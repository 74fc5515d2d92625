"""What an executor asks Ray for, and how many executors of a pool the cluster's nodes hold."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from ..config import ExecutorShape

__all__ = ["executor_options", "resource_bundle", "executors_that_fit", "NodeView"]

# Ray advertises accelerator types as a tiny resource on each node that has them.
_ACCELERATOR_PREFIX = "accelerator_type:"

NodeView = Mapping[str, Any]  # an entry of ray.nodes(): "Alive", "Resources", "Labels"


def executor_options(shape: ExecutorShape) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": shape.num_cpus, "num_gpus": shape.num_gpus}
    if shape.accelerator_type:
        options["accelerator_type"] = shape.accelerator_type
    if shape.resources:
        options["resources"] = dict(shape.resources)
    if shape.labels:
        options["label_selector"] = dict(shape.labels)
    return options


def resource_bundle(shape: ExecutorShape) -> dict[str, float]:
    """One executor's demand as the autoscaler reads it (`request_resources(bundles=...)`)."""
    bundle = {"CPU": shape.num_cpus, "GPU": shape.num_gpus, **shape.resources}
    if shape.accelerator_type:
        bundle[_ACCELERATOR_PREFIX + shape.accelerator_type] = 0.001
    return {name: float(amount) for name, amount in bundle.items() if amount > 0}


def executors_that_fit(shape: ExecutorShape, nodes: Iterable[NodeView]) -> int:
    """How many executors of this shape the alive nodes hold, node by node (an executor
    cannot straddle two nodes), counting only nodes whose labels match the pool's."""
    demand = resource_bundle(shape)
    total = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        labels = node.get("Labels") or {}
        if any(labels.get(k) != v for k, v in shape.labels.items()):
            continue
        have = node.get("Resources") or {}
        fits = [
            math.inf if name.startswith(_ACCELERATOR_PREFIX) and have.get(name, 0) > 0
            else math.floor(have.get(name, 0.0) / amount + 1e-9)
            for name, amount in demand.items()
        ]
        n = min(fits) if fits else math.inf
        # An executor that asks for nothing still needs a process: count one per CPU.
        total += int(n) if n != math.inf else max(1, int(have.get("CPU", 1)))
    return total
