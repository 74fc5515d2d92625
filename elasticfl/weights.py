"""Model weights as an ordered list of numpy arrays, and the checks made on them.

Weights travel as numpy (torch tensors are converted at the edges), in model
order: the order of the model's ``state_dict``.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

__all__ = ["Weights", "weights_sha256", "weights_nbytes", "check_update"]

Weights = list[np.ndarray]


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """sha256 over the arrays' raw bytes in model order (the run's identity of its result)."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def weights_nbytes(weights: Sequence[np.ndarray]) -> int:
    return int(sum(a.nbytes for a in weights))


def check_update(update: object, reference: Sequence[np.ndarray]) -> str | None:
    """Why a client's update cannot be averaged in, or None when it can.

    A client that returns garbage is rejected, never averaged: wrong type, wrong
    number of arrays, wrong shape or dtype, or any NaN/inf.
    """
    if not isinstance(update, (list, tuple)):
        return f"update must be a list of numpy arrays, got {type(update).__name__}"
    if len(update) != len(reference):
        return f"update has {len(update)} arrays, the model has {len(reference)}"
    for i, (got, want) in enumerate(zip(update, reference)):
        if not isinstance(got, np.ndarray):
            return f"array {i} is a {type(got).__name__}, not a numpy array"
        if got.shape != want.shape:
            return f"array {i} has shape {got.shape}, expected {want.shape}"
        if got.dtype != want.dtype:
            return f"array {i} has dtype {got.dtype}, expected {want.dtype}"
        if got.dtype.kind in "fc" and not np.isfinite(got).all():
            return f"array {i} contains NaN or infinite values"
    return None
