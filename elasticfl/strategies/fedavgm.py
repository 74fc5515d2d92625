"""FedAvgM (Hsu et al., 2019): FedAvg's mean as a pseudo-gradient, with server momentum.

Composed from the weighted mean rather than re-implementing it; the momentum
buffer is server state, so it goes into every checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..weights import Weights
from ._base import WeightedSum

__all__ = ["FedAvgM"]


class FedAvgM:
    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        self.server_lr = server_lr
        self.momentum = momentum
        self._velocity: list[np.ndarray] | None = None

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights:
        if summed.total_weight <= 0:
            return list(global_weights)
        mean = summed.mean()
        # pseudo-gradient: how far the cohort moved away from the global weights
        delta = [g.astype(np.float64) - m for g, m in zip(global_weights, mean)]
        if self._velocity is None:
            self._velocity = delta
        else:
            self._velocity = [self.momentum * v + d for v, d in zip(self._velocity, delta)]
        return [(g - self.server_lr * v).astype(g.dtype) for g, v in zip(global_weights, self._velocity)]

    def state_dict(self) -> dict[str, Any]:
        return {} if self._velocity is None else {"velocity": list(self._velocity)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        velocity = state.get("velocity")
        self._velocity = None if velocity is None else [np.asarray(v, dtype=np.float64) for v in velocity]
