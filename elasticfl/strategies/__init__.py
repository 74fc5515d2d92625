"""Aggregation strategies: pure numpy, one small module each."""

from __future__ import annotations

from ._base import AUTO_FLOAT64_MAX_PARAMS, Strategy, WeightedSum, accumulator_dtype, resolve_precision
from .fedavg import FedAvg
from .fedavgm import FedAvgM

__all__ = ["Strategy", "WeightedSum", "accumulator_dtype", "resolve_precision", "AUTO_FLOAT64_MAX_PARAMS", "FedAvg", "FedAvgM", "build_strategy"]


def build_strategy(config) -> Strategy:
    """The strategy a config's ``strategy`` section names."""
    if config.name == "fedavg":
        return FedAvg()
    if config.name == "fedavgm":
        return FedAvgM(server_lr=config.server_lr, momentum=config.momentum)
    raise ValueError(f"unknown strategy {config.name!r}")
