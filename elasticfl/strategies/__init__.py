"""Aggregation strategies: pure numpy, one small module each."""

from __future__ import annotations

from ._base import AUTO_FLOAT64_MAX_PARAMS, Strategy, WeightedSum, accumulator_dtype, resolve_precision
from .fedavg import FedAvg
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavgm import FedAvgM
from .fedopt import FedOpt
from .fedprox import FedProx
from .fedyogi import FedYogi

__all__ = [
    "Strategy", "WeightedSum", "accumulator_dtype", "resolve_precision", "AUTO_FLOAT64_MAX_PARAMS",
    "FedAvg", "FedAvgM", "FedProx", "FedOpt", "FedAdam", "FedYogi", "FedAdagrad", "build_strategy",
]


def build_strategy(config) -> Strategy:
    """The strategy a config's ``strategy`` section names."""
    if config.name == "fedavg":
        return FedAvg()
    if config.name == "fedavgm":
        return FedAvgM(server_lr=config.server_lr, momentum=config.momentum)
    if config.name == "fedprox":
        return FedProx(mu=config.mu)
    if config.name in ("fedadam", "fedyogi"):
        cls = FedAdam if config.name == "fedadam" else FedYogi
        return cls(server_lr=config.server_lr, beta1=config.beta1, beta2=config.beta2, tau=config.tau)
    if config.name == "fedadagrad":
        return FedAdagrad(server_lr=config.server_lr, beta1=config.beta1, tau=config.tau)
    raise ValueError(f"unknown strategy {config.name!r}")
