"""Ray resource options for executors, and how many executors a cluster can hold."""

from __future__ import annotations

import math
from typing import Any

from ..config import ExecutorConfig

__all__ = ["executor_options", "executors_that_fit"]


def executor_options(cfg: ExecutorConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    if cfg.accelerator_type:
        options["accelerator_type"] = cfg.accelerator_type
    if cfg.resources:
        options["resources"] = dict(cfg.resources)
    return options


def executors_that_fit(cfg: ExecutorConfig, cluster: dict[str, float]) -> int:
    """How many executors with these options the cluster's total resources hold."""
    demand = {"CPU": cfg.num_cpus, "GPU": cfg.num_gpus, **cfg.resources}
    if cfg.accelerator_type:
        demand[f"accelerator_type:{cfg.accelerator_type}"] = 0.001
    fits = []
    for name, amount in demand.items():
        if amount <= 0:
            continue
        have = cluster.get(name, 0.0)
        if name.startswith("accelerator_type:"):
            fits.append(math.inf if have > 0 else 0)
        else:
            fits.append(math.floor(have / amount + 1e-9))
    n = min(fits) if fits else math.inf
    return int(n) if n != math.inf else max(1, int(cluster.get("CPU", 1)))
