"""Split a data set's training rows among logical clients.

Pure numpy: every function takes a seed and returns the same split for the same
inputs, so a retried task or a resumed run sees the same client data.

Every partitioner returns a list of ``num_clients`` sorted int64 arrays of row
indices; together they hold every row exactly once (a client may get none).
"""

from __future__ import annotations

import numbers

import numpy as np

from elasticfl.errors import ConfigError

__all__ = ["iid", "dirichlet", "shards", "make_partition", "owner_array", "PARTITIONERS"]


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass; True clients is a bug, not a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_labels(labels: object) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            f"labels must be a 1-D integer array (one class id per training row), "
            f"got shape {labels.shape} and dtype {labels.dtype}"
        )
    return labels


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    # Sorted indices read the data in storage order and make digests stable.
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(num_rows: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle the rows and deal them out in near-equal runs (sizes differ by <= 1)."""
    num_rows = _check_int("num_rows", num_rows, 0)
    num_clients = _check_int("num_clients", num_clients, 1)
    seed = _check_int("seed", seed, 0)
    order = np.random.default_rng(seed).permutation(num_rows)
    return _finish(np.array_split(order, num_clients))


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label-Dirichlet split, exactly as defined in benchmarks/WORKLOADS.md.

    For each class (ascending) the class's rows are shuffled and cut by one
    Dirichlet(alpha) draw over the clients. The order in which ``rng`` is
    consumed is part of the definition: other frameworks reproduce it bit for
    bit, so do not reorder, resample or skip draws (empty clients stay empty).
    """
    labels = _check_labels(labels)
    num_clients = _check_int("num_clients", num_clients, 1)
    seed = _check_int("seed", seed, 0)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
        np.isfinite(alpha) and alpha > 0
    ):
        raise ConfigError(
            f"alpha must be a finite number > 0 (smaller means more label skew, "
            f"e.g. 0.5), got {alpha!r}"
        )
    rng = np.random.default_rng(seed)
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k in np.unique(labels):  # np.unique is ascending
        idx_k = np.flatnonzero(labels == k)  # ascending row indices
        rng.shuffle(idx_k)
        p = rng.dirichlet([float(alpha)] * num_clients)
        cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
        for c, chunk in enumerate(np.split(idx_k, cuts)):
            chunks[c].append(chunk)
    return _finish([np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks])


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, seed: int
) -> list[np.ndarray]:
    """McMahan et al. (2017) pathological non-IID split.

    Sort rows by label, cut them into ``num_clients * shards_per_client``
    contiguous shards of near-equal size, and give each client
    ``shards_per_client`` shards chosen at random. A client then sees only a
    few labels (at most the labels its shards span).
    """
    labels = _check_labels(labels)
    num_clients = _check_int("num_clients", num_clients, 1)
    shards_per_client = _check_int("shards_per_client", shards_per_client, 1)
    seed = _check_int("seed", seed, 0)
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ConfigError(
            f"shards: num_clients * shards_per_client = {num_shards} shards is more than "
            f"the {len(labels)} training rows; lower num_clients or shards_per_client"
        )
    # Stable sort: ties keep row order, so the shards do not depend on the sort algorithm.
    by_label = np.argsort(labels, kind="stable")
    pieces = np.array_split(by_label, num_shards)
    deal = np.random.default_rng(seed).permutation(num_shards).reshape(num_clients, -1)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in deal])


# name -> (function, {param: default or _REQUIRED}); the only params make_partition accepts.
_REQUIRED = object()
PARTITIONERS = {
    "iid": (iid, {}),
    "dirichlet": (dirichlet, {"alpha": _REQUIRED}),
    "shards": (shards, {"shards_per_client": 2}),  # 2 is McMahan et al.'s setting
}


def make_partition(
    name: str, labels: np.ndarray, num_clients: int, seed: int, **params: object
) -> list[np.ndarray]:
    """Build the partition called ``name`` ("iid" | "dirichlet" | "shards")."""
    if name not in PARTITIONERS:
        raise ConfigError(f"unknown partition {name!r}; choose one of {sorted(PARTITIONERS)}")
    fn, spec = PARTITIONERS[name]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        accepted = ", ".join(sorted(spec)) or "none"
        raise ConfigError(f"partition {name!r} does not take {unknown}; it accepts: {accepted}")
    kwargs = {}
    for key, default in spec.items():
        value = params.get(key, default)
        if value is _REQUIRED:
            raise ConfigError(f"partition {name!r} needs {key}=... (e.g. {key}=0.5)")
        kwargs[key] = value
    labels = _check_labels(labels)
    if name == "iid":  # iid only needs the row count
        return iid(len(labels), num_clients, seed)
    return fn(labels, num_clients, seed=seed, **kwargs)


def owner_array(parts: list[np.ndarray], num_rows: int) -> np.ndarray:
    """``owner[i]`` = the client holding row i; checks each row is held exactly once."""
    num_rows = _check_int("num_rows", num_rows, 0)
    owner = np.full(num_rows, -1, dtype=np.int64)
    for c, idx in enumerate(parts):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
            raise ConfigError(f"partition: client {c} holds a row outside 0..{num_rows - 1}")
        if np.any(owner[idx] != -1) or len(np.unique(idx)) != len(idx):
            raise ConfigError(f"partition: client {c} holds a row that is already assigned")
        owner[idx] = c
    if np.any(owner == -1):
        missing = np.flatnonzero(owner == -1)
        raise ConfigError(f"partition: {len(missing)} rows have no client (first: {missing[0]})")
    return owner
