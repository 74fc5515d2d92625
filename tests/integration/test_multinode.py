"""Several Ray nodes on this machine (ray.cluster_utils): placement by resources,
a node lost mid-round, a node that joins. Each test builds its own small cluster."""

from __future__ import annotations

import pytest

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller
from elasticfl.worker import InProcessPool
from tests.conftest import lose_machine, noisy_config


@pytest.fixture
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared single-node Ray, if a test before started it
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    ray.init(address=c.address, namespace="elasticfl", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _clients_by_node(history):
    seen: dict[str, set[int]] = {}
    for record in history:
        for client in record["clients"]:
            seen.setdefault(client["node_id"], set()).add(record["round"])
    return seen


def _reference(config, tmp_path):
    c = Controller(config, "ref", InProcessPool(config), CheckpointStore(str(tmp_path / "ref"), "ref"))
    c.run()
    return c.status()["weights_sha256"]


def test_executors_run_only_on_nodes_with_their_resources(cluster, tmp_path):
    site_a = cluster.add_node(num_cpus=2, resources={"site_a": 2})
    cluster.add_node(num_cpus=2, resources={"site_b": 2})
    cluster.wait_for_nodes()
    config = noisy_config(rounds=2).with_overrides(executors={"resources": {"site_a": 1}, "count": 2})
    result = elasticfl.run(config, storage=str(tmp_path / "runs"))
    assert result.ok
    assert set(_clients_by_node(result.history)) == {site_a.node_id}  # the history names the node


def test_a_node_lost_mid_round_and_one_that_joins(cluster, tmp_path):
    doomed = cluster.add_node(num_cpus=1, resources={"pool": 1})
    cluster.add_node(num_cpus=1, resources={"pool": 1})
    cluster.wait_for_nodes()
    # enough rounds after the join for a new executor to start even on a loaded machine
    config = noisy_config(rounds=30, clients=12, per_round=12, sleep_s=0.05).with_overrides(
        executors={"resources": {"pool": 1}, "count": 2, "placement_timeout_s": 60}
    )
    handle = elasticfl.submit(config, storage=str(tmp_path / "runs"))
    rounds = handle.rounds()
    for record in rounds:
        if record["round"] >= 2:
            break
    lose_machine(cluster, doomed)  # a spot node gone, mid-round
    for record in rounds:
        if record["round"] >= 4:
            break
    joined = cluster.add_node(num_cpus=1, resources={"pool": 1})  # a new node (a Slurm job, say)
    result = handle.wait()

    debug = [(r["round"], r["unit_retries"], r["executors"], round(r["duration_s"], 2)) for r in result.history]
    assert result.ok and all(r["clients_ok"] == 12 for r in result.history), debug  # every client, every round
    # Survived by replacing the lost executor; the controller, on the head, never noticed.
    assert result.history[-1]["executors"]["lost"] >= 1 and result.resumed_from is None, debug
    by_node = _clients_by_node(result.history)
    assert max(by_node[doomed.node_id]) <= 3  # nothing ran there after it died
    assert joined.node_id in by_node  # the replacement executor was placed on the new node and used
    assert result.weights_sha256 == _reference(config, tmp_path)  # as if nothing had happened
