"""Client selectors: seeded, history-driven, resumable (no Ray)."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.selection import (
    ClientStats,
    OortSelector,
    PowerOfChoiceSelector,
    SpeedSelector,
    UniformSelector,
    build_selector,
)
from elasticfl.worker import InProcessPool
from tests.conftest import noisy_config

N, K, SEED = 40, 8, 7
SELECTIONS = [
    {"name": "uniform"},
    {"name": "speed"},
    {"name": "oort"},
    {"name": "power_of_choice"},
    {"name": "power_of_choice", "candidates": 12},
    {"name": "oort", "exploration_factor": 0.0, "exploration_min": 0.0, "preferred_duration_s": 0.5},
]


def report(cid, status="ok", n=10, seconds=1.0, loss=None):
    rep = {"client_id": cid, "status": status, "num_examples": n if status == "ok" else 0, "duration_s": seconds,
           "node_id": "x", "metrics": {}}
    if loss is not None:
        rep["metrics"]["train_loss"] = loss
    return rep


def synthetic_history(rounds=6, num_clients=N, seen=30, seed=0):
    """Clients below `seen` were picked now and then; fast = low ids, lossy = high ids, 5 and 6 flaky."""
    rng = np.random.default_rng(seed)
    history = []
    for r in range(1, rounds + 1):
        cohort = sorted(rng.choice(seen, min(10, seen), replace=False).tolist())
        clients = []
        for cid in cohort:
            if cid in (5, 6):
                clients.append(report(cid, "failed" if r % 2 else "late", seconds=0.1))
            else:
                clients.append(report(cid, n=10 + cid, seconds=0.1 * (1 + cid), loss=0.01 * (1 + cid)))
        history.append({"round": r, "cohort": cohort, "clients": clients})
    return history


def selector(selection, num_clients=N, per_round=K, seed=SEED):
    cfg = RunConfig.from_dict(
        {
            "run": {"seed": seed},
            "data": {"dataset": "none", "num_clients": num_clients},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"},
            "cohort": {"clients_per_round": per_round, "selection": selection},
        }
    )
    return build_selector(cfg)


@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: "-".join(map(str, s.values())))
def test_each_selector_is_deterministic_distinct_sorted_and_in_range(selection):
    history = synthetic_history()
    for r in (1, 7, 8, 30):
        a = selector(selection).cohort(r, history)
        b = selector(selection).cohort(r, [dict(h) for h in history])
        assert a.dtype == np.int64 and (a == b).all()
        assert len(set(a.tolist())) == K and (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < N
    # rounds asked in sequence with a growing history (incremental folding) == fresh selectors
    sel = selector(selection)
    steps = [sel.cohort(r, history[: r - 1]) for r in range(1, 7)]
    fresh = [selector(selection).cohort(r, history[: r - 1]) for r in range(1, 7)]
    assert all((x == y).all() for x, y in zip(steps, fresh))
    if selection.get("exploration_factor") == 0.0:
        return  # pure exploitation may leave nothing to chance
    # a seed changes the picks
    assert any((selector(selection, seed=SEED + 1).cohort(r, history) != selector(selection).cohort(r, history)).any()
               for r in (7, 8, 9))


def test_the_whole_population_is_everyone_for_every_selector():
    for selection in SELECTIONS:
        assert (selector(selection, num_clients=5, per_round=5).cohort(3, synthetic_history(num_clients=5, seen=5))
                == np.arange(5)).all()


def test_uniform_reproduces_todays_cohorts_whatever_the_history():
    rng = np.random.default_rng(SEED)
    expected = [np.sort(rng.choice(N, K, replace=False)) for _ in range(6)]
    sel = selector({"name": "uniform"})
    assert isinstance(sel, UniformSelector)
    got = [sel.cohort(r, synthetic_history()[: r - 1]) for r in range(1, 7)]
    assert all((g == e).all() for g, e in zip(got, expected))
    assert (selector({"name": "uniform"}).cohort(4) == expected[3]).all()  # a resume replays


def test_stats_come_from_the_history():
    stats = ClientStats(N).update(synthetic_history())
    thr = stats.throughput
    assert np.isnan(thr[35]) and not stats.seen[35]  # never picked
    seen_ok = [c for c in range(30) if stats.ok[c] and c not in (5, 6)]
    c = seen_ok[0]
    assert thr[c] == pytest.approx((10 + c) / (0.1 * (1 + c)))
    assert stats.last_loss[c] == pytest.approx(0.01 * (1 + c))
    assert stats.reliability[5] < 1 and np.isnan(stats.last_loss[5]) and stats.failed[5] + stats.late[5] == stats.reports[5]


def test_speed_aware_prefers_fast_reliable_clients_but_keeps_a_floor():
    n = 20
    history = []
    for r in range(1, 4):  # everyone measured: 0-9 fast (100 ex/s), 10-19 slow (1 ex/s); 0 and 1 keep failing
        clients = [report(c, "failed") if c in (0, 1) else report(c, n=100, seconds=1.0 if c < 10 else 100.0)
                   for c in range(n)]
        history.append({"round": r, "cohort": list(range(n)), "clients": clients})
    sel = SpeedSelector(n, 5, seed=1, floor=0.05)
    counts = np.zeros(n)
    for r in range(4, 404):
        counts[sel.cohort(r, history)] += 1
    assert counts[2:10].min() > counts[10:].max()  # fast beats slow
    assert counts[2:10].mean() > 3 * counts[0:2].mean()  # reliable beats failing
    assert counts[10:].sum() > 0  # the floor: slow clients still get picked
    assert sel.info == {"measured": 18}


def test_power_of_choice_keeps_the_highest_losses_among_its_candidates():
    n, k, d = 30, 4, 10
    history = [{"round": 1, "cohort": list(range(n)), "clients": [report(c, loss=float((c * 7) % n)) for c in range(n)]}]
    sel = PowerOfChoiceSelector(n, k, seed=3, candidates=d)
    loss = np.array([float((c * 7) % n) for c in range(n)])
    for r in range(2, 20):
        chosen = sel.cohort(r, history)
        candidates = sel.rng(r).choice(n, d, replace=False)
        assert set(chosen) <= set(candidates.tolist())
        assert set(chosen.tolist()) == set(sorted(candidates.tolist(), key=lambda c: -loss[c])[:k])


def test_power_of_choice_tries_new_clients_first_and_failing_ones_last():
    n, k = 10, 3
    # 0-4 reported losses, 5-6 were tried and failed, 7-9 never tried
    clients = [report(c, loss=1.0 + c) for c in range(5)] + [report(5, "failed"), report(6, "late")]
    history = [{"round": 1, "cohort": list(range(7)), "clients": clients}]
    sel = PowerOfChoiceSelector(n, k, seed=0, candidates=n)  # every client a candidate
    assert sel.cohort(2, history).tolist() == [7, 8, 9]
    history.append({"round": 2, "cohort": [7, 8, 9], "clients": [report(c, loss=0.5) for c in (7, 8, 9)]})
    assert sel.cohort(3, history).tolist() == [2, 3, 4]  # highest losses; 5 and 6 never ahead of a known loss


def test_oort_explores_unseen_clients_and_exploits_high_utility():
    n, k = 40, 10
    sel = OortSelector(n, k, seed=2)
    first = sel.cohort(1, [])
    assert sel.info == {"explored": k, "exploited": 0} and len(first) == k
    # 0-19 seen: utility grows with the id (examples × loss), all equally fast; 20-39 never seen
    clients = [report(c, n=10, seconds=1.0, loss=0.1 * (1 + c)) for c in range(20)]
    history = [{"round": 1, "cohort": list(range(20)), "clients": clients}]
    counts = np.zeros(n)
    for r in range(2, 202):
        chosen = sel.cohort(r, history)
        eps = max(0.3, 0.9 * 0.98 ** (r - 1))
        explored = min(20, int(np.floor(k * eps + 0.5)))
        assert sel.info == {"explored": explored, "exploited": k - explored}
        assert (chosen >= 20).sum() == explored  # exploration goes to unseen clients only
        counts[chosen] += 1
    assert counts[20:].min() > 0  # every unseen client was explored at some point
    assert counts[15:20].sum() > 3 * counts[0:5].sum()  # high utility exploited far more than low


def test_oort_penalises_clients_slower_than_the_preferred_duration():
    n, k = 12, 3
    # all seen with the same utility; 0-5 take 1 s, 6-11 take 10 s; T = 2 s, alpha = 2
    clients = [report(c, n=10, seconds=1.0 if c < 6 else 10.0, loss=1.0) for c in range(n)]
    history = [{"round": 1, "cohort": list(range(n)), "clients": clients}]
    sel = OortSelector(n, k, seed=0, exploration_min=0.0, exploration_factor=0.0, preferred_duration_s=2.0,
                       staleness_weight=0.0)
    scores = sel.scores(2, ClientStats(n).update(history))
    assert scores[:6] == pytest.approx(1.0) and scores[6:] == pytest.approx((2.0 / 10.0) ** 2)
    counts = np.zeros(n)
    for r in range(2, 102):
        counts[sel.cohort(r, history)] += 1
    assert counts[6:].sum() == 0  # below the cut-off: never exploited while faster clients fill the cohort


def test_selection_config_is_a_discriminated_union():
    sel = selector({"name": "oort", "round_penalty": 1.5, "exploration_factor": 0.5})
    assert isinstance(sel, OortSelector) and sel.round_penalty == 1.5 and sel.exploration_factor == 0.5
    assert isinstance(selector({"name": "power_of_choice"}), PowerOfChoiceSelector)
    assert selector({"name": "power_of_choice"}).candidates == 2 * K
    assert selector({"name": "power_of_choice", "candidates": 2}).candidates == K  # at least the cohort
    assert RunConfig().cohort.selection.name == "uniform"
    with pytest.raises(ConfigError, match=r"cohort\.selection: 'random' is not a known name; use one of 'uniform', 'speed'"):
        RunConfig.from_dict({"cohort": {"selection": {"name": "random"}}})
    with pytest.raises(ConfigError, match=r"cohort\.selection\.flor: unknown field"):
        RunConfig.from_dict({"cohort": {"selection": {"name": "speed", "flor": 0.2}}})


# -- through the controller ------------------------------------------------------------------

class TimedPool(InProcessPool):
    """Client durations from the client id (slower with the id), not the wall clock, so runs repeat."""

    def train_units(self, round, weights, units, close=None):
        results = super().train_units(round, weights, units, close)
        for unit in results:
            for c in unit.clients:
                c.duration_s = 0.001 * (1 + c.client_id % 5)
        return results


def controller(cfg, path, resume=False):
    return Controller(cfg, "r", TimedPool(cfg), CheckpointStore(str(path), "r"), resume=resume)


def run_config(selection, rounds=5):
    cfg = noisy_config(rounds=rounds, clients=16, per_round=5, raise_clients=[3])
    return cfg.with_overrides(cohort={"clients_per_round": 5, "selection": selection})


@pytest.mark.parametrize("selection", SELECTIONS[:4], ids=lambda s: s["name"])
def test_a_run_with_each_selector_completes_and_a_resume_repeats_it(selection, tmp_path):
    whole = controller(run_config(selection), tmp_path / "a")
    assert whole.run() is RunState.COMPLETED
    assert [h["selection"] for h in whole.history] == [selection["name"]] * 5
    for h in whole.history:
        assert len(h["cohort"]) == 5 == len(set(h["cohort"]))
    if selection["name"] == "oort":
        assert whole.history[0]["selection_info"] == {"explored": 5, "exploited": 0}

    stopped = controller(run_config(selection), tmp_path / "b")
    stopped.start()
    stopped.step()
    stopped.request_stop()
    assert stopped.step() is RunState.STOPPED
    stopped._finish(RunState.STOPPED)
    resumed = controller(run_config(selection), tmp_path / "b", resume=True)
    assert resumed.run() is RunState.COMPLETED and resumed.resumed_from == 2
    assert [h["cohort"] for h in resumed.history] == [h["cohort"] for h in whole.history]
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]


def test_history_driven_selectors_differ_from_uniform_in_a_run(tmp_path):
    cohorts = {}
    for selection in SELECTIONS[:4]:
        c = controller(run_config(selection), tmp_path / selection["name"])
        c.run()
        cohorts[selection["name"]] = [h["cohort"] for h in c.history]
    assert len({str(v) for v in cohorts.values()}) == 4
