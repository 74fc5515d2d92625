"""FedYogi (Reddi et al., 2021): v moves towards Δ² by an additive step, not a
multiplicative one, so it grows no faster than Adam's but shrinks more slowly."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt

__all__ = ["FedYogi"]


class FedYogi(FedOpt):
    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * delta_sq * np.sign(v - delta_sq)
