"""FedNova (Wang et al., 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization"): normalised averaging for uneven local work.

A client that takes more local steps moves further, so FedAvg's plain mean leans
towards the objectives of the clients that worked most (a fast GPU node, a client
with more data at fixed epochs, a straggler that stopped early pulls the other way).
FedNova divides each client's change by its own amount of work ‖a_i‖₁ and rescales
the mean by the cohort's effective work τ_eff:

    d_i = (x − y_i) / ‖a_i‖₁,    x⁺ = x − τ_eff · Σ p_i d_i,    τ_eff = Σ p_i ‖a_i‖₁

with p_i the clients' example shares. For SGD with momentum ρ over τ steps,
‖a_i‖₁ = (τ − ρ(1 − ρ^τ)/(1 − ρ)) / (1 − ρ); plain SGD gives τ. With equal work
everywhere it is exactly FedAvg.

The client half runs on the executor: it sends x + (y_i − x)/‖a_i‖₁, weighted as
usual, and adds p_i‖a_i‖₁ (unnormalised: n_i·‖a_i‖₁) to a side sum, so work units
still pre-aggregate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TaskError
from ..weights import Weights
from ._base import ClientUpdate, WeightedSum

__all__ = ["FedNova", "local_work"]

_WORK = "fednova_work"  # Σ n_i·‖a_i‖₁


def local_work(steps: int, momentum: float = 0.0) -> float:
    """‖a_i‖₁ for ``steps`` SGD steps with heavy-ball ``momentum`` (Wang et al., eq. 9's a_i)."""
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class FedNova:
    name = "fednova"

    def __init__(self, momentum: float = 0.0) -> None:
        self.momentum = momentum  # the clients' local SGD momentum (task.momentum)

    def prepare(self, update: ClientUpdate, global_weights: Weights, shared: dict[str, Any]) -> None:
        if update.local_steps is None:
            raise TaskError(
                "strategy 'fednova' needs the task to report how many optimizer steps it took "
                "(metrics['local_steps']); the built-in classification task does"
            )
        if update.local_steps <= 0 or update.weight <= 0:
            return  # no work, no change: contributes nothing either way
        work = local_work(update.local_steps, self.momentum)
        update.weights = [
            (g + (np.asarray(w, np.float64) - g) / work).astype(w.dtype) for w, g in zip(update.weights, global_weights)
        ]
        update.side[_WORK] = update.weight * work

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights:
        if summed.total_weight <= 0:
            return list(global_weights)
        tau_eff = summed.side.get(_WORK, 0.0) / summed.total_weight
        mean = summed.mean()
        return [
            (g + tau_eff * (m.astype(np.float64) - g)).astype(g.dtype) for g, m in zip(global_weights, mean)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
