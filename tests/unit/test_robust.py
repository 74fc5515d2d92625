import numpy as np
import pytest

from elasticfl.strategies.robust import _krum_scores, bound_norm, coordinate_median, krum, trimmed_mean
from tests.conftest import run_in_flower_venv


def _clients(*rows):
    """One client per row: (values of a (2,) array, value of a (1,) array)."""
    return [[np.array(a, dtype=np.float64), np.array([b], dtype=np.float64)] for a, b in rows]


# Five clients of two arrays; the last is an outlier in the first array.
FIVE = _clients(([1, 10], 5), ([2, 20], 1), ([3, 30], 4), ([4, 40], 2), ([100, -100], 3))


def _assert_weights(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


# -- coordinate median ---------------------------------------------------------------------------

def test_median_of_an_odd_count_is_the_middle_value_per_coordinate():
    # columns sorted: 1 2 3 4 100 | -100 10 20 30 40 | 1 2 3 4 5
    _assert_weights(coordinate_median(FIVE), [[3, 20], [3]])


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values():
    # columns sorted: 1 2 3 4 | 10 20 30 40 | 1 2 4 5
    _assert_weights(coordinate_median(FIVE[:4]), [[2.5, 25], [3]])


# -- trimmed mean --------------------------------------------------------------------------------

def test_trimmed_mean_drops_floor_beta_n_from_each_end():
    # n = 5, beta = 0.2: one from each end. Columns keep 2 3 4 | 10 20 30 | 2 3 4
    _assert_weights(trimmed_mean(FIVE, 0.2), [[3, 20], [3]])
    # beta = 0.39: int(1.95) = 1, still one from each end
    _assert_weights(trimmed_mean(FIVE, 0.39), [[3, 20], [3]])


def test_trimmed_mean_with_nothing_to_trim_is_the_plain_mean():
    # beta = 0.1: int(0.5) = 0
    _assert_weights(trimmed_mean(FIVE, 0.1), [[110 / 5, 0], [3]])
    _assert_weights(trimmed_mean(FIVE, 0.0), [[110 / 5, 0], [3]])


def test_trim_count_rounds_down_not_to_nearest():
    values = [0, 0, 0, 3, 4, 5, 6, 100, 1000]  # n = 9, beta = 0.3: int(2.7) = 2, not 3
    updates = [[np.array([v], dtype=np.float64)] for v in values]
    _assert_weights(trimmed_mean(updates, 0.3), [[(0 + 3 + 4 + 5 + 6) / 5]])  # 3 would give 4.0
    # n = 10, beta = 0.25: int(2.5) = 2 from each end of 0..8 and 1000
    updates = [[np.array([v], dtype=np.float64)] for v in [*range(9), 1000]]
    _assert_weights(trimmed_mean(updates, 0.25), [[np.mean(range(2, 8))]])


@pytest.mark.parametrize("beta", [0.5, 0.7, -0.1, float("nan")])
def test_trimmed_mean_rejects_a_beta_outside_zero_to_a_half(beta):
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(FIVE, beta)


# -- Krum ----------------------------------------------------------------------------------------

# Points on a line, f = 1, so n - f - 2 = 2 neighbours each. Squared distances to the two
# nearest: 0 -> 1 + 9, 1 -> 1 + 4, 3 -> 4 + 9, 6 -> 9 + 25, 50 -> 44^2 + 47^2.
LINE = [[np.array([v], dtype=np.float64)] for v in (0.0, 1.0, 3.0, 6.0, 50.0)]


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest_squared_distances():
    np.testing.assert_array_equal(_krum_scores(LINE, 1), [10, 5, 13, 34, 44**2 + 47**2])
    np.testing.assert_array_equal(_krum_scores(LINE, 2), [1, 1, 4, 9, 44**2])  # one neighbour


def test_krum_picks_the_update_closest_to_its_neighbours_and_rejects_the_outlier():
    agg, kept = krum(LINE, [1, 1, 1, 1, 1000], num_malicious=1)
    assert kept == [1]
    assert agg[0] is not LINE[1][0] and np.array_equal(agg[0], LINE[1][0])


def test_multi_krum_is_the_weighted_mean_of_the_lowest_scores():
    agg, kept = krum(LINE, [3, 1, 5, 7, 1000], num_malicious=1, num_to_keep=2)
    assert kept == [0, 1]
    _assert_weights(agg, [[(3 * 0 + 1 * 1) / 4]])
    agg, kept = krum(LINE, [3, 1, 5, 7, 1000], num_malicious=1, num_to_keep=3)
    assert kept == [0, 1, 2]
    _assert_weights(agg, [[(3 * 0 + 1 * 1 + 5 * 3) / 9]])


def test_krum_measures_distance_over_all_arrays_together():
    # x in one array, y in the other: the unit square and a far point. Each corner has two
    # neighbours at squared distance 1 (score 2); (10, 10) scores 9^2+9^2 + 9^2+10^2 = 343.
    square = [[np.array([x], dtype=np.float64), np.array([y], dtype=np.float64)]
              for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (10, 10))]
    np.testing.assert_array_equal(_krum_scores(square, 1), [2, 2, 2, 2, 343])
    agg, kept = krum(square, [1, 2, 3, 4, 100], num_malicious=1, num_to_keep=3)
    assert kept == [0, 1, 2]  # all corners tie: the lower indices win
    _assert_weights(agg, [[2 / 6], [3 / 6]])
    agg, kept = krum(square, [1, 2, 3, 4, 100], num_malicious=1, num_to_keep=4)
    assert kept == [0, 1, 2, 3]
    _assert_weights(agg, [[6 / 10], [7 / 10]])


def test_krum_ties_go_to_the_lower_index_and_to_keep_zero_means_plain_krum():
    # With one neighbour (f = 2), 0 and 1 are each other's nearest and tie at 1.
    for num_to_keep in (0, 1):
        agg, kept = krum(LINE, [1] * 5, num_malicious=2, num_to_keep=num_to_keep)
        assert kept == [0]
        _assert_weights(agg, [[0.0]])


def test_krum_is_not_fooled_by_a_large_common_offset():
    # |x|^2 + |y|^2 - 2<x,y> at 1e9 would cancel every digit of distances of order 1.
    shifted = [[a + 1e9 for a in u] for u in LINE]
    np.testing.assert_array_equal(_krum_scores(shifted, 1), _krum_scores(LINE, 1))
    assert krum(shifted, [1] * 5, num_malicious=1)[1] == [1]


def test_krum_refuses_too_few_clients_for_f():
    four = LINE[:4]
    krum(four, [1] * 4, num_malicious=1)  # n - f - 2 = 1: enough
    with pytest.raises(ValueError, match=r"n=4, f=2 gives n - f - 2 = 0"):
        krum(four, [1] * 4, num_malicious=2)
    with pytest.raises(ValueError, match="f >= 0"):
        krum(four, [1] * 4, num_malicious=-1)


def test_krum_refuses_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        krum(LINE, [1] * 4, num_malicious=1)
    with pytest.raises(ValueError, match="num_to_keep"):
        krum(LINE, [1] * 5, num_malicious=1, num_to_keep=6)
    with pytest.raises(ValueError, match="total weight"):
        krum(LINE, [1, 0, 1, 1, 1], num_malicious=1)


def test_krum_leaves_its_inputs_alone():
    before = [[a.copy() for a in u] for u in LINE]
    krum(LINE, [1] * 5, num_malicious=1, num_to_keep=3)
    assert all(np.array_equal(a, b) for u, v in zip(LINE, before) for a, b in zip(u, v))


# -- norm bounding -------------------------------------------------------------------------------

def test_bound_norm_scales_the_change_down_to_max_norm():
    reference = [np.array([1.0, 1.0]), np.array([1.0])]
    update = [np.array([4.0, 1.0]), np.array([5.0])]  # delta (3, 0), (4): norm 5 over both arrays
    bounded, norm = bound_norm(update, reference, max_norm=1.0)
    assert norm == 5.0
    _assert_weights(bounded, [[1 + 3 / 5, 1], [1 + 4 / 5]])
    _assert_weights(bound_norm(update, reference, max_norm=2.5)[0], [[2.5, 1], [3]])


def test_bound_norm_is_a_no_op_within_the_bound():
    reference = [np.zeros(2), np.zeros(1)]
    update = [np.array([3.0, 0.0]), np.array([4.0])]
    for max_norm in (5.0, 10.0):
        bounded, norm = bound_norm(update, reference, max_norm)
        assert norm == 5.0
        assert all(b is not u and np.array_equal(b, u) for b, u in zip(bounded, update))


def test_bound_norm_refuses_a_non_positive_bound():
    with pytest.raises(ValueError, match="max_norm"):
        bound_norm([np.ones(2)], [np.zeros(2)], 0.0)


# -- dtypes and shapes ---------------------------------------------------------------------------

def test_each_array_keeps_its_dtype_and_shape():
    rng = np.random.default_rng(0)
    updates = [[rng.standard_normal((3, 2)).astype(np.float32), np.array(rng.standard_normal())]
               for _ in range(6)]
    results = [
        coordinate_median(updates),
        trimmed_mean(updates, 0.2),
        krum(updates, [1] * 6, num_malicious=1)[0],
        krum(updates, [1] * 6, num_malicious=1, num_to_keep=3)[0],
        bound_norm(updates[1], updates[0], 1e-3)[0],
    ]
    for agg in results:
        assert [a.dtype for a in agg] == [np.float32, np.float64]
        assert [a.shape for a in agg] == [(3, 2), ()]
        assert all(isinstance(a, np.ndarray) for a in agg)  # not numpy scalars for the () array


def test_float32_results_are_the_float64_result_rounded_once():
    rng = np.random.default_rng(1)
    updates = [[rng.standard_normal(50).astype(np.float32)] for _ in range(8)]
    as64 = [[a.astype(np.float64) for a in u] for u in updates]
    assert np.array_equal(coordinate_median(updates)[0], coordinate_median(as64)[0].astype(np.float32))
    assert np.array_equal(trimmed_mean(updates, 0.25)[0], trimmed_mean(as64, 0.25)[0].astype(np.float32))


def test_mismatched_or_missing_updates_are_refused():
    with pytest.raises(ValueError, match="no updates"):
        coordinate_median([])
    with pytest.raises(ValueError, match="update 1 has shapes"):
        trimmed_mean([[np.zeros(2)], [np.zeros(3)]], 0.1)


# -- against Flower ------------------------------------------------------------------------------

def test_robust_aggregation_agrees_with_flower():
    """Flower pins another Ray, so it lives in benchmarks/.venv-flower (benchmarks/setup_flower.sh);
    the comparison runs there, on the same client updates, and must report agreement."""
    out = run_in_flower_venv("robust_vs_flower.py")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "agrees with Flower" in out.stdout
