"""Side-by-side benchmark: elasticfl, a plain sequential loop, and a peer (Flower) in one run.

    .venv/bin/python benchmarks/run.py --workload W1 --peer flower
    .venv/bin/python benchmarks/run.py --workload W3 --registered 10000   # round cost vs population

Prints one JSON line per framework (seconds_per_round, peak PSS/RSS of the
process tree, final accuracy, final weights digest) and a last line with the
ratios. Each framework runs in its own process, one after another, so each
process tree is measured alone. Workloads: ../shared/benchmarks/WORKLOADS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import workloads as W  # noqa: E402

FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"


def elasticfl_config(workload: str, storage: str, registered: int | None = None, rounds: int | None = None):
    from elasticfl import RunConfig

    spec = W.spec(workload)
    clients = registered or spec["clients"]
    if spec["model"] == "w2":
        task = {"type": "custom", "path": "elasticfl.testing.tasks:AddConstant",
                "params": {"arrays": W.W2_ARRAYS, "size": W.W2_ARRAY_LEN, "delta": float(W.W2_DELTA)}}
        data = {"dataset": "none", "num_clients": clients}
    else:
        task = {"type": "classification", "model": "mlp", "hidden": [64], "epochs": 1,
                "batch_size": W.BATCH_SIZE, "lr": W.LR}
        data = {"dataset": "digits", "num_clients": clients,
                "partition": {"name": "dirichlet", "alpha": W.ALPHA, "seed": W.SEED}}
    return RunConfig.from_dict({
        "run": {"name": f"bench-{workload.lower()}", "seed": 0, "rounds": rounds or spec["rounds"]},
        "task": task,
        "data": data,
        "cohort": {"clients_per_round": spec["per_round"]},
        "executors": {"count": 2, "num_cpus": 1},  # two executors of one CPU, as the peer gets
        "checkpoint": {"storage": storage, "every": 1, "keep_last": 2},  # checkpointing on
        "evaluation": {"every": 1 if spec["evaluate"] else 0},
        "cluster": {"dashboard": False},  # as the peer runs (Flower starts Ray without it)
    })


def run_elasticfl(workload: str, registered: int | None, rounds: int | None) -> dict:
    """Runs in a fresh child process (see main), so its process tree is measured alone."""
    t_process = W.process_start_time()
    mem = W.ProcessTreeMemory().start()
    import elasticfl

    with tempfile.TemporaryDirectory(prefix="elasticfl-bench-") as tmp:
        config = elasticfl_config(workload, tmp, registered, rounds)
        result = elasticfl.run(config, quiet=True)
        history = result.history
        w2_error = None
        if W.spec(workload)["model"] == "w2":  # check the result, not just the clock
            from elasticfl.checkpoint import CheckpointStore

            final = CheckpointStore(config.checkpoint.storage, result.run_id).latest()
            weights = [final.arrays[f"weights/{i}"] for i in range(W.W2_ARRAYS)]
            w2_error = W.w2_error(weights, None, len(history))
            del weights, final
    starts = [h["started_at"] for h in history]
    ends = [h["started_at"] + h["duration_s"] for h in history]
    # A round's wall time runs from the end of the one before (checkpoint and dispatch included).
    per_round = [ends[0] - starts[0]] + [b - a for a, b in zip(ends, ends[1:])]
    out = {
        "framework": "elasticfl",
        "version": elasticfl.__version__,
        "workload": workload,
        "registered_clients": config.data.num_clients,
        "rounds": len(history),
        "startup_s": round(starts[0] - t_process, 3),
        "seconds_per_round": statistics.median(per_round),
        "total_s": round(ends[-1] - starts[0], 3),
        "final_accuracy": result.metrics.get("accuracy"),
        "final_loss": result.metrics.get("loss"),
        "weights_sha256": result.weights_sha256,
        "state": result.state,
    }
    if w2_error is not None:
        out["w2_max_abs_error"] = w2_error
    out.update(mem.stop())
    return out


def _child(args: list[str], python: str | Path = sys.executable, script: Path | None = None) -> dict:
    """Run one framework twice in fresh processes: timed with memory sampling off (reading
    /proc/PID/smaps_rollup steals CPU), then again for the memory peaks."""
    cmd = [str(python), str(script or Path(__file__)), *args]
    out: dict = {}
    for sampling in ("0", "1"):
        env = {**os.environ, "PYTHONPATH": str(HERE.parent), "BENCH_MEMORY_SAMPLING": sampling}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1])
        if sampling == "0":
            out = result
        else:
            mem_keys = [k for k in result if "pss" in k or "rss" in k]
            out.update({k: result[k] for k in mem_keys})
            out["seconds_per_round_while_sampling_memory"] = result.get("seconds_per_round")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=sorted(W.WORKLOADS))
    ap.add_argument("--peer", choices=["flower"], help="also run the peer framework, in its own venv")
    ap.add_argument("--registered", type=int, help="registered clients (W3: show round cost vs population)")
    ap.add_argument("--rounds", type=int, help="override the workload's rounds (smoke runs only)")
    ap.add_argument("--no-reference", action="store_true", help="skip the plain sequential loop")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    extra = (["--registered", str(args.registered)] if args.registered else []) + (["--rounds", str(args.rounds)] if args.rounds else [])

    if args._child:
        print(json.dumps(run_elasticfl(args.workload, args.registered, args.rounds)), flush=True)
        return 0

    results = {"elasticfl": _child(["--workload", args.workload, "--_child", *extra])}
    print(json.dumps(results["elasticfl"]), flush=True)
    if not args.no_reference and not args.registered:
        ref_args = ["--workload", args.workload] + (["--rounds", str(args.rounds)] if args.rounds else [])
        results["sequential"] = _child(ref_args, script=HERE / "reference.py")
        print(json.dumps(results["sequential"]), flush=True)
    if args.peer == "flower":
        if not FLOWER_PY.exists():
            raise SystemExit("Flower's venv is missing: run benchmarks/setup_flower.sh first")
        peer_args = ["--workload", args.workload] + (["--rounds", str(args.rounds)] if args.rounds else [])
        results["flower"] = _child(peer_args, python=FLOWER_PY, script=HERE / "flower_peer.py")
        print(json.dumps(results["flower"]), flush=True)

    ours = results["elasticfl"]
    summary: dict = {"workload": args.workload, "summary": True}
    if "sequential" in results and W.spec(args.workload)["model"] == "mlp":
        summary["digest_matches_sequential"] = ours["weights_sha256"] == results["sequential"]["weights_sha256"]
    if "flower" in results:
        peer = results["flower"]
        summary["speedup_vs_flower"] = round(peer["seconds_per_round"] / ours["seconds_per_round"], 2)
        summary["pss_ratio_vs_flower"] = round(ours["peak_pss_bytes"] / peer["peak_pss_bytes"], 3)
        summary["rss_ratio_vs_flower"] = round(ours["peak_rss_bytes"] / peer["peak_rss_bytes"], 3)
        summary["digest_matches_flower"] = ours["weights_sha256"] == peer.get("weights_sha256")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
