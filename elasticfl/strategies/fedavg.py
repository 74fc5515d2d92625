"""FedAvg (McMahan et al., 2017): the example-weighted mean of the cohort's weights."""

from __future__ import annotations

from typing import Any

from ..weights import Weights
from ._base import WeightedSum

__all__ = ["FedAvg"]


class FedAvg:
    name = "fedavg"

    def aggregate(self, global_weights: Weights, summed: WeightedSum) -> Weights:
        if summed.total_weight <= 0:
            return list(global_weights)  # every client had no data: nothing to learn from
        return summed.mean()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
