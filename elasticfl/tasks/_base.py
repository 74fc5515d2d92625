"""The Task protocol: what a client trains and how the global model is evaluated.

A task works on numpy weights, whatever framework it trains with; the built-in
torch classifier is one implementation, user code by import path is another.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import TaskError
from ..weights import Weights

__all__ = ["Task", "Predictor", "ClientData", "TrainContext", "TrainResult", "load_object"]


@dataclass(frozen=True)
class ClientData:
    """One logical client's rows (or the central test set)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TrainContext:
    """Where a training call stands; ``rng`` is derived from (run seed, round, client id)."""

    round: int
    client_id: int
    run_seed: int
    rng: np.random.Generator = field(repr=False, compare=False)
    # The share of its usual local steps to do, or None for all of them (a straggler,
    # see simulation.stragglers). Tasks report the steps they took as metrics["local_steps"].
    work: float | None = None
    # SCAFFOLD's c − c_i in model order, to add to every local gradient; None otherwise.
    correction: list[np.ndarray] | None = field(default=None, repr=False, compare=False)


@dataclass
class TrainResult:
    weights: Weights
    num_examples: int  # the client's weight in the average
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    def init_weights(self, seed: int, data_shape: tuple[int, int] | None) -> Weights:
        """Initial global weights. ``data_shape`` is (input features, classes) when a dataset is loaded."""

    def train(self, weights: Weights, data: ClientData, ctx: TrainContext) -> TrainResult: ...

    def evaluate(self, weights: Weights, data: ClientData) -> dict[str, float]: ...


@runtime_checkable
class Predictor(Protocol):
    """Optional, next to the Task methods: answer predictions with given weights.

    ``elasticfl serve`` uses it for ``POST /predict``. A task may also define
    ``input_shape(weights) -> tuple[int, ...] | None``, the shape of one input row
    (``(64,)`` for digits), so that requests of the wrong shape are refused with a
    clear message before the model sees them; None (or no such method) means unknown.
    """

    def predict(self, weights: Weights, x: np.ndarray) -> np.ndarray:
        """``x``: a float32 batch, shape (n, *row shape); returns an array with n rows."""


def load_object(path: str, what: str) -> Any:
    """Import ``package.module:attr`` (user code shipped through Ray's runtime_env)."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(
            f"cannot import {module_name!r} for {what} ({exc}); make it importable on every node, "
            "e.g. with cluster.runtime_env: {working_dir: ., py_modules: [...]}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskError(f"{module_name!r} has no attribute {attr!r} (asked for by {what})") from None
    return obj
