"""Node pools on a multi-node Ray on this machine (ray.cluster_utils): clients pinned to
a pool, preference lists that fall back, a pool no node can hold, a node drained for
preemption. One cluster for the module; nodes a test adds, it removes."""

from __future__ import annotations

import time

import pytest

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller
from elasticfl.worker import InProcessPool
from tests.conftest import drain_for_preemption, lose_machine, noisy_config


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared single-node Ray, if a test before started it
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,  # the controller's; it asks for no CPU, executors never fit a pool here
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    c.hpc = c.add_node(num_cpus=1, labels={"elasticfl.pool": "hpc"})  # a Slurm-joined node, say
    c.cloud = c.add_node(num_cpus=1, resources={"cloud": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="elasticfl", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def pooled(config, pools, clients, **executors):
    return elasticfl.RunConfig.from_dict(
        {**config.to_dict(), "pools": pools, "clients": clients,
         "executors": {**config.to_dict()["executors"], "count": None, **executors}}
    )


def reference(config, tmp_path):
    c = Controller(config, "ref", InProcessPool(config), CheckpointStore(str(tmp_path / "ref"), "ref"))
    c.run()
    return c.status()["weights_sha256"]


def where(history):
    """client id -> {(pool, node id)} it ran on, over the run."""
    seen: dict[int, set] = {}
    for record in history:
        for client in record["clients"]:
            seen.setdefault(client["client_id"], set()).add((client.get("pool"), client["node_id"]))
    return seen


def test_pinned_clients_run_only_in_their_pool_and_preferences_fall_back(cluster, tmp_path):
    config = pooled(
        noisy_config(rounds=3, clients=12, per_round=8),
        pools={
            "hpc": {"labels": {"elasticfl.pool": "hpc"}},  # placed by node label
            "gpu": {"resources": {"gpu_site": 1}},  # no such node: its clients fall back
            "cloud": {"resources": {"cloud": 1}},  # placed by custom resource
        },
        clients=[{"ids": "0-5", "pool": "hpc"}, {"ids": "6-11", "pool": ["gpu", "cloud"]}],
    )
    result = elasticfl.run(config, storage=str(tmp_path / "runs"))
    assert result.ok
    seen = where(result.history)
    assert all(seen[c] == {("hpc", cluster.hpc.node_id)} for c in seen if c < 6), seen
    assert all(seen[c] == {("cloud", cluster.cloud.node_id)} for c in seen if c >= 6), seen
    assert result.history[-1]["executors"]["pools"]["gpu"] == {"ready": 0, "starting": 1}
    # where clients ran never changes the bits
    assert result.weights_sha256 == reference(config, tmp_path)


def test_a_pool_no_node_can_hold_is_named_instead_of_waited_on(cluster, tmp_path):
    config = pooled(
        noisy_config(rounds=1, clients=12, per_round=12),
        pools={"cloud": {"resources": {"cloud": 1}}, "site_b": {"resources": {"site_b": 1}}},
        clients=[{"ids": "0-3", "pool": "site_b"}],
        placement_timeout_s=3,
    )
    started = time.monotonic()
    with pytest.raises(elasticfl.RunFailedError, match=r"clients \[0, 1, 2, 3\] may only run in pool\(s\) \['site_b'\]"):
        elasticfl.run(config, storage=str(tmp_path / "runs"))
    assert time.monotonic() - started < 60


def test_a_node_drained_for_preemption_loses_nothing(cluster, tmp_path):
    spot = [cluster.add_node(num_cpus=1, resources={"spot": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        config = pooled(
            noisy_config(rounds=8, clients=12, per_round=12, sleep_s=0.1),
            pools={"spot": {"resources": {"spot": 1}, "min": 2}},
            clients=[],
            max_unit_retries=0,  # a single failure would show: preemption has its own budget
        )
        handle = elasticfl.submit(config, storage=str(tmp_path / "runs"))
        rounds = handle.rounds()
        for record in rounds:
            if record["round"] >= 2:
                break
        drain_for_preemption(cluster.address, spot[0].node_id, deadline_s=1, message="spot instance reclaimed")
        time.sleep(1)
        lose_machine(cluster, spot[0])  # the deadline passed: the VM is gone
        spot.append(cluster.add_node(num_cpus=1, resources={"spot": 1}))  # a new spot node
        result = handle.wait()
    finally:
        for node in spot[1:]:
            cluster.remove_node(node)

    debug = [(r["round"], r["duration_s"], r["unit_retries"], r["executors"]) for r in result.history]
    assert result.ok and all(r["clients_ok"] == 12 for r in result.history), debug
    executors = result.history[-1]["executors"]
    assert executors["lost"] >= 1 and executors["preempted"] == executors["lost"], debug
    late_rounds = [r for r in result.history if r["round"] > 3]
    assert all(spot[0].node_id not in {c["node_id"] for c in r["clients"]} for r in late_rounds)
    assert result.weights_sha256 == reference(config, tmp_path)  # as if nothing had happened


def test_a_node_shut_down_with_sigterm_is_a_preemption(cluster, tmp_path):
    """A Slurm job's end or `scancel` sends SIGTERM to every process of the job at once: no
    drain, but the node goes on purpose, and Ray records it so."""
    import os
    import signal

    spot = [cluster.add_node(num_cpus=1, resources={"batch": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        config = pooled(
            noisy_config(rounds=8, clients=12, per_round=12, sleep_s=0.1),
            pools={"batch": {"resources": {"batch": 1}, "min": 2}},
            clients=[],
            max_unit_retries=0,
        )
        handle = elasticfl.submit(config, storage=str(tmp_path / "runs"))
        for record in handle.rounds():
            if record["round"] >= 2:
                break
        os.kill(spot[0].all_processes["raylet"][0].process.pid, signal.SIGTERM)
        spot.append(cluster.add_node(num_cpus=1, resources={"batch": 1}))
        result = handle.wait()
    finally:
        for node in spot:
            try:
                cluster.remove_node(node)
            except Exception:  # the SIGTERMed one is gone already
                pass

    debug = [(r["round"], r["unit_retries"], r["executors"]) for r in result.history]
    assert result.ok and all(r["clients_ok"] == 12 for r in result.history), debug
    executors = result.history[-1]["executors"]
    assert executors["lost"] >= 1 and executors["preempted"] == executors["lost"], debug
    assert result.weights_sha256 == reference(config, tmp_path)
