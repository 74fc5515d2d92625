"""The server optimisers of Reddi et al., 2021, "Adaptive Federated Optimization" (Algorithm 2).

The cohort's weighted mean minus the global weights is a pseudo-gradient Δ; the
server keeps a first moment m and a second moment v and steps

    m = β1·m + (1−β1)·Δ,   v = second_moment(v, Δ²),   x = x + η·m / (√v + τ)

FedAdam, FedYogi and FedAdagrad differ only in ``second_moment``. m and v are
float64 server state, saved in every checkpoint, so a resumed run continues
bit for bit. Following the paper, v starts at τ² (its v₋₁ ≥ τ²) and the step has
no bias correction; Flower starts v at 0 and bias-corrects FedAdam's step (see
benchmarks/strategies.py --against-flower, which checks the rest against Flower).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..weights import Weights
from ._base import WeightedSum

__all__ = ["FedOpt"]


class FedOpt:
    name = "fedopt"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights:
        if summed.total_weight <= 0:
            return list(global_weights)  # no client had data: no pseudo-gradient, state untouched
        mean = summed.mean()
        x = [g.astype(np.float64) for g in global_weights]
        delta = [m - g for m, g in zip(mean, x)]
        if self._m is None:
            self._m = [np.zeros_like(d) for d in delta]
            self._v = [np.full_like(d, self.tau**2) for d in delta]
        b1 = self.beta1
        self._m = [b1 * m + (1 - b1) * d for m, d in zip(self._m, delta)]
        self._v = [self.second_moment(v, d * d) for v, d in zip(self._v, delta)]
        return [
            (xi + self.server_lr * m / (np.sqrt(v) + self.tau)).astype(g.dtype)
            for xi, m, v, g in zip(x, self._m, self._v, global_weights)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {} if self._m is None else {"m": list(self._m), "v": list(self._v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m, v = state.get("m"), state.get("v")
        self._m = None if m is None else [np.asarray(a, dtype=np.float64) for a in m]
        self._v = None if v is None else [np.asarray(a, dtype=np.float64) for a in v]
