"""elasticfl's robust aggregation against Flower 1.42's, on the same client updates.

    benchmarks/.venv-flower/bin/python benchmarks/robust_vs_flower.py

Random float64 updates (seeded; arrays of shape (5, 4), (4,), (2, 3, 2) and ()), 7 to 10
clients of which the last two are outliers, go through both sides:

    median        aggregate_median                          vs coordinate_median
    trimmed mean  aggregate_trimmed_avg(beta)               vs trimmed_mean
    krum          aggregate_krum(f, to_keep)                vs krum
    norm bound    supercore.differential_privacy.
                  compute_clip_model_update (DP fixed clip) vs bound_norm

It prints the largest absolute difference per method and exits 1 if any exceeds 1e-12.
Differences by design, and what is compared instead:

- Krum scores: Flower measures |x - y|^2 directly, ours from one Gram matrix, so they
  differ by rounding; compared relatively. Flower clamps n - f - 2 neighbours up to 1
  where ours raises, so only f <= n - 3 is run.
- Krum ties: with f = n - 3 a score is the distance to the nearest neighbour, so mutual
  nearest neighbours tie exactly. Ours keeps the lower index, as Flower's plain Krum
  (np.argmin) does; Flower's multi-Krum takes np.argsort's order, which is not stable
  (numpy's SIMD quicksort), so it may keep the other one. There the check is that our
  kept set is one of Flower's minimisers (same multiset of Flower's scores) and that our
  mean is Flower's ``aggregate`` (its num_examples-weighted mean) of our kept set.
- Norm bound: Flower leaves 0-d arrays unclipped (np.subtract of two 0-d arrays is a
  numpy scalar, and its ``array *= factor`` rebinds a local instead of scaling), so the
  () array is checked to be Flower's unscaled update and the others are compared.

Flower pins another Ray, so it has a venv of its own (benchmarks/setup_flower.sh).
elasticfl/strategies/robust.py imports only numpy; it is loaded by path so that
elasticfl's package __init__ (pydantic, Ray, torch) never runs here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
from flwr.server.strategy.aggregate import (
    _compute_distances,
    aggregate,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from flwr.supercore.differential_privacy import compute_clip_model_update

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-12
SHAPES = [(5, 4), (4,), (2, 3, 2), ()]


def load_robust():
    spec = importlib.util.spec_from_file_location("robust", ROOT / "elasticfl" / "strategies" / "robust.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clients(seed: int, n: int, dtype=np.float64) -> list[tuple[list[np.ndarray], int]]:
    rng = np.random.default_rng(seed)
    base = [rng.standard_normal(s) for s in SHAPES]
    out = []
    for j in range(n):
        spread = 0.1 if j < n - 2 else 5.0  # the last two are outliers
        w = [(b + spread * rng.standard_normal(b.shape) + (3.0 if j == n - 1 else 0.0)).astype(dtype) for b in base]
        out.append((w, int(rng.integers(1, 50))))
    return out


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [np.shape(y) for y in b], "shapes differ"
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in zip(a, b))


def flower_krum_kept(weights: list, f: int, to_keep: int) -> tuple[list[int], np.ndarray]:
    """The indices Flower's aggregate_krum keeps and its scores (its own code, minus the mean)."""
    dist = _compute_distances(weights)
    k = max(1, len(weights) - f - 2)
    scores = np.array([np.sum(row[np.argsort(row)[1:k + 1]]) for row in dist])
    if to_keep > 0:
        return sorted(np.argsort(scores)[::-1][len(scores) - to_keep:].tolist()), scores
    return [int(np.argmin(scores))], scores


def main() -> int:
    robust = load_robust()
    rows = []  # (method, cases, max abs diff, note)

    def record(method, diffs, note=""):
        rows.append((method, len(diffs), max(diffs), note))

    med, med32, trim, krum_mean, krum_score, clip, clip0 = [], [], [], [], [], [], []
    krum_ties = krum_not_minimal = 0
    for seed in range(5):
        for n in (7, 8, 9, 10):
            res = clients(seed, n)
            ups, nums = [w for w, _ in res], [m for _, m in res]
            med.append(max_diff(aggregate_median(res), robust.coordinate_median(ups)))
            res32 = clients(seed, n, np.float32)
            med32.append(max_diff(aggregate_median(res32), robust.coordinate_median([w for w, _ in res32])))
            for beta in (0.0, 0.1, 0.2, 0.25, 0.3, 0.45):
                trim.append(max_diff(aggregate_trimmed_avg(res, beta), robust.trimmed_mean(ups, beta)))
            for f in sorted({0, 1, 2, n - 3}):
                for to_keep in sorted({0, 1, 3, n - f}):
                    ours, kept = robust.krum(ups, nums, f, to_keep)
                    fl_kept, fl_scores = flower_krum_kept(ups, f, to_keep)
                    if kept == fl_kept:
                        krum_mean.append(max_diff(aggregate_krum(res, f, to_keep), ours))
                    else:  # a tie broken the other way: is ours one of Flower's choices?
                        krum_ties += 1
                        krum_not_minimal += sorted(fl_scores[kept]) != sorted(fl_scores[fl_kept])
                        krum_mean.append(max_diff(aggregate([res[i] for i in kept]), ours))
                scores = robust._krum_scores(ups, f)
                krum_score.append(float(np.max(np.abs(scores - fl_scores) / fl_scores)))
            ref = [w.copy() for w in res[0][0]]
            for up in ups[1:]:  # update 0 is the reference, and Flower divides by its zero norm
                for max_norm in (0.5, 2.0, 1e3):  # clipped, clipped, untouched
                    fl = [a.copy() for a in up]
                    compute_clip_model_update(fl, ref, max_norm)
                    ours = robust.bound_norm(up, ref, max_norm)[0]
                    clip.append(max_diff(fl[:-1], ours[:-1]))
                    clip0.append(max_diff(fl[-1:], up[-1:]))  # the () array: Flower's, unclipped

    record("median (float64)", med)
    record("median (float32)", med32, "both round (a+b)/2 once")
    record("trimmed mean", trim, "beta 0 .. 0.45; k = int(beta*n)")
    record("krum / multi-krum mean", krum_mean, f"{krum_ties} ties kept the other index")
    record("krum scores (relative)", krum_score, "Gram matrix vs direct |x-y|^2")
    record("norm bound", clip, "vs compute_clip_model_update, arrays with ndim > 0")
    record("norm bound, () array", clip0, "Flower's vs the unclipped update")

    print(f"{'method':<24} {'cases':>6} {'max abs diff':>13}  note")
    for method, cases, diff, note in rows:
        print(f"{method:<24} {cases:>6} {diff:>13.3e}  {note}")
    bad = [m for m, _, d, _ in rows if not d <= TOL]
    if krum_not_minimal:
        bad.append(f"krum kept a non-minimal set {krum_not_minimal} times")
    print("agrees with Flower" if not bad else f"DISAGREES with Flower: {', '.join(bad)} (tolerance {TOL})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
