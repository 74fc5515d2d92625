"""Ray's autoscaler gets nodes from a real Slurm (elasticfl.runtime.slurm.provider.SlurmNodeProvider).

A one-node Slurm on this machine (slurm_fixture.SlurmCluster: Debian's packages, installed
when missing; root only, skipped otherwise) and an isolated Ray head whose autoscaler uses
the Slurm provider. A worker node is a Slurm job that `exec`s `ray start --block`.

Isolated (tests/isolated, serially): Slurm's ports are fixed, one Slurm per machine.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import ray
from ray.autoscaler.sdk import request_resources

from tests.isolated.autoscaling_cluster import wait_for
from tests.isolated.slurm_fixture import SlurmAutoscalingCluster, SlurmCluster, unavailable

SCALE_TIMEOUT_S = 90
HPC = {"CPU": 1, "hpc": 1000}  # what each Slurm job's Ray node offers (the Slurm node has 2 CPUs)


@pytest.fixture(scope="module")
def slurm():
    why = unavailable()
    if why:
        pytest.skip(f"no test Slurm here: {why}")
    with SlurmCluster(cpus=2) as s:
        yield s


@pytest.fixture(scope="module")
def cluster(slurm):
    ray.shutdown()
    c = SlurmAutoscalingCluster(
        slurm,
        head_resources={"CPU": 1},  # no "hpc": only Slurm can supply it
        worker_node_types={
            "hpc": {
                "resources": HPC,
                "labels": {"elasticfl.pool": "hpc"},
                "node_config": {"partition": "debug", "time": "30:00", "signal_lead_s": 60, "drain_timeout_s": 5},
                "min_workers": 0,
                "max_workers": 2,
            },
            # Asks Slurm for more CPUs than its one node has: sbatch accepts it, it never starts.
            "huge": {
                "resources": {"CPU": 64, "huge": 1},
                "node_config": {"partition": "debug", "time": "30:00"},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        idle_timeout_minutes=0.1,
    )
    c.start()
    try:
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _hpc_jobs(slurm):
    return [j for j in slurm.jobs() if j["name"].endswith("-hpc")]


def _wait_all_gone(cluster, slurm) -> float:
    since = time.monotonic()
    wait_for(lambda: not cluster.slurm_nodes(), SCALE_TIMEOUT_S, what="the idle Slurm nodes leave Ray")
    wait_for(lambda: not _hpc_jobs(slurm), SCALE_TIMEOUT_S, what="their Slurm jobs end")
    return time.monotonic() - since


def test_demand_for_hpc_submits_a_job_whose_node_joins_and_idles_away(cluster, slurm):
    assert not cluster.slurm_nodes() and not _hpc_jobs(slurm)
    start = time.monotonic()
    request_resources(bundles=[{"hpc": 1}])
    try:
        nodes = wait_for(cluster.slurm_nodes, SCALE_TIMEOUT_S, what="a Slurm job's node joins")
        up_s = time.monotonic() - start
        [(job_id, node)] = nodes.items()
        print(f"SLURM_METRIC demand_to_node_s={up_s:.1f}")
        assert node["Resources"]["hpc"] == 1000 and node["Resources"]["CPU"] == 1
        assert node["Labels"]["elasticfl.pool"] == "hpc"
        [job] = _hpc_jobs(slurm)
        assert job["id"] == job_id and job["state"] == "RUNNING"
        # Tags live in the job's comment (they survive an autoscaler restart).
        comment = slurm.run("squeue", "--noheader", "-j", job_id, "-o", "%k").strip()
        assert json.loads(comment)["ray-user-node-type"] == "hpc"

        # An executor (a Ray task) runs there.
        @ray.remote(num_cpus=1, resources={"hpc": 1})
        def where() -> str:
            return os.environ.get("SLURM_JOB_ID", "")

        assert ray.get(where.remote(), timeout=60) == job_id
    finally:
        request_resources(bundles=[])
    gone_s = _wait_all_gone(cluster, slurm)
    print(f"SLURM_METRIC idle_node_gone_s={gone_s:.1f}")
    assert "cancelling job(s) " + job_id in cluster.monitor_log()


def _hpc_config(rounds: int, min_executors: int, sleep_s: float = 0.0, **executors):
    import elasticfl
    from tests.conftest import noisy_config

    base = noisy_config(rounds=rounds, clients=8, per_round=8, sleep_s=sleep_s).to_dict()
    return elasticfl.RunConfig.from_dict(
        {
            **base,
            "executors": {**base["executors"], "count": None, "placement_timeout_s": SCALE_TIMEOUT_S, **executors},
            "pools": {"hpc": {"resources": {"hpc": 1}, "min": min_executors, "max": 2}},
        }
    )


def _reference(config, tmp_path) -> str:
    from elasticfl.checkpoint import CheckpointStore
    from elasticfl.controller import Controller
    from elasticfl.worker import InProcessPool

    c = Controller(config, "ref", InProcessPool(config), CheckpointStore(str(tmp_path / "ref"), "ref"))
    c.run()
    return c.status()["weights_sha256"]


def test_a_run_gets_its_hpc_pool_from_slurm_and_the_jobs_end_after(cluster, slurm, tmp_path):
    import elasticfl

    assert not cluster.slurm_nodes()
    config = _hpc_config(rounds=3, min_executors=0)
    result = elasticfl.run(config, storage=str(tmp_path / "runs"), address=cluster.address)
    assert result.ok, result.error
    ran_on = {c["node_id"] for r in result.history for c in r["clients"]}
    slurm_nodes = {n["NodeID"] for n in cluster.slurm_nodes().values()}
    assert ran_on and ran_on <= slurm_nodes  # every client ran on a node a Slurm job started
    _wait_all_gone(cluster, slurm)


@pytest.mark.parametrize(
    "how",
    [
        # What Slurm does at the --signal warning before the time limit: SIGTERM to the batch
        # shell only, which is `ray start` (exec): Ray drains the node, then leaves.
        "signal_batch",
        # A plain scancel (or preemption): SIGTERM to every process of the job at once.
        "scancel",
    ],
)
def test_slurm_taking_a_node_mid_run_moves_the_work_and_changes_no_result(cluster, slurm, tmp_path, how):
    import elasticfl

    assert not cluster.slurm_nodes()
    config = _hpc_config(rounds=10, min_executors=2, sleep_s=0.25, max_unit_retries=0)  # a failure would show
    # Two Slurm nodes before the run starts (on 2 busy cores a node may take 5-20 s to join).
    request_resources(bundles=[{"CPU": 1, "hpc": 1}] * 2)
    wait_for(lambda: len(cluster.slurm_nodes()) == 2, SCALE_TIMEOUT_S, what="two Slurm nodes join")
    handle = elasticfl.submit(config, storage=str(tmp_path / "runs"), address=cluster.address)
    try:
        rounds = handle.rounds()
        for record in rounds:
            if record["round"] >= 2 and record["executors"]["ready"] == 2:
                break
        nodes = wait_for(lambda: len(cluster.slurm_nodes()) == 2 and cluster.slurm_nodes(), 30, what="two nodes")
        busy = {c["node_id"] for c in record["clients"]}
        victim = sorted(job for job, node in nodes.items() if node["NodeID"] in busy)[0]
        victim_node = nodes[victim]["NodeID"]
        cancelled_at = time.monotonic()
        if how == "signal_batch":
            slurm.run("scancel", "--batch", "--signal=TERM", victim)
        else:
            slurm.run("scancel", victim)
        # The work resumes elsewhere: the first round after the signal without the victim's node.
        resumed_s = None
        for record in rounds:
            if victim_node not in {c["node_id"] for c in record["clients"]}:
                resumed_s = time.monotonic() - cancelled_at
                break
        result = handle.wait()
    finally:
        request_resources(bundles=[])
    debug = [(r["round"], r["duration_s"], r["unit_retries"], r["executors"]) for r in result.history]
    print(f"SLURM_DEBUG {how}", *debug, sep="\n  ")
    assert result.ok and all(r["clients_ok"] == 8 for r in result.history), debug
    executors = result.history[-1]["executors"]
    print(f"SLURM_METRIC {how}_to_resumed_round_s={resumed_s} executors={executors}")
    assert resumed_s is not None, debug
    assert result.weights_sha256 == _reference(config, tmp_path)  # as if nothing had happened
    # drained for preemption (signal to the batch shell) or shut down by SIGTERM (scancel):
    # either way the node went on purpose, and its losses are preemptions
    assert executors["lost"] >= 1 and executors["preempted"] == executors["lost"], debug
    _wait_all_gone(cluster, slurm)


def test_a_job_slurm_can_never_start_is_reported_and_cancelled(cluster, slurm):
    request_resources(bundles=[{"huge": 1}])
    try:
        wait_for(lambda: "pending reason PartitionConfig" in cluster.monitor_log(), 60,
                 what="the provider reports the unschedulable job")  # fmt: skip
    finally:
        request_resources(bundles=[])
    failures = [json.loads(line) for line in open(os.path.join(cluster.state_dir, "failures.jsonl"))]
    assert failures[0]["node_type"] == "huge" and "PartitionConfig" in failures[0]["reason"]
    wait_for(lambda: not [j for j in slurm.jobs() if j["name"].endswith("-huge")], 30, what="the job is cancelled")
    assert "Cancelled; no new huge jobs" in cluster.monitor_log()
