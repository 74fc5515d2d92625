"""Buffered asynchronous training (FedBuff) stepped without Ray: units run first in,
first out, so every arrival order and staleness follows from the config."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.controller._buffered import _PICK_KEY
from elasticfl.worker import InProcessPool


def config(rounds=6, buffer_size=2, concurrency=4, clients=9, strategy=None, **asynchronous):
    return RunConfig.from_dict(
        {
            "run": {"name": "a", "seed": 4, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"},
            "data": {"dataset": "none", "num_clients": clients},
            "strategy": strategy or {"name": "fedavg"},
            "asynchronous": {"enabled": True, "buffer_size": buffer_size, "concurrency": concurrency, **asynchronous},
        }
    )


def run(cfg, path, resume=False):
    c = Controller(cfg, "a", InProcessPool(cfg), CheckpointStore(str(path), "a"), resume=resume)
    assert c.run() is RunState.COMPLETED, c.error
    return c


def fedbuff_by_hand(rounds, k, concurrency, clients, exponent=0.5):
    """FedBuff over NoisyMean written out: a FIFO of dispatches, each from the version it started at."""
    w = [np.zeros(8, np.float32), np.zeros((2, 2), np.float32)]
    versions, fifo, staleness, dispatch = {0: w}, [], [], 0
    for version in range(rounds):
        buffer = [np.zeros(a.shape) for a in w]
        arrived = 0
        while arrived < k:
            while len(fifo) < concurrency:
                busy = {c for _, c, _ in fifo}
                rng = np.random.default_rng([4, dispatch, _PICK_KEY])
                client = int(rng.integers(clients))
                while client in busy:
                    client = int(rng.integers(clients))
                fifo.append((dispatch, client, version))
                versions[version] = w
                dispatch += 1
            d, client, started = fifo.pop(0)
            base = versions[started]
            noise = np.random.default_rng([4, d, client])  # the dispatch number seeds the client
            trained = [a + noise.standard_normal(a.shape).astype(np.float32) * 0.1 for a in base]
            tau = version - started
            for acc, t, b in zip(buffer, trained, base):
                acc += (1 + tau) ** -exponent * (t.astype(np.float64) - b)
            staleness.append(tau)
            arrived += 1
        w = [((k * a.astype(np.float64) + acc) / k).astype(np.float32) for a, acc in zip(w, buffer)]
    return w, staleness


def test_fedbuff_equals_the_algorithm_written_out(tmp_path):
    c = run(config(rounds=6, buffer_size=2, concurrency=4), tmp_path)
    weights, staleness = fedbuff_by_hand(6, 2, 4, 9)
    for got, want in zip(c.weights, weights):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    recorded = [cl["metrics"]["staleness"] for h in c.history for cl in h["clients"]]
    assert recorded == staleness and max(staleness) >= 1  # four in flight, two per step: updates go stale
    first = c.history[0]["asynchronous"]
    assert first["buffer_size"] == 2 and first["in_flight"] == 3 and first["dispatches"] == [0, 1]


def test_no_client_trains_twice_at_once_and_every_dispatch_is_recorded(tmp_path):
    c = run(config(rounds=10, buffer_size=3, concurrency=5, clients=6), tmp_path)
    dispatched = [cl["metrics"]["dispatch"] for h in c.history for cl in h["clients"]]
    assert dispatched == sorted(dispatched) == list(range(len(dispatched)))  # FIFO here: arrivals in dispatch order
    clients = [cl["client_id"] for h in c.history for cl in h["clients"]]  # by dispatch number
    # dispatch i starts while i−4 … i−1 are training: it never picks one of their clients
    assert all(cid not in clients[max(0, i - 4) : i] for i, cid in enumerate(clients))
    assert len(set(clients)) == 6


def test_stale_updates_past_the_limit_are_dropped_and_recorded(tmp_path):
    c = run(config(rounds=5, buffer_size=1, concurrency=4, max_staleness=1), tmp_path)
    clients = [cl for h in c.history for cl in h["clients"]]
    stale = [cl for cl in clients if cl["status"] == "stale"]
    assert stale and all(cl["metrics"]["staleness"] > 1 for cl in stale)
    assert all(cl["metrics"]["staleness"] <= 1 for cl in clients if cl["status"] == "ok")
    assert all(h["asynchronous"]["staleness_max"] <= 1 for h in c.history)


@pytest.mark.parametrize("strategy", [{"name": "fedavg"}, {"name": "fedadam", "server_lr": 0.05}])
def test_a_resumed_run_restarts_the_dispatches_in_flight_and_ends_bit_identical(strategy, tmp_path):
    # concurrency 5 > buffer 2: at every checkpoint clients are in flight from older versions
    whole = run(config(rounds=7, concurrency=5, strategy=strategy), tmp_path / "whole")
    run(config(rounds=3, concurrency=5, strategy=strategy), tmp_path / "part")
    resumed = run(config(rounds=7, concurrency=5, strategy=strategy), tmp_path / "part", resume=True)
    assert resumed.resumed_from == 3
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    assert [h["asynchronous"] for h in resumed.history] == [h["asynchronous"] for h in whole.history]


def test_compressed_asynchronous_updates_keep_their_residuals_across_a_resume(tmp_path):
    extra = {"compression": {"codec": "topk", "topk_fraction": 0.3}}

    def cfg(rounds):
        return RunConfig.from_dict({**config(rounds=rounds, concurrency=5).to_dict(), **extra})

    whole = run(cfg(6), tmp_path / "whole")
    run(cfg(3), tmp_path / "part")
    resumed = run(cfg(6), tmp_path / "part", resume=True)
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    assert whole.client_state and all("residual" in s for s in whole.client_state.values())


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"privacy": {"enabled": True}}, "privacy.enabled"),
        ({"strategy": {"name": "fedavg", "robust": {"name": "median"}}}, "strategy.robust"),
        ({"strategy": {"name": "scaffold", "local_lr": 0.1}}, "scaffold"),
        ({"cohort": {"deadline_s": 3}}, "cohort.deadline_s"),
        ({"asynchronous": {"enabled": True, "concurrency": 10}}, "asynchronous.concurrency"),
    ],
)
def test_combinations_asynchronous_training_cannot_honour_are_refused(extra, field):
    base = config().to_dict()
    with pytest.raises(ConfigError, match=field):
        RunConfig.from_dict({**base, **extra})
