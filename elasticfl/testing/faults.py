"""Faults for a multi-node Ray on one machine (ray.cluster_utils.Cluster): a machine lost
without notice, and a preemption notice. Shared by the tests and benchmarks/chaos.py."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = ["lose_machine", "drain_for_preemption"]


def lose_machine(cluster: Any, node: Any) -> None:
    """A node's machine is gone: every process on it dies at once, workers included
    (Cluster.remove_node alone leaves the raylet's worker processes to notice later)."""
    raylets = [p.process.pid for p in node.all_processes["raylet"]]
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    doomed, frontier = set(), list(raylets)
    while frontier:
        pid = frontier.pop()
        doomed.add(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid and child not in doomed)
    for pid in doomed - set(raylets):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)


def drain_for_preemption(gcs_address: str, node_id: str, deadline_s: float, message: str = "preempted") -> None:
    """What a spot notice or a Slurm job's end sends (`ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION`): the node goes away in ``deadline_s`` seconds."""
    import ray
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=gcs_address)
    accepted, why = gcs.drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        message,
        time.time_ns() // 1_000_000 + int(deadline_s * 1000),
    )
    if not accepted:
        raise RuntimeError(f"Ray refused to drain node {node_id}: {why}")
