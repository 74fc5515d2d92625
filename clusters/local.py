"""The fake multi-node cluster of clusters/local.yaml, as Ray node arguments.

    from clusters.local import load_local_cluster, start_local_cluster
    cluster = start_local_cluster()          # head + one raylet per worker, on this machine
    ray.init(address=cluster.address)
    ...
    cluster.shutdown()

`load_local_cluster` only reads the YAML (no Ray), so unit tests can check it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LOCAL_YAML = Path(__file__).with_name("local.yaml")


def _node_args(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "num_cpus": int(node.get("num_cpus", 1)),
        "resources": {k: float(v) for k, v in (node.get("resources") or {}).items()},
        "labels": {str(k): str(v) for k, v in (node.get("labels") or {}).items()},
    }


def load_local_cluster(path: str | Path = LOCAL_YAML) -> dict[str, Any]:
    """{"head": node args, "workers": {name: node args}} for ray.cluster_utils.Cluster.add_node."""
    spec = yaml.safe_load(Path(path).read_text())
    workers = {w["name"]: _node_args(w) for w in spec.get("workers") or []}
    return {"head": _node_args(spec["head"]), "workers": workers}


def start_local_cluster(path: str | Path = LOCAL_YAML):
    """Start the described nodes on this machine; returns the ray.cluster_utils.Cluster."""
    from ray.cluster_utils import Cluster

    spec = load_local_cluster(path)
    cluster = Cluster(initialize_head=True, head_node_args=spec["head"])
    for args in spec["workers"].values():
        cluster.add_node(**args)
    cluster.wait_for_nodes()
    return cluster
