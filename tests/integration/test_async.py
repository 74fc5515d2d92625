"""Buffered asynchronous training (FedBuff) on a real local Ray: slow clients do not hold
fast executors up, and an executor lost mid-run costs a retried dispatch, nothing more."""

from __future__ import annotations

import os
import signal

import numpy as np

import elasticfl
from tests.integration.test_ray_runs import _executor_pid


def async_config(rounds=10, **params):
    return elasticfl.RunConfig.from_dict(
        {
            "run": {"name": "fedbuff", "seed": 5, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean", "params": params},
            "data": {"dataset": "none", "num_clients": 12},
            "executors": {"count": 2},
            "asynchronous": {"enabled": True, "buffer_size": 2, "concurrency": 3},
        }
    )


def test_slow_clients_arrive_stale_while_the_server_keeps_stepping(ray_local, tmp_path):
    config = async_config(rounds=12, sleep_s=0.03, slow_clients=[0, 1, 2, 3], slow_s=0.6)
    result = elasticfl.run(config, storage=str(tmp_path))
    assert result.ok and result.round == 12
    arrivals = [c for h in result.history for c in h["clients"] if c["status"] == "ok"]
    assert all(h["clients_ok"] == 2 for h in result.history)
    slow = [c["metrics"]["staleness"] for c in arrivals if c["client_id"] < 4]
    fast = [c["metrics"]["staleness"] for c in arrivals if c["client_id"] >= 4]
    # the server stepped on fast clients' updates while the slow ones trained
    assert slow and fast and max(slow) >= 2 and np.mean(slow) > np.mean(fast)
    dispatches = [c["metrics"]["dispatch"] for c in arrivals]
    assert len(set(dispatches)) == len(dispatches)
    assert dispatches != sorted(dispatches)  # they came back out of order


def test_an_executor_killed_mid_run_only_retries_its_dispatches(ray_local, tmp_path):
    config = async_config(rounds=10, sleep_s=0.15)
    handle = elasticfl.submit(config, storage=str(tmp_path))
    versions = handle.rounds()
    next(versions)
    os.kill(_executor_pid(ray_local, handle.run_id), signal.SIGKILL)
    for _ in versions:
        pass
    result = handle.wait()
    assert result.ok and result.round == 10
    assert result.history[-1]["executors"]["lost"] >= 1
    assert all(h["clients_ok"] == 2 for h in result.history)
    assert not [c for h in result.history for c in h["clients"] if c["status"] != "ok"]
