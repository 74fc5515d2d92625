"""elasticfl.partition: coverage, determinism, the WORKLOADS.md digests, skew, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from elasticfl.datasets import load_digits
from elasticfl.errors import ConfigError
from elasticfl.partition import dirichlet, iid, make_partition, owner_array, shards

CASES = [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("shards", {"shards_per_client": 2})]


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_digits().y_train


def _check_partition(parts: list[np.ndarray], num_rows: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no duplicates within a client
    # Every row exactly once across clients.
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(num_rows))


def _mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    entropies = []
    for p in parts:
        if len(p) == 0:
            continue
        freq = np.bincount(labels[p]) / len(p)
        freq = freq[freq > 0]
        entropies.append(float(-(freq * np.log(freq)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("num_clients", [1, 7, 100])
def test_every_row_assigned_once(digits_labels, name, params, num_clients):
    parts = make_partition(name, digits_labels, num_clients, seed=3, **params)
    _check_partition(parts, len(digits_labels), num_clients)
    owner = owner_array(parts, len(digits_labels))
    for c, p in enumerate(parts):
        assert np.all(owner[p] == c)


@pytest.mark.parametrize("name,params", [c for c in CASES if c[0] != "shards"])
def test_more_clients_than_rows_leaves_some_empty(name, params):
    labels = np.array([0, 1, 1, 2, 0], dtype=np.int64)
    parts = make_partition(name, labels, 12, seed=0, **params)
    _check_partition(parts, 5, 12)
    assert sum(len(p) == 0 for p in parts) >= 7


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in iid(1437, 100, seed=0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1437


@pytest.mark.parametrize("name,params", CASES)
def test_deterministic_in_seed(digits_labels, name, params):
    a = make_partition(name, digits_labels, 20, seed=5, **params)
    b = make_partition(name, digits_labels, 20, seed=5, **params)
    c = make_partition(name, digits_labels, 20, seed=6, **params)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "num_clients,prefix,empty", [(100, "f7e48fc3", None), (1000, "7a4d4dff", 232)]
)
def test_dirichlet_matches_workloads_digest(digits_labels, num_clients, prefix, empty):
    # benchmarks/WORKLOADS.md: digits train split, alpha 0.5, seed 0.
    parts = dirichlet(digits_labels, num_clients, alpha=0.5, seed=0)
    owner = owner_array(parts, len(digits_labels))
    assert hashlib.sha256(owner.astype("<i8").tobytes()).hexdigest().startswith(prefix)
    if empty is not None:
        assert sum(len(p) == 0 for p in parts) == empty


def test_make_partition_matches_direct_call(digits_labels):
    direct = dirichlet(digits_labels, 100, 0.5, 0)
    via = make_partition("dirichlet", digits_labels, 100, 0, alpha=0.5)
    assert all(np.array_equal(x, y) for x, y in zip(direct, via))


def test_dirichlet_small_alpha_skews_labels(digits_labels):
    flat = _mean_label_entropy(iid(len(digits_labels), 10, seed=0), digits_labels)
    mild = _mean_label_entropy(dirichlet(digits_labels, 10, alpha=100.0, seed=0), digits_labels)
    skew = _mean_label_entropy(dirichlet(digits_labels, 10, alpha=0.1, seed=0), digits_labels)
    assert flat > 0.95 * np.log(10)  # iid clients see nearly uniform labels
    assert mild > 0.9 * flat  # large alpha tends to iid
    assert skew < 0.6 * flat


def test_shards_limit_labels_per_client(digits_labels):
    # Each shard (~72 rows) is smaller than any class (>= 140 rows), so spans <= 2 labels.
    parts = shards(digits_labels, 10, shards_per_client=2, seed=0)
    assert all(len(np.unique(digits_labels[p])) <= 2 * 2 for p in parts)
    assert _mean_label_entropy(parts, digits_labels) < 0.5 * np.log(10)


def test_shards_aligned_with_classes_give_exact_labels():
    # 10 classes x 100 rows, 10 shards of 100: each shard is one class, each client two.
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]
    parts = shards(labels, 5, shards_per_client=2, seed=1)
    _check_partition(parts, 1000, 5)
    assert all(len(p) == 200 and len(np.unique(labels[p])) == 2 for p in parts)
    seen = np.concatenate([np.unique(labels[p]) for p in parts])
    assert np.array_equal(np.sort(seen), np.arange(10))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda y: make_partition("zipf", y, 10, 0), "unknown partition 'zipf'.*dirichlet"),
        (lambda y: make_partition("dirichlet", y, 10, 0), "needs alpha"),
        (lambda y: make_partition("iid", y, 10, 0, alpha=1.0), "does not take.*alpha"),
        (lambda y: make_partition("shards", y, 10, 0, alpha=1.0), "accepts: shards_per_client"),
        (lambda y: dirichlet(y, 10, alpha=0.0, seed=0), "alpha must be"),
        (lambda y: dirichlet(y, 10, alpha=-1.0, seed=0), "alpha must be"),
        (lambda y: dirichlet(y, 10, alpha=float("nan"), seed=0), "alpha must be"),
        (lambda y: dirichlet(y, 0, alpha=0.5, seed=0), "num_clients must be >= 1"),
        (lambda y: iid(len(y), 2.5, seed=0), "num_clients must be an integer"),
        (lambda y: iid(len(y), True, seed=0), "num_clients must be an integer"),
        (lambda y: iid(len(y), 3, seed=-1), "seed must be >= 0"),
        (lambda y: shards(y, 10, shards_per_client=0, seed=0), "shards_per_client must be >= 1"),
        (lambda y: shards(y, 1000, shards_per_client=2, seed=0), "2000 shards is more than"),
        (lambda y: dirichlet(y.astype(float), 10, 0.5, 0), "integer array"),
        (lambda y: dirichlet(y.reshape(-1, 1), 10, 0.5, 0), "1-D"),
    ],
)
def test_bad_params_raise_config_error(digits_labels, call, match):
    with pytest.raises(ConfigError, match=match):
        call(digits_labels)


def test_owner_array_rejects_bad_partitions():
    with pytest.raises(ConfigError, match="already assigned"):
        owner_array([np.array([0, 1]), np.array([1, 2])], 3)
    with pytest.raises(ConfigError, match="no client"):
        owner_array([np.array([0]), np.array([2])], 3)
    with pytest.raises(ConfigError, match="outside"):
        owner_array([np.array([0, 1, 2, 3])], 3)
