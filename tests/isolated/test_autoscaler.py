"""Ray's own (v1) autoscaler, with fake nodes on this machine, adds a "cloud" node on demand
and removes it once idle. Raw Ray only: what elasticfl's pool relies on when it calls
request_resources().

Isolated (tests/isolated runs in its own pytest process, after the main suite, one test at a
time): the autoscaler's nodes are real Ray processes that take seconds to come and go, and
a cluster must not share this process with the main suite's ray.init().
"""

from __future__ import annotations

import time

import pytest
import ray
from ray.autoscaler.sdk import request_resources

from tests.isolated.autoscaling_cluster import FakeAutoscalingCluster, processes_naming, wait_for

# Measured on 2 shared cores: a node joins 2.5-5 s after the demand, and leaves 3-7 s after it
# goes (the idle timeout counts from the node's last use). 90 s leaves room for a loaded machine.
SCALE_TIMEOUT_S = 90
CLOUD = {"CPU": 1, "cloud": 1}


@pytest.fixture(scope="module")
def cluster():
    ray.shutdown()  # a driver left connected elsewhere would be the wrong cluster
    c = FakeAutoscalingCluster(
        head_resources={"CPU": 1},  # no "cloud": only the autoscaler can supply it
        worker_node_types={"cloud": {"resources": CLOUD, "node_config": {}, "min_workers": 0, "max_workers": 2}},
        idle_timeout_minutes=0.1,  # 6 s, so that the tests need not wait long for a scale-down
    )
    c.start()
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()  # raises if any of its processes outlive it


def _cloud_nodes(cluster):
    return cluster.nodes_with("cloud")


def _wait_gone(cluster) -> None:
    since = time.monotonic()
    wait_for(lambda: not _cloud_nodes(cluster), SCALE_TIMEOUT_S, what="the idle cloud node is removed")
    print(f"cloud node removed {time.monotonic() - since:.1f}s after its last demand went")


def test_request_resources_adds_a_node_and_clearing_it_removes_the_node(cluster):
    assert not _cloud_nodes(cluster)
    start = time.monotonic()
    request_resources(bundles=[CLOUD])
    try:
        [node] = wait_for(lambda: _cloud_nodes(cluster), SCALE_TIMEOUT_S, what="a cloud node joins")
        print(f"cloud node up {time.monotonic() - start:.1f}s after request_resources")
        assert node["Resources"]["cloud"] == 1
        # The driver's view of the cluster's totals includes it too (nothing more to wait for).
        assert ray.cluster_resources().get("cloud") == 1
        # The node's processes are this cluster's, as shutdown() will find them.
        assert processes_naming(cluster.temp_dir) <= set(cluster.pids())
    finally:
        request_resources(bundles=[])
    _wait_gone(cluster)


def test_a_pending_actor_alone_adds_a_node_that_goes_once_the_actor_is_killed(cluster):
    assert not _cloud_nodes(cluster)

    @ray.remote(num_cpus=1, resources={"cloud": 1})
    class Where:
        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

    start = time.monotonic()
    actor = Where.remote()  # pending: no node offers "cloud", and no request_resources
    try:
        node_id = ray.get(actor.node_id.remote(), timeout=SCALE_TIMEOUT_S)
        print(f"actor ran {time.monotonic() - start:.1f}s after it was created")
        assert node_id in {n["NodeID"] for n in _cloud_nodes(cluster)}
    finally:
        ray.kill(actor)
    _wait_gone(cluster)


def test_a_run_asks_the_autoscaler_for_its_pool_and_lets_the_nodes_go(cluster, tmp_path):
    """elasticfl's pool: a pool no node can hold yet gets nodes from the autoscaler; when
    the run ends, its request is withdrawn and the idle nodes are removed."""
    import elasticfl
    from tests.conftest import noisy_config

    assert not _cloud_nodes(cluster)
    base = noisy_config(rounds=3, clients=8, per_round=8).to_dict()
    config = elasticfl.RunConfig.from_dict(
        {
            **base,
            "executors": {**base["executors"], "count": None, "placement_timeout_s": SCALE_TIMEOUT_S},
            "pools": {"cloud": {"resources": {"cloud": 1}, "max": 2}},
        }
    )
    result = elasticfl.run(config, storage=str(tmp_path / "runs"), address=cluster.address)
    assert result.ok, result.error
    cloud = {n["NodeID"] for n in cluster.alive_nodes() if "cloud" in n["Resources"]}
    ran_on = {c["node_id"] for r in result.history for c in r["clients"]}
    assert ran_on and ran_on <= cloud  # every client ran on a node the autoscaler started
    _wait_gone(cluster)
