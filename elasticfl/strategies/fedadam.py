"""FedAdam (Reddi et al., 2021): v is an exponential moving average of Δ²."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt

__all__ = ["FedAdam"]


class FedAdam(FedOpt):
    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * delta_sq
