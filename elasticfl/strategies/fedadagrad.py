"""FedAdagrad (Reddi et al., 2021): v sums every round's Δ², so steps only shrink."""

from __future__ import annotations

import numpy as np

from .fedopt import FedOpt

__all__ = ["FedAdagrad"]


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def __init__(self, server_lr: float = 0.1, beta1: float = 0.9, tau: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=0.0, tau=tau)  # no β2: v never decays

    def second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq
