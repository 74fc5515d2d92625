"""Chaos benchmark: kill random worker nodes during a multi-node run and compare it with a fault-free one.

    .venv/bin/python benchmarks/chaos.py                       # 3 worker nodes, 3 faults, seed 0
    .venv/bin/python benchmarks/chaos.py --seed 1 --out chaos.json
    .venv/bin/python benchmarks/chaos.py --graceful            # drain (preemption notice) before each kill

Starts a ray.cluster_utils.Cluster on this machine (a head, where the controller
asks to run, and worker nodes with a "pool" resource that hold the executors),
runs one config twice on it: fault-free, then with a seeded chaos monkey that
kills a random worker node (the whole machine: raylet and every process under
it) every --interval seconds and adds a fresh node --replace-after seconds
later. Reports rounds completed, units retried, executors lost (and replaced), controller
restarts, time lost per fault, and whether the final weights are bit-identical.
Exit status 1 if the chaos run did not complete or its weights differ.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import elasticfl  # noqa: E402
from elasticfl.testing.faults import drain_for_preemption, lose_machine  # noqa: E402

NAMESPACE = "elasticfl-chaos"
WORKER = {"num_cpus": 1, "resources": {"pool": 1}}


def make_config(args) -> elasticfl.RunConfig:
    """A deterministic workload whose executors only fit on the worker nodes."""
    if args.workload == "noisy":
        # numpy, sleep-bound: 60 clients x sleep_s spread over the executors, so the
        # round time is set by the sleep, not by CPU contention on a small machine.
        task = {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean", "params": {"sleep_s": args.sleep}}
        data = {"dataset": "none", "num_clients": 120}
        cohort = {"clients_per_round": 60}
    else:
        # digits: the built-in torch MLP, real (CPU-bound) training; ~14 rows a client, so
        # many local epochs to make a round last about a second here.
        task = {"type": "classification", "epochs": 40, "lr": 0.05}
        data = {"dataset": "digits", "num_clients": 100, "partition": {"name": "dirichlet"}}
        cohort = {"clients_per_round": 100}
    return elasticfl.RunConfig.from_dict({
        "run": {"name": f"chaos-{args.workload}", "seed": 7, "rounds": args.rounds},
        "task": task,
        "data": data,
        "cohort": cohort,
        # Units of 5 clients (12 or 20 a round): several per executor, so a fault loses part of a round.
        "executors": {"count": args.workers, "unit_size": 5, "resources": {"pool": 1},
                      "max_unit_retries": 5, "placement_timeout_s": 120},
        "checkpoint": {"every": 1, "keep_last": 2},
        "cluster": {"namespace": NAMESPACE},
    })


# -- faults ----------------------------------------------------------------------------
def drain(cluster: Cluster, node, deadline_s: float) -> tuple[bool, str]:
    """Ray's preemption notice (what `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` sends)."""
    try:
        drain_for_preemption(cluster.gcs_address, node.node_id, deadline_s, "chaos")
    except RuntimeError as exc:
        return False, str(exc)
    return True, ""


class ChaosMonkey:
    """Fault i strikes about i x interval s after round 1 (seeded jitter of +-25%): a random
    worker node is killed, and a fresh one is added replace_after s later.

    Runs on the main thread: Cluster.add_node installs signal handlers, which Python allows only there.
    """

    def __init__(self, cluster: Cluster, args) -> None:
        self.cluster, self.args = cluster, args
        self.progress: dict = {}  # the run's progress, shared by one_run
        self.rng = random.Random(args.seed)
        self.faults: list[dict] = []
        self.error: str | None = None

    def run(self, done: threading.Event) -> None:
        start = time.time()
        try:
            for i in range(self.args.faults):
                at = start + self.args.interval * (i + self.rng.uniform(0.75, 1.25))
                if done.wait(max(0.0, at - time.time())):
                    return
                self._fault(done)
        except Exception as exc:  # report it; the run itself goes on
            self.error = f"{type(exc).__name__}: {exc}"

    def _elapsed(self) -> float:
        return round(time.time() - self.progress["t0"], 2)

    def _fault(self, done: threading.Event) -> None:
        a = self.args
        nodes = sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)
        victim = self.rng.choice(nodes)
        fault = {"node_id": victim.node_id, "at_s": self._elapsed(), "round_in_flight": self.progress["round"] + 1,
                 "controller_was_there": victim.node_id == self.progress.get("controller_node")}
        if a.graceful:
            accepted, why = drain(self.cluster, victim, a.drain_deadline)
            fault["drain_accepted"], fault["drain_message"] = accepted, why
            time.sleep(a.drain_deadline)  # the preemption lands at the deadline
        fault["round_at_kill"] = self.progress["round"] + 1
        lose_machine(self.cluster, victim)
        fault["killed_at_s"] = self._elapsed()
        self.faults.append(fault)
        print(f"  chaos: killed node {victim.node_id[:8]} at {fault['killed_at_s']} s "
              f"(round {fault['round_at_kill']} in flight)", flush=True)
        if done.wait(a.replace_after):
            return
        joined = self.cluster.add_node(**WORKER)  # a spot replacement / a Slurm job joining
        fault["replacement"], fault["replaced_at_s"] = joined.node_id, self._elapsed()
        print(f"  chaos: node {joined.node_id[:8]} joined at {fault['replaced_at_s']} s", flush=True)


def _lost(executors: dict) -> int:
    """Executors lost so far by the pool (older elasticfl versions call it "replaced")."""
    return executors.get("lost", executors.get("replaced", 0))


def _count(history: list[dict], counter) -> int:
    """Sum a pool counter over a run: a restarted controller's new pool starts again from 0."""
    total = prev = 0
    for record in history:
        cur = counter(record["executors"])
        total, prev = total + (cur - prev if cur >= prev else cur), cur
    return total


def _actor_node(handle) -> str | None:
    """The node the run's controller actor lives on now (the GCS's actor table)."""
    try:
        return ray._private.state.actors(handle._actor._actor_id.hex())["Address"]["NodeID"]
    except Exception:
        return None


def cluster_head_id() -> str:
    return next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])


# -- one run ---------------------------------------------------------------------------
def one_run(config, storage: str, timeout_s: float, monkey: ChaosMonkey | None = None) -> dict:
    """Submit and follow the rounds on a thread; the monkey (if any) strikes from round 1 on.
    Times are seconds since submit (wall clock, which the controller's records use too)."""
    progress = {"round": 0, "t0": time.time()}
    first_round, done = threading.Event(), threading.Event()
    outcome: dict = {}

    def on_round(record):
        progress["round"] = record["round"]
        progress["controller_node"] = node = _actor_node(outcome["handle"])
        if "controller_nodes" not in progress or progress["controller_nodes"][-1] != node:
            progress.setdefault("controller_nodes", []).append(node)
        e = record["executors"]
        print(f"  round {record['round']:3d}  {record['duration_s']:6.2f} s  retries {record['unit_retries']}  "
              f"executors {e['ready']}/{e['executors']} lost {_lost(e)}", flush=True)
        first_round.set()  # faults hit training, not start-up

    def follow():
        try:
            outcome["handle"] = handle = elasticfl.submit(config, storage=storage)
            outcome["run_id"] = handle.run_id
            outcome["result"] = handle.wait(on_round)
        except Exception as exc:
            outcome["exception"] = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            first_round.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    if monkey is not None:
        monkey.progress = progress
        first_round.wait(timeout_s)
        monkey.run(done)
    t0 = progress["t0"]
    follower.join(max(0.0, timeout_s - (time.time() - t0)))  # a hung run is a finding, not a wait forever
    wall = time.time() - t0
    head = cluster_head_id()
    nodes = progress.get("controller_nodes", [])
    out: dict = {"run_id": outcome.get("run_id"), "wall_s": round(wall, 2), "hung": follower.is_alive(),
                 "exception": outcome.get("exception"),
                 # where the controller ran (it asks for the head, softly): one entry per placement
                 "controller_nodes": ["head" if n == head else n for n in nodes],
                 "controller_restarts": max(0, len(nodes) - 1)}
    if monkey is not None:
        out["faults"] = monkey.faults
        out["monkey_error"] = monkey.error
    result = outcome.get("result")
    if result is None:
        out.update(state="hung" if follower.is_alive() else "error", rounds_completed=progress["round"])
        return out
    h = result.history
    ends = [r["started_at"] + r["duration_s"] for r in h]
    lost, preempted = _count(h, _lost), _count(h, lambda e: e.get("preempted", 0))
    median = statistics.median(r["duration_s"] for r in h) if h else None
    out.update(
        state=result.state, error=result.error, rounds_completed=result.round,
        span_s=round(ends[-1] - h[0]["started_at"], 2) if h else None,  # round 1 start to last round end
        median_round_s=round(median, 3) if h else None,
        max_round_s=round(max(r["duration_s"] for r in h), 3) if h else None,
        units_retried=sum(r["unit_retries"] for r in h),
        executors_lost=lost,
        executors_lost_as_preempted=preempted,
        clients_ok_min=min(r["clients_ok"] for r in h) if h else None,
        clients_not_ok=sum(r["clients_failed"] + r.get("clients_late", 0) for r in h),
        resumed_from=result.resumed_from,
        weights_sha256=result.weights_sha256,
        # the rounds a fault hit: when (since submit), how long, where the time went
        slow_rounds=[{"round": r["round"], "start_s": round(r["started_at"] - t0, 2),
                      "duration_s": round(r["duration_s"], 2), "retries": r["unit_retries"],
                      "phases_s": {k: round(v, 2) for k, v in r["phases_s"].items()},
                      "executors": {k: v for k, v in r["executors"].items() if k not in ("nodes", "pools")}}
                     for r in h if r["duration_s"] > 1.3 * median],
        durations_s=[round(r["duration_s"], 3) for r in h],
        # each round's wall time from the end of the one before: gaps (a controller restart) included
        round_wall_s=[round(b - a, 3) for a, b in zip([h[0]["started_at"]] + ends, ends)],
        round_end_s=[round(e - t0, 2) for e in ends],
        # node id -> the rounds in which some client trained there
        node_rounds={n: sorted({r["round"] for r in h if any(c["node_id"] == n for c in r["clients"])})
                     for n in {c["node_id"] for r in h for c in r["clients"]}},
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=3, help="worker nodes (and executors), each 1 CPU + pool:1")
    ap.add_argument("--workload", choices=["noisy", "digits"], default="noisy")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--sleep", type=float, default=0.05, help="noisy: seconds per client (60 clients per round)")
    ap.add_argument("--faults", type=int, default=3, help="nodes to kill in the chaos run")
    ap.add_argument("--interval", type=float, default=10.0, help="mean seconds between faults (+-25%%, seeded)")
    ap.add_argument("--replace-after", type=float, default=3.0, help="seconds from a kill to the fresh node's start")
    ap.add_argument("--graceful", action="store_true", help="drain each node (preemption) before killing it")
    ap.add_argument("--drain-deadline", type=float, default=5.0, help="seconds between the drain and the kill")
    ap.add_argument("--seed", type=int, default=0, help="seeds the monkey: which node, when")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on a run after this many seconds")
    ap.add_argument("--out", help="write the JSON result here")
    args = ap.parse_args()

    t_start = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1,  # no "pool": no executor here; the controller asks for the head (soft affinity)
        "include_dashboard": False,
        # Detect a dead node in ~1.5 s, as the multi-node tests do (Ray's default is ~15 s+).
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
    })
    for _ in range(args.workers):
        cluster.add_node(**WORKER)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    config = make_config(args)
    report: dict = {"args": vars(args), "session_dir": session_dir}
    try:
        with tempfile.TemporaryDirectory(prefix="elasticfl-chaos-") as storage:
            print("fault-free run", flush=True)
            report["fault_free"] = one_run(config, storage, args.timeout)
            print("chaos run", flush=True)
            report["chaos"] = one_run(config, storage, args.timeout, ChaosMonkey(cluster, args))
    finally:
        ray.shutdown()
        cluster.shutdown()
    base, chaos = report["fault_free"], report["chaos"]
    faults = len(chaos.get("faults", []))
    completed = base.get("state") == "completed" and chaos.get("state") == "completed"
    if completed:
        for fault, lost in zip(chaos["faults"], _lost_per_fault(base, chaos)):
            fault["lost_s"] = lost
            # after a drain notice, was the node still given work? (and none after its death)
            fault["rounds_on_node_after_notice"] = [
                r for r in chaos["node_rounds"].get(fault["node_id"], []) if r >= fault["round_in_flight"]]
    report["summary"] = {
        "completed": completed,
        "weights_match": completed and base["weights_sha256"] == chaos["weights_sha256"],
        "faults": faults,
        "time_lost_per_fault_s": round((chaos["span_s"] - base["span_s"]) / faults, 2) if completed and faults else None,
        "total_s": round(time.monotonic() - t_start, 1),
    }
    _print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["summary"]["weights_match"] else 1


def _lost_per_fault(base: dict, chaos: dict) -> list[float]:
    """Each round's wall time beyond the fault-free median, charged to the first fault that
    struck during the round, else to the last one before it (a rough split of the total)."""
    typical = statistics.median(base["round_wall_s"])
    kills = [f["killed_at_s"] for f in chaos["faults"]]
    lost = [0.0] * len(kills)
    for wall, end in zip(chaos["round_wall_s"], chaos["round_end_s"]):
        during = [i for i, k in enumerate(kills) if end - wall < k <= end]
        before = [i for i, k in enumerate(kills) if k <= end - wall]
        if during or before:
            lost[during[0] if during else before[-1]] += wall - typical
    return [round(x, 2) for x in lost]


def _print_table(report: dict) -> None:
    base, chaos, s = report["fault_free"], report["chaos"], report["summary"]
    rows = [("state", "state"), ("rounds completed", "rounds_completed"), ("wall s (submit to result)", "wall_s"),
            ("span s (round 1 to end)", "span_s"), ("median round s", "median_round_s"),
            ("max round s", "max_round_s"), ("units retried", "units_retried"),
            ("executors lost", "executors_lost"), ("  of them as preempted", "executors_lost_as_preempted"),
            ("controller restarts", "controller_restarts"),
            ("controller resumed from", "resumed_from"),
            ("min clients ok a round", "clients_ok_min"), ("client updates missing", "clients_not_ok"),
            ("controller nodes", "controller_nodes"),
            ("weights sha256", "weights_sha256")]
    print(f"\n{'':28s} {'fault-free':>14s} {'chaos':>14s}")
    for label, key in rows:
        a, b = base.get(key), chaos.get(key)
        if key == "weights_sha256":
            a, b = (a or "-")[:12], (b or "-")[:12]
        if key == "controller_nodes":
            a, b = (",".join(n if n == "head" else n[:8] for n in x or []) for x in (a, b))
        print(f"{label:28s} {str(a):>14s} {str(b):>14s}")
    for f in chaos.get("faults", []):
        print(f"  fault at {f['killed_at_s']:6.1f} s, round {f['round_at_kill']:3d}: node {f['node_id'][:8]}"
              f"{' (the controller was there)' if f['controller_was_there'] else ''}, replacement joined at "
              f"{f.get('replaced_at_s', '-')} s, lost ~{f.get('lost_s', '-')} s")
    print(f"\nfaults injected: {s['faults']}   time lost per fault: {s['time_lost_per_fault_s']} s   "
          f"weights match: {s['weights_match']}   total: {s['total_s']} s")
    for err in (base.get("exception"), base.get("error"), chaos.get("exception"), chaos.get("error"),
                chaos.get("monkey_error")):
        if err:
            print("error:", err)


if __name__ == "__main__":
    sys.exit(main())
