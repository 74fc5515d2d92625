"""Robust aggregation and norm bounding through the controller (no Ray), against attackers."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller
from elasticfl.strategies import robust
from elasticfl.worker import InProcessPool


def noisy(rounds=3, strategy=None, **simulation):
    return RunConfig.from_dict(
        {
            "run": {"name": "r", "seed": 5, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"},
            "data": {"dataset": "none", "num_clients": 12},
            "cohort": {"clients_per_round": 7},
            "executors": {"unit_size": 2},
            "strategy": strategy or {"name": "fedavg"},
            "simulation": simulation,
        }
    )


def run(cfg, path, resume=False):
    c = Controller(cfg, "r", InProcessPool(cfg), CheckpointStore(str(path), "r"), resume=resume)
    c.run()
    assert c.status()["state"] == "completed", c.error
    return c


def by_hand(rounds, aggregate):
    """NoisyMean's clients, re-derived: the cohort stream, each client's seeded noise."""
    w = [np.zeros(8, np.float32), np.zeros((2, 2), np.float32)]
    sel = np.random.default_rng(5)
    for r in range(1, rounds + 1):
        cohort = np.sort(sel.choice(12, 7, replace=False))
        updates = []
        for cid in cohort:
            rng = np.random.default_rng([5, r, int(cid)])
            updates.append([a + rng.standard_normal(a.shape).astype(np.float32) * 0.1 for a in w])
        w = aggregate(updates, [float(c + 1) for c in cohort])
    return w


@pytest.mark.parametrize(
    "config, reference",
    [
        ({"name": "median"}, lambda u, n: robust.coordinate_median(u)),
        ({"name": "trimmed_mean", "beta": 0.2}, lambda u, n: robust.trimmed_mean(u, 0.2)),
        ({"name": "krum", "num_malicious": 2, "num_to_keep": 3}, lambda u, n: robust.krum(u, n, 2, 3)[0]),
    ],
)
def test_robust_rounds_equal_the_aggregate_of_every_clients_update(config, reference, tmp_path):
    c = run(noisy(3, {"name": "fedavg", "robust": config}), tmp_path)
    expected = by_hand(3, reference)
    assert all(np.array_equal(a, b) for a, b in zip(c.weights, expected))
    assert c.history[-1]["aggregation"]["name"] == config["name"]
    assert c.history[-1]["aggregation"]["clients"] == 7


def test_krum_records_which_clients_it_kept_and_leaves_the_attackers_out(tmp_path):
    c = run(noisy(3, {"name": "fedavg", "robust": {"name": "krum", "num_malicious": 2, "num_to_keep": 3}},
                  byzantine="0-2", attack="gaussian", attack_scale=5.0), tmp_path)
    for h in c.history:
        kept = h["aggregation"]["kept"]
        assert len(kept) == 3 and set(kept) <= set(h["cohort"]) and not set(kept) & {0, 1, 2}


@pytest.mark.parametrize("robust_config", [{"name": "median"}, {"name": "trimmed_mean", "beta": 0.3}])
def test_robust_aggregation_shrugs_off_sign_flipping_attackers_that_wreck_fedavg(robust_config, tmp_path):
    def attacked(scale, strategy=None, name=""):
        attack = {"byzantine": "0,3", "attack": "sign_flip", "attack_scale": scale}
        return run(noisy(4, strategy, **attack), tmp_path / f"{name}{scale}").weights[0]

    strategy = {"name": "fedavg", "robust": robust_config}
    honest = run(noisy(4), tmp_path / "honest").weights[0]
    undisturbed = run(noisy(4, strategy), tmp_path / "undisturbed").weights[0]
    # The mean moves with the attackers' strength ...
    damage = [np.linalg.norm(attacked(s) - honest) for s in (50.0, 5000.0)]
    assert damage[0] > 1.0 and damage[1] > 50 * damage[0]
    # ... the robust aggregate does not: once the attackers are the extremes, how far
    # out they are changes nothing, and where they are barely moves it.
    defended = attacked(50.0, strategy, "r")
    assert np.array_equal(defended, attacked(5000.0, strategy, "r"))
    assert np.linalg.norm(defended - undisturbed) < damage[0] / 5


def test_norm_bounding_caps_each_clients_change(tmp_path):
    attack = {"byzantine": "0-11", "attack": "gaussian", "attack_scale": 3.0}
    c = run(noisy(2, {"name": "fedavg", "norm_bound": 0.5}, **attack), tmp_path)
    norms = [cl["metrics"]["update_norm"] for h in c.history for cl in h["clients"]]
    assert min(norms) > 0.5  # every attacker's change was over the bound ...
    first = run(noisy(1, {"name": "fedavg", "norm_bound": 0.5}, **attack), tmp_path / "one").weights
    change = np.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in first))
    assert change <= 0.5 + 1e-6  # ... and the mean of bounded changes stays within it


def test_a_robust_run_resumes_bit_identically(tmp_path):
    strategy = {"name": "fedadam", "server_lr": 0.05, "robust": {"name": "trimmed_mean", "beta": 0.2}}
    whole = run(noisy(4, strategy), tmp_path / "a")
    run(noisy(2, strategy), tmp_path / "b")
    resumed = run(noisy(4, strategy), tmp_path / "b", resume=True)
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]


def test_bad_robust_settings_name_the_field():
    with pytest.raises(ConfigError, match="strategy.robust.num_malicious"):
        noisy(1, {"name": "fedavg", "robust": {"name": "krum", "num_malicious": 3}})
    with pytest.raises(ConfigError, match="strategy.robust.beta"):
        noisy(1, {"name": "fedavg", "robust": {"name": "trimmed_mean", "beta": 0.5}})
    with pytest.raises(ConfigError, match="simulation.byzantine"):
        noisy(1, byzantine="11-12")


def test_clients_without_data_get_no_vote_in_robust_aggregation():
    from elasticfl.selection import WorkUnit
    from elasticfl.worker import ClientWorker

    cfg = RunConfig.from_dict(
        {
            "task": {"type": "classification", "hidden": [8]},
            "data": {"dataset": "digits", "num_clients": 100, "partition": {"name": "dirichlet", "alpha": 0.1}},
            "cohort": {"clients_per_round": 20},
            "strategy": {"name": "fedavg", "robust": {"name": "krum", "num_malicious": 2}},
        }
    )
    worker = ClientWorker(cfg)
    worker._load_data()
    empty = next(c for c, rows in enumerate(worker._clients) if len(rows) == 0)
    full = next(c for c, rows in enumerate(worker._clients) if len(rows) > 0)
    result = worker.run_unit(1, worker.init_weights(), WorkUnit(0, tuple(sorted((empty, full)))))
    assert [c.status for c in result.clients] == ["ok", "ok"]  # the empty client is not a failure ...
    assert [u[0] for u in result.updates] == [full]  # ... but an unchanged model is no vote
