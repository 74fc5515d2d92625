"""FedProx (Li et al., 2020): FedAvg's aggregation; the proximal term lives on the client.

Each client minimises its loss plus (μ/2)·‖w − w_global‖², which keeps its update
near the global weights under non-IID data. The built-in classification task
adds that term's gradient in its local SGD loop (elasticfl/tasks/classification.py);
the server side is the plain example-weighted mean.
"""

from __future__ import annotations

from .fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        self.mu = mu  # read by the client side; kept here so the strategy says what it is
