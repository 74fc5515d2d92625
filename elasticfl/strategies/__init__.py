"""Aggregation strategies: pure numpy, one small module each."""

from __future__ import annotations

from ._base import AUTO_FLOAT64_MAX_PARAMS, ClientUpdate, Strategy, WeightedSum, accumulator_dtype, resolve_precision
from .fedavg import FedAvg
from .fedadagrad import FedAdagrad
from .fedadam import FedAdam
from .fedavgm import FedAvgM
from .fednova import FedNova
from .fedopt import FedOpt
from .fedprox import FedProx
from .fedyogi import FedYogi
from .scaffold import Scaffold

__all__ = [
    "Strategy", "WeightedSum", "ClientUpdate", "accumulator_dtype", "resolve_precision", "AUTO_FLOAT64_MAX_PARAMS",
    "FedAvg", "FedAvgM", "FedProx", "FedOpt", "FedAdam", "FedYogi", "FedAdagrad", "FedNova", "Scaffold",
    "build_strategy",
]


def build_strategy(config, task=None, num_clients: int = 0) -> Strategy:
    """The strategy a config's ``strategy`` section names.

    ``task`` (the run's task section) gives client-side hyperparameters some strategies
    need (FedNova: the local momentum; SCAFFOLD: the local learning rate); SCAFFOLD also
    needs ``num_clients``, the federation's size.
    """
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
    if config.name == "fednova":
        return FedNova(momentum=getattr(task, "momentum", 0.0))
    if config.name == "scaffold":
        local_lr = config.local_lr if config.local_lr is not None else getattr(task, "lr", None)
        return Scaffold(num_clients=num_clients, local_lr=local_lr, server_lr=config.server_lr)
    raise ValueError(f"unknown strategy {config.name!r}")
