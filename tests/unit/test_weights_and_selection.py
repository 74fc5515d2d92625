import hashlib

import numpy as np
import pytest

from elasticfl.selection import UniformSelector, make_units
from elasticfl.weights import check_update, weights_sha256


def test_weights_sha256_is_over_raw_bytes_in_order():
    a, b = np.arange(3, dtype=np.float32), np.ones((2, 2), np.float64)
    assert weights_sha256([a, b]) == hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()
    assert weights_sha256([b, a]) != weights_sha256([a, b])


@pytest.mark.parametrize(
    "update, fragment",
    [
        ("nope", "list of numpy arrays"),
        ([np.zeros(3, np.float32)], "1 arrays"),
        ([np.zeros(3, np.float32), np.zeros(3, np.float32)], "shape"),
        ([np.zeros(3, np.float32), np.zeros((2, 2), np.float64)], "dtype"),
        ([np.array([0, np.nan, 0], np.float32), np.zeros((2, 2), np.float32)], "NaN"),
        ([np.array([0, np.inf, 0], np.float32), np.zeros((2, 2), np.float32)], "NaN or infinite"),
    ],
)
def test_check_update_rejects_garbage(update, fragment):
    ref = [np.zeros(3, np.float32), np.zeros((2, 2), np.float32)]
    assert fragment in check_update(update, ref)


def test_check_update_accepts_a_good_update():
    ref = [np.zeros(3, np.float32)]
    assert check_update([np.ones(3, np.float32)], ref) is None


def test_w3_cohort_rule_and_replay_after_resume():
    # WORKLOADS.md W3: one default_rng(0), drawn once per round in order.
    rng = np.random.default_rng(0)
    expected = [np.sort(rng.choice(1000, 100, replace=False)) for _ in range(5)]
    sel = UniformSelector(1000, 100, seed=0)
    got = [sel.cohort(r) for r in range(1, 6)]
    assert all((g == e).all() for g, e in zip(got, expected))
    fresh = UniformSelector(1000, 100, seed=0)  # a resumed run asks for round 4 first
    assert (fresh.cohort(4) == expected[3]).all()
    assert (fresh.cohort(5) == expected[4]).all()
    assert (fresh.cohort(2) == expected[1]).all()  # going back replays from the start


def test_full_participation_is_everyone():
    assert (UniformSelector(10, 10, seed=3).cohort(7) == np.arange(10)).all()


def test_units_cover_the_cohort_in_order():
    cohort = np.array([3, 5, 8, 13, 21, 34, 55])
    units = make_units(cohort, unit_size=3)
    assert [u.client_ids for u in units] == [(3, 5, 8), (13, 21, 34), (55,)]
    assert [u.unit_id for u in units] == [0, 1, 2]
    assert [len(u.client_ids) for u in make_units(np.arange(100))] == [25] * 4  # ~25 clients a unit
    assert len(make_units(np.arange(10))) == 2  # at least two units
    assert len(make_units(np.arange(10), model_params=100_000_000)) == 2  # big models: few units


def test_clients_with_different_pools_never_share_a_unit():
    placement = {c: ("hpc",) for c in range(0, 10)} | {c: ("cloud", "hpc") for c in range(10, 15)}
    units = make_units(np.arange(20), unit_size=4, placement=placement)
    assert [u.unit_id for u in units] == list(range(len(units)))
    for unit in units:
        assert len({placement.get(c, ()) for c in unit.client_ids}) == 1
        assert unit.pools == placement.get(unit.client_ids[0], ())
    assert sorted(c for u in units for c in u.client_ids) == list(range(20))
    # the same cohort and config cut the same units, whatever ran them before
    assert units == make_units(np.arange(20), unit_size=4, placement=placement)


def test_a_split_unit_keeps_its_place_in_the_sum_order():
    unit = make_units(np.arange(6), unit_size=3)[1]
    parts = unit.split()
    assert [p.client_ids for p in parts] == [(3,), (4,), (5,)]
    assert sorted([p.order for p in parts] + [(0, 0), (2, 0)]) == [(0, 0), (1, 1), (1, 2), (1, 3), (2, 0)]
