"""FedAvg / FedAvgM against results computed by hand; the weighted sum's invariants."""

import numpy as np
import pytest

from elasticfl.strategies import FedAvg, FedAvgM, WeightedSum


def _sum(updates):
    s = WeightedSum()
    for weights, n in updates:
        s.add(weights, n)
    return s


def test_fedavg_is_the_example_weighted_mean():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([4.0, 8.0], np.float32), np.array([[3.0]], np.float32)]
    out = FedAvg().aggregate(a, _sum([(a, 1), (b, 2)]))
    # (1*1 + 2*4)/3 = 3, (1*2 + 2*8)/3 = 6, (0 + 2*3)/3 = 2
    np.testing.assert_array_equal(out[0], np.array([3.0, 6.0], np.float32))
    np.testing.assert_array_equal(out[1], np.array([[2.0]], np.float32))
    assert out[0].dtype == np.float32


def test_fedavg_keeps_the_global_weights_when_no_client_had_data():
    g = [np.ones(3, np.float32)]
    s = _sum([([np.zeros(3, np.float32)], 0)])
    assert FedAvg().aggregate(g, s)[0] is g[0]


def test_merging_units_equals_one_flat_sum_bit_for_bit():
    rng = np.random.default_rng(1)
    updates = [([rng.standard_normal(1000).astype(np.float32)], int(rng.integers(1, 50))) for _ in range(40)]
    flat = FedAvg().aggregate(None, _sum(updates))[0]
    for cut in (1, 3, 7, 40):
        merged = WeightedSum()
        for start in range(0, 40, cut):
            merged.merge(_sum(updates[start : start + cut]))
        assert merged.total_weight == sum(n for _, n in updates)
        assert FedAvg().aggregate(None, merged)[0].tobytes() == flat.tobytes()


def test_merging_an_empty_unit_changes_nothing():
    s = _sum([([np.ones(2, np.float32)], 3)])
    s.merge(WeightedSum())
    assert s.total_weight == 3
    np.testing.assert_array_equal(s.mean()[0], np.ones(2, np.float32))


def test_fedavgm_applies_server_momentum_and_round_trips_its_state():
    g = [np.array([1.0], np.float32)]
    s = _sum([([np.array([0.0], np.float32)], 1)])  # the cohort moved to 0: delta = 1
    strat = FedAvgM(server_lr=0.5, momentum=0.9)
    w1 = strat.aggregate(g, s)
    assert w1[0][0] == pytest.approx(1 - 0.5 * 1.0)
    state = strat.state_dict()
    again = FedAvgM(server_lr=0.5, momentum=0.9)
    again.load_state_dict(state)
    s2 = _sum([([np.array([0.0], np.float32)], 1)])
    w2 = strat.aggregate(w1, s2)
    # velocity = 0.9 * 1 + 0.5 = 1.4; w = 0.5 - 0.5 * 1.4 = -0.2
    assert w2[0][0] == pytest.approx(-0.2)
    assert again.aggregate(w1, _sum([([np.array([0.0], np.float32)], 1)]))[0][0] == w2[0][0]


def test_accumulator_precision_is_chosen_by_model_size():
    from elasticfl.strategies import AUTO_FLOAT64_MAX_PARAMS, resolve_precision

    assert resolve_precision("auto", 4810) == "float64"
    assert resolve_precision("auto", AUTO_FLOAT64_MAX_PARAMS + 1) == "float32"
    assert resolve_precision("float64", 10**9) == "float64"
    s = WeightedSum(precision="float32")
    s.add([np.ones(3, np.float16)], 2)
    assert s.sums[0].dtype == np.float32  # half precision is summed in float32 at least
    s.add([np.ones(3, np.float16)], 1)
    np.testing.assert_array_equal(s.mean()[0], np.ones(3, np.float16))


def test_a_first_update_with_weight_zero_still_starts_the_sums():
    s = _sum([([np.ones(2, np.float32)], 0), ([np.full(2, 3.0, np.float32)], 2)])
    np.testing.assert_array_equal(s.mean()[0], np.full(2, 3.0, np.float32))
