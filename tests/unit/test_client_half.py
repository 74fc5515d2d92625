"""Strategies with a client half (FedNova, SCAFFOLD), stragglers and compressed
updates: hand-computed steps, then whole runs through the controller without Ray."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.simulation import straggler_work
from elasticfl.strategies import ClientUpdate, FedNova, Scaffold, WeightedSum
from elasticfl.strategies.fednova import local_work
from elasticfl.worker import InProcessPool


def f32(*values):
    return np.array(values, np.float32)


# -- FedNova ------------------------------------------------------------------------------------

def test_local_work_is_the_step_count_for_sgd_and_the_momentum_sum_otherwise():
    assert local_work(5) == 5.0
    # a_i for heavy-ball momentum 0.5 over 3 steps: Σ_k (1 + ρ + … + ρ^(k−1)) = 1 + 1.5 + 1.75
    assert local_work(3, 0.5) == pytest.approx(4.25)


def test_fednova_normalises_each_clients_change_by_its_work():
    nova = FedNova()
    x = [f32(0.0, 0.0)]
    a = ClientUpdate(0, [f32(1.0, 2.0)], weight=1.0, local_steps=1)
    b = ClientUpdate(1, [f32(4.0, 0.0)], weight=3.0, local_steps=4)
    summed = WeightedSum()
    for u in (a, b):
        nova.prepare(u, x, {})
        summed.add(u.weights, u.weight)
        summed.add_side(u.side)
    new = nova.aggregate(x, summed)
    # d_a = (1, 2)/1, d_b = (4, 0)/4 = (1, 0); p = (1/4, 3/4); τ_eff = 1/4·1 + 3/4·4 = 3.25
    # x⁺ = 3.25 · (1/4·(1, 2) + 3/4·(1, 0)) = 3.25 · (1, 0.5)
    np.testing.assert_allclose(new[0], [3.25, 1.625], rtol=1e-6)


def test_fednova_with_equal_work_is_fedavg():
    nova, x = FedNova(), [f32(1.0, -1.0)]
    updates = [ClientUpdate(i, [f32(i, 2 * i)], weight=float(i + 1), local_steps=7) for i in range(3)]
    plain = WeightedSum()
    normalised = WeightedSum()
    for u in updates:
        plain.add(u.weights, u.weight)
        nova.prepare(u, x, {})
        normalised.add(u.weights, u.weight)
        normalised.add_side(u.side)
    np.testing.assert_allclose(nova.aggregate(x, normalised)[0], plain.mean()[0], rtol=1e-6)


def test_fednova_needs_the_task_to_report_its_steps():
    with pytest.raises(Exception, match="local_steps"):
        FedNova().prepare(ClientUpdate(0, [f32(1.0)], 1.0, local_steps=None), [f32(0.0)], {})


# -- SCAFFOLD -----------------------------------------------------------------------------------

def test_scaffold_control_variates_by_hand():
    s = Scaffold(num_clients=4, local_lr=0.5)
    x = [f32(1.0, 1.0)]
    shared = s.shared(x)
    np.testing.assert_array_equal(shared["control"][0], [0.0, 0.0])
    u = ClientUpdate(2, [f32(0.0, 2.0)], weight=2.0, local_steps=4)
    assert [c.tolist() for c in s.correction(u.state, shared)] == [[0.0, 0.0]]
    s.prepare(u, x, shared)
    # c_i⁺ = 0 − 0 + (x − y)/(K·η) = (1, −1)/2
    np.testing.assert_allclose(u.state["control"][0], [0.5, -0.5])
    summed = WeightedSum()
    summed.add(u.weights, u.weight)
    summed.add_side(u.side)
    new = s.aggregate(x, summed)
    np.testing.assert_allclose(new[0], [0.0, 2.0])  # server_lr 1: the clients' mean
    # c⁺ = c + (1/N)·Σ Δc_i = (0.5, −0.5)/4
    np.testing.assert_allclose(s.state_dict()["control"][0], [0.125, -0.125])
    # the next round, the client corrects its gradients by c − c_i
    np.testing.assert_allclose(s.correction(u.state, s.shared(new))[0], [0.125 - 0.5, -0.125 + 0.5])


# -- stragglers ---------------------------------------------------------------------------------

def test_stragglers_are_drawn_from_seed_round_and_client_alone():
    draws = [straggler_work(7, 3, c, 0.9) for c in range(2000)]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.87 < share < 0.93
    assert all(0 < d <= 1 for d in draws if d is not None)
    assert draws == [straggler_work(7, 3, c, 0.9) for c in range(2000)]
    assert draws != [straggler_work(7, 4, c, 0.9) for c in range(2000)]
    assert straggler_work(7, 3, 1, 0.0) is None


# -- through the controller ---------------------------------------------------------------------

def digits(rounds=3, **sections):
    return RunConfig.from_dict(
        {
            "run": {"name": "c", "seed": 2, "rounds": rounds},
            "task": {"type": "classification", "lr": 0.1, "hidden": [16]},
            "data": {"dataset": "digits", "num_clients": 12, "partition": {"name": "dirichlet", "alpha": 0.3}},
            "cohort": {"clients_per_round": 5},
            "executors": {"unit_size": 2},
            **sections,
        }
    )


def run(cfg, path, resume=False):
    c = Controller(cfg, "c", InProcessPool(cfg), CheckpointStore(str(path), "c"), resume=resume)
    c.run()
    assert c.status()["state"] == "completed", c.error
    return c


def stop_and_resume(path, rounds, **sections):
    run(digits(2, **sections), path)
    return run(digits(rounds, **sections), path, resume=True)


RESUMABLE = {
    "scaffold": {"strategy": {"name": "scaffold"}},
    "fednova-stragglers": {"strategy": {"name": "fednova"}, "simulation": {"stragglers": 0.8}},
    "topk-error-feedback": {"compression": {"codec": "topk", "topk_fraction": 0.05}},
    "int8": {"compression": {"codec": "int8"}},
}


@pytest.mark.parametrize("case", sorted(RESUMABLE))
def test_stop_and_resume_gives_the_same_weights(case, tmp_path):
    sections = RESUMABLE[case]
    whole = run(digits(4, **sections), tmp_path / "whole")
    resumed = stop_and_resume(tmp_path / "resumed", 4, **sections)
    assert resumed.resumed_from == 2
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    plain = run(digits(4), tmp_path / "plain")
    assert plain.status()["weights_sha256"] != whole.status()["weights_sha256"]


def test_scaffold_keeps_a_control_variate_per_client_that_trained(tmp_path):
    c = run(digits(2, strategy={"name": "scaffold"}), tmp_path)
    trained = {cl["client_id"] for h in c.history for cl in h["clients"] if cl["status"] == "ok"}
    assert set(c.client_state) == trained
    assert all(np.abs(s["control"][0]).sum() > 0 for s in c.client_state.values())
    assert np.abs(c.strategy.state_dict()["control"][0]).sum() > 0


def test_stragglers_do_part_of_their_steps_or_are_dropped(tmp_path):
    full = run(digits(1), tmp_path / "full").history[0]["clients"]
    partial = run(digits(1, simulation={"stragglers": 1.0}), tmp_path / "partial").history[0]["clients"]
    steps = {c["client_id"]: c["metrics"]["local_steps"] for c in full}
    assert all(1 <= c["metrics"]["local_steps"] <= steps[c["client_id"]] for c in partial)
    assert sum(c["metrics"]["local_steps"] for c in partial) < sum(steps.values())
    dropped = run(
        digits(1, simulation={"stragglers": 0.5, "straggler_policy": "drop"}, cohort={"clients_per_round": 5, "min_clients": 1}),
        tmp_path / "drop",
    ).history[0]
    late = [c for c in dropped["clients"] if c["status"] == "late"]
    expected = [c for c in dropped["cohort"] if straggler_work(2, 1, c, 0.5) is not None]
    assert [c["client_id"] for c in late] == expected and expected
    assert all("straggler" in c["reason"] for c in late)


@pytest.mark.parametrize("codec, ratio", [("fp16", 0.5), ("int8", 0.25), ("topk", 0.03)])
def test_compressed_rounds_record_the_bytes_clients_sent(codec, ratio, tmp_path):
    c = run(digits(2, compression={"codec": codec, "topk_fraction": 0.01}), tmp_path)
    h = c.history[-1]
    raw = h["clients_ok"] * sum(w.nbytes for w in c.weights)
    assert h["bytes_uplink_raw"] == raw
    assert h["bytes_uplink"] == sum(cl["metrics"]["uplink_bytes"] for cl in h["clients"])
    assert h["bytes_uplink"] <= raw * ratio * 1.05
    residuals = {cid for cid, s in c.client_state.items() if "residual" in s}
    trained = {cl["client_id"] for r in c.history for cl in r["clients"] if cl["status"] == "ok"}
    assert residuals == trained


@pytest.mark.parametrize(
    "sections, match",
    [
        ({"strategy": {"name": "scaffold"}, "task": {"type": "classification", "momentum": 0.9}}, "task.momentum"),
        ({"strategy": {"name": "fednova"}, "privacy": {"enabled": True}}, "privacy.enabled"),
        ({"strategy": {"name": "fedavg", "robust": {"name": "median"}}, "privacy": {"enabled": True}}, "strategy.robust"),
        ({"compression": {"codec": "topk", "topk_fraction": 0}}, "compression.topk_fraction"),
        ({"simulation": {"straggler_policy": "skip"}}, "simulation.straggler_policy"),
    ],
)
def test_clear_errors_for_combinations_that_cannot_work(sections, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(sections)


def test_min_clients_zero_lets_a_round_without_updates_keep_the_weights(tmp_path):
    everyone_straggles = {"simulation": {"stragglers": 1.0, "straggler_policy": "drop"}}
    cfg = digits(1, **everyone_straggles)
    failed = Controller(cfg, "c", InProcessPool(cfg), CheckpointStore(str(tmp_path / "a"), "c"))
    assert failed.run() is RunState.FAILED and "cohort.min_clients=1" in failed.error  # the default quorum
    c = run(digits(2, cohort={"clients_per_round": 5, "min_clients": 0}, **everyone_straggles), tmp_path / "c")
    initial = InProcessPool(c.config).init_weights()
    assert all(np.array_equal(a, b) for a, b in zip(c.weights, initial))
    assert [h["clients_ok"] for h in c.history] == [0, 0] and [h["clients_late"] for h in c.history] == [5, 5]


def test_slow_clients_take_longer(tmp_path):
    c = run(digits(1, simulation={"slow_clients": "0-5", "slow_s": 0.2}), tmp_path)
    clients = c.history[0]["clients"]
    assert all((cl["duration_s"] >= 0.2) == (cl["client_id"] <= 5) for cl in clients)


def test_fednova_composes_with_robust_aggregation(tmp_path):
    # FedNova's effective work is relative to the clients' total weight; the robust
    # aggregate must keep that weight, or τ_eff grows by the examples count and diverges
    nova = run(digits(3, strategy={"name": "fednova", "robust": {"name": "median"}}), tmp_path / "m")
    plain = run(digits(3, strategy={"name": "fednova"}), tmp_path / "p")
    for a, b in zip(nova.weights, plain.weights):
        assert np.abs(a - b).max() < 1.0  # same scale of step as without the median
