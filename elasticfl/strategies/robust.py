"""Byzantine-robust aggregation: pure numpy, deterministic, no I/O.

FedAvg's mean lets a single client move the global model anywhere it likes.
These rules bound what ``f`` Byzantine (arbitrarily wrong or malicious) clients
out of ``n`` can do, at the price of needing every update rather than a running
weighted sum.

- ``coordinate_median`` (Yin et al., 2018, "Byzantine-robust distributed
  learning: towards optimal statistical rates"): each coordinate is the median
  of the clients' values. Tolerates f < n/2: the median stays within the range
  of the honest values. Same as Flower's ``aggregate_median`` (FedMedian).
- ``trimmed_mean`` (Yin et al., 2018): per coordinate, drop the
  k = floor(beta*n) largest and k smallest values and average the rest.
  Tolerates f <= k, i.e. f <= beta*n. Same cut as Flower's ``_trim_mean``
  (FedTrimmedAvg), which is scipy's ``trim_mean``: k = int(beta*n) per side.
- ``krum`` (Blanchard et al., 2017, "Machine learning with adversaries:
  Byzantine tolerant gradient descent"): score each update by the sum of
  squared L2 distances to its n - f - 2 nearest other updates and keep the
  lowest score; an outlier is far from everyone, so it scores high. Needs
  n >= 2f + 3 for its guarantee. Multi-Krum (El Mhamdi et al., 2018) keeps the
  ``num_to_keep`` lowest scores and averages them. Same as Flower's
  ``aggregate_krum``, whose multi-Krum mean is weighted by num_examples, except
  that Flower quietly counts 1 neighbour when n - f - 2 < 1, where this raises:
  such an f is more than Krum can tolerate, and the caller should know.
- ``bound_norm`` (Sun et al., 2019, "Can you really backdoor federated
  learning?"): scale a client's change to the global model down to L2 norm
  ``max_norm``. Does not reject anyone; it caps how far one client can pull,
  which is what blunts boosted (scaled-up) backdoor updates, whatever f is. The
  paper's optional Gaussian noise ("weak DP") is not part of it. Same as Flower's
  ``compute_clip_model_update`` (the fixed clipping of its DP wrappers).

Median and trimmed mean are unweighted on purpose: weighting by num_examples
would let a Byzantine client claim a huge dataset and outvote the rest. Only
Krum's final mean is weighted, over updates that have already passed the
distance test (as Flower does).

All arithmetic is float64 and each result is cast back to the dtype of the
corresponding input array (the first client's).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["coordinate_median", "trimmed_mean", "krum", "bound_norm"]

# The alias of elasticfl.weights, restated so that this file imports nothing from the
# package: benchmarks/robust_vs_flower.py loads it alone, in Flower's venv.
Weights = list[np.ndarray]


def coordinate_median(updates: Sequence[Weights]) -> Weights:
    """The coordinate-wise median of the updates (unweighted). For an even count it is
    the mean of the two middle values, as ``np.median``."""
    _check(updates)
    return [_like(np.median(_stack(updates, i), axis=0), a) for i, a in enumerate(updates[0])]


def trimmed_mean(updates: Sequence[Weights], beta: float) -> Weights:
    """The coordinate-wise mean after dropping the ``floor(beta*n)`` largest and
    ``floor(beta*n)`` smallest values of each coordinate (unweighted).

    This is Flower's (and scipy's ``trim_mean``) cut: ``int(beta*n)`` from each end,
    so with n = 7 and beta = 0.2, int(1.4) = 1 value goes from each end.
    """
    n = _check(updates)
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean needs 0 <= beta < 0.5, got beta={beta}")
    k = int(beta * n)
    if 2 * k >= n:  # cannot happen for beta < 0.5 in exact arithmetic; a guard against rounding
        raise ValueError(f"trimmed_mean would drop 2*{k} of {n} values (beta={beta}): nothing left")
    return [_like(np.sort(_stack(updates, i), axis=0)[k:n - k].mean(axis=0), a) for i, a in enumerate(updates[0])]


def krum(
    updates: Sequence[Weights], weights: Sequence[float], num_malicious: int, num_to_keep: int = 1
) -> tuple[Weights, list[int]]:
    """(Multi-)Krum: the weighted mean of the ``num_to_keep`` updates with the lowest Krum
    scores, and their indices (ascending).

    ``num_to_keep`` 1 is plain Krum (the best update itself, exactly); 0 means the same,
    as Flower's ``to_keep=0``. Ties in score go to the lower index. ``weights`` (e.g.
    num_examples) weight only the final mean of the kept updates.
    """
    n = _check(updates)
    if len(weights) != n:
        raise ValueError(f"krum got {len(weights)} weights for {n} updates")
    if not 0 <= num_to_keep <= n:
        raise ValueError(f"krum needs 0 <= num_to_keep <= {n} (the number of updates), got {num_to_keep}")
    scores = _krum_scores(updates, num_malicious)
    # A stable sort makes ties deterministic: the lower index wins.
    kept = sorted(np.argsort(scores, kind="stable")[:max(num_to_keep, 1)].tolist())
    w = np.asarray([weights[i] for i in kept], dtype=np.float64)
    if not w.sum() > 0:
        raise ValueError(f"the updates krum kept ({kept}) have total weight {w.sum()}: nothing to average")
    # Normalise first: a single kept update then gets weight exactly 1.0 and comes back bit for bit.
    p = w / w.sum()
    kept_updates = [updates[i] for i in kept]
    mean = [_like(np.tensordot(p, _stack(kept_updates, i), axes=1), a) for i, a in enumerate(updates[0])]
    return mean, kept


def bound_norm(update: Weights, reference: Weights, max_norm: float) -> tuple[Weights, float]:
    """``reference + delta * min(1, max_norm / ||delta||)`` with ``delta = update - reference``
    and ||.|| the L2 norm over all arrays together; also ``||delta||`` before scaling.

    An update already within ``max_norm`` comes back unchanged (copied), not re-added.
    """
    if not max_norm > 0:
        raise ValueError(f"bound_norm needs max_norm > 0, got {max_norm}")
    if len(update) != len(reference):
        raise ValueError(f"bound_norm got {len(update)} arrays for a reference of {len(reference)}")
    delta = [np.subtract(u, r, dtype=np.float64) for u, r in zip(update, reference)]
    norm = float(np.sqrt(sum(np.dot(d.ravel(), d.ravel()) for d in delta)))
    if norm <= max_norm:
        return [np.array(u, copy=True) for u in update], norm
    scale = max_norm / norm
    return [_like(r + d * scale, u) for u, r, d in zip(update, reference, delta)], norm


def _krum_scores(updates: Sequence[Weights], num_malicious: int) -> np.ndarray:
    """Each update's sum of squared distances to its n - f - 2 nearest other updates."""
    n = len(updates)
    num_closest = n - num_malicious - 2
    if num_malicious < 0 or num_closest < 1:
        raise ValueError(
            f"krum needs n - f - 2 >= 1 neighbours and f >= 0: n={n}, f={num_malicious} "
            f"gives n - f - 2 = {num_closest}"
        )
    flat = np.empty((n, sum(np.size(a) for a in updates[0])), dtype=np.float64)
    for row, u in zip(flat, updates):
        np.concatenate([np.ravel(a) for a in u], out=row)
    # Distances do not change under translation: measuring from update 0 keeps the values at the
    # scale of the differences, so |x|^2 + |y|^2 - 2<x,y> does not cancel away their digits.
    flat -= flat[0].copy()
    gram = flat @ flat.T
    sq = np.diag(gram)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)  # rounding can dip below 0
    # Exactly symmetric whatever the BLAS does: two mutual nearest neighbours (with one
    # neighbour counted) then tie exactly, and the tie goes to the lower index.
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, np.inf)  # an update is not its own neighbour
    return np.sort(dist, axis=1)[:, :num_closest].sum(axis=1)


def _stack(updates: Sequence[Weights], i: int) -> np.ndarray:
    """Array ``i`` of every update, stacked along a new axis 0, in float64."""
    return np.stack([u[i] for u in updates], dtype=np.float64)


def _like(x, a: np.ndarray) -> np.ndarray:
    """``x`` as an array of ``a``'s dtype (numpy reduces 0-d arrays to scalars: undo that)."""
    return np.asarray(x, dtype=a.dtype)


def _check(updates: Sequence[Weights]) -> int:
    if not updates:
        raise ValueError("no updates to aggregate")
    shapes = [np.shape(a) for a in updates[0]]
    for j, u in enumerate(updates):
        if [np.shape(a) for a in u] != shapes:
            raise ValueError(f"update {j} has shapes {[np.shape(a) for a in u]}, update 0 has {shapes}")
    return len(updates)
