"""FakeAutoscalingCluster.shutdown() ends its own cluster's processes and no one else's:
other Ray clusters on the machine (other engineers', CI jobs) must survive it, which
``ray stop --force`` would not allow. (test_autoscaler checks the fake worker nodes'
processes are found too.)

Isolated (tests/isolated runs in its own pytest process after the main suite): it starts
Ray clusters of its own.
"""

from __future__ import annotations

import os

import pytest
from ray.cluster_utils import Cluster

from tests.isolated.autoscaling_cluster import FakeAutoscalingCluster, processes_naming


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped
    except OSError:
        return False


@pytest.fixture
def bystander():
    """Someone else's Ray: started in-process, so its processes lack the harness's marker."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    yield [p.process.pid for procs in c.head_node.all_processes.values() for p in procs]
    c.shutdown()


def test_shutdown_ends_this_cluster_only(bystander):
    assert bystander and all(map(_alive, bystander))
    cluster = FakeAutoscalingCluster({"CPU": 1}, {}).start()
    temp_dir = cluster.temp_dir
    try:
        ours = set(cluster.pids())
        assert processes_naming(temp_dir) <= ours  # the marker reached every process of the head
        assert not ours & set(bystander)
    finally:
        cluster.shutdown()
    assert not any(map(_alive, ours)) and not processes_naming(temp_dir)
    assert not os.path.exists(temp_dir)
    assert all(map(_alive, bystander))
