"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging for
Federated Learning"): control variates correct the client drift of non-IID data.

The server keeps a control variate c, each client its own c_i (zero until it first
trains). Local steps use the corrected gradient g(y) − c_i + c, and afterwards
(the paper's option II)

    c_i⁺ = c_i − c + (x − y_i) / (K·η_l)

with K local steps at learning rate η_l. The server then steps

    x⁺ = x + η_g · mean(y_i − x),      c⁺ = c + (1/N) Σ_{i∈S} (c_i⁺ − c_i)

over the N clients of the federation. c is strategy state and each c_i is client
state; both are saved in every checkpoint, so a resumed run goes on bit for bit.
The mean is example-weighted, as elsewhere here (the paper's is uniform, which is
the same under equal client sizes). Assumes plain local SGD, as the paper does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import TaskError
from ..weights import Weights
from ._base import ClientUpdate, WeightedSum

__all__ = ["Scaffold"]

CONTROL = "control"
_DELTA = "scaffold_control_delta"  # Σ (c_i⁺ − c_i) over the round's clients


class Scaffold:
    name = "scaffold"

    def __init__(self, num_clients: int, local_lr: float | None, server_lr: float = 1.0) -> None:
        self.num_clients = num_clients
        self.local_lr = local_lr
        self.server_lr = server_lr
        self._c: list[np.ndarray] | None = None  # float64, model order

    # -- the client half (executor) --------------------------------------------------
    def shared(self, global_weights: Weights) -> dict[str, Any]:
        if self._c is None:
            self._c = [np.zeros(g.shape, np.float64) for g in global_weights]
        return {CONTROL: self._c}

    @staticmethod
    def correction(state: dict[str, Weights], shared: dict[str, Any]) -> Weights:
        """c − c_i: added to every local gradient."""
        c = shared[CONTROL]
        ci = state.get(CONTROL)
        return [a.astype(np.float32) for a in c] if ci is None else [(a - b).astype(np.float32) for a, b in zip(c, ci)]

    def prepare(self, update: ClientUpdate, global_weights: Weights, shared: dict[str, Any]) -> None:
        if not update.local_steps or update.weight <= 0:
            return  # did no step: c_i stays, nothing to add
        if self.local_lr is None:
            raise TaskError("strategy 'scaffold' needs strategy.local_lr: the learning rate of the task's local SGD")
        c = shared[CONTROL]
        ci = update.state.get(CONTROL) or [np.zeros(a.shape, np.float64) for a in c]
        scale = 1.0 / (update.local_steps * self.local_lr)
        new = [
            old - cc + (g.astype(np.float64) - y) * scale
            for old, cc, g, y in zip(ci, c, global_weights, update.weights)
        ]
        update.state[CONTROL] = new
        update.side[_DELTA] = [n - o for n, o in zip(new, ci)]

    # -- the server half (controller) ------------------------------------------------
    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights:
        delta_c = summed.side.get(_DELTA)
        if delta_c is not None:
            self._c = [c + d / self.num_clients for c, d in zip(self.shared(global_weights)[CONTROL], delta_c)]
        if summed.total_weight <= 0:
            return list(global_weights)
        mean = summed.mean()
        return [
            (g + self.server_lr * (m.astype(np.float64) - g)).astype(g.dtype) for g, m in zip(global_weights, mean)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {} if self._c is None else {CONTROL: list(self._c)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = state.get(CONTROL)
        self._c = None if c is None else [np.asarray(a, dtype=np.float64) for a in c]
