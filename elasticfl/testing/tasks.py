"""Numpy tasks with known answers, and tasks that misbehave on purpose.

They implement elasticfl.tasks.Task without torch, so the tests can reason
about the exact numbers and so Ray workers start quickly.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..tasks import ClientData, TrainContext, TrainResult
from ..weights import Weights

__all__ = ["AddConstant", "NoisyMean"]


class AddConstant:
    """WORKLOADS.md W2: a large model; each client returns the weights + delta with weight 1."""

    def __init__(self, arrays: int = 4, size: int = 6_250_000, delta: float = 0.001) -> None:
        self.arrays, self.size, self.delta = arrays, size, np.float32(delta)

    def init_weights(self, seed: int, data_shape=None) -> Weights:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(self.size, dtype=np.float32) for _ in range(self.arrays)]

    def train(self, weights: Weights, data: ClientData, ctx: TrainContext) -> TrainResult:
        return TrainResult([w + self.delta for w in weights], 1)

    def evaluate(self, weights: Weights, data: ClientData) -> dict[str, float]:
        return {}


class NoisyMean:
    """A tiny vector model; each client nudges it by seeded noise, weighted by client id + 1.

    Clients listed in ``nan_clients`` / ``wrong_shape_clients`` / ``raise_clients``
    misbehave; ``crash_clients`` kill their executor's process (as an OOM kill would);
    ``sleep_s`` makes each client take a while, ``slow_clients`` another ``slow_s``
    (stragglers), for fault injection.
    """

    def __init__(
        self,
        dim: int = 8,
        nan_clients: list[int] | None = None,
        wrong_shape_clients: list[int] | None = None,
        raise_clients: list[int] | None = None,
        crash_clients: list[int] | None = None,
        sleep_s: float = 0.0,
        slow_clients: list[int] | None = None,
        slow_s: float = 0.0,
    ) -> None:
        self.dim = dim
        self.nan = set(nan_clients or [])
        self.wrong_shape = set(wrong_shape_clients or [])
        self.raises = set(raise_clients or [])
        self.crashes = set(crash_clients or [])
        self.sleep_s = sleep_s
        self.slow = set(slow_clients or [])
        self.slow_s = slow_s

    def init_weights(self, seed: int, data_shape=None) -> Weights:
        return [np.zeros(self.dim, np.float32), np.zeros((2, 2), np.float32)]

    def train(self, weights: Weights, data: ClientData, ctx: TrainContext) -> TrainResult:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        cid = ctx.client_id
        if cid in self.slow:
            time.sleep(self.slow_s)
        if cid in self.crashes:
            os._exit(1)  # the whole process goes, not just this call
        if cid in self.raises:
            raise RuntimeError(f"client {cid} crashed on purpose")
        new = [w + ctx.rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in weights]
        if cid in self.nan:
            new[0][0] = np.nan
        if cid in self.wrong_shape:
            new[1] = np.zeros((3, 3), np.float32)
        return TrainResult(new, cid + 1, {"train_loss": float(np.abs(new[0]).mean())})

    def evaluate(self, weights: Weights, data: ClientData) -> dict[str, float]:
        return {"norm": float(np.linalg.norm(weights[0]))}
