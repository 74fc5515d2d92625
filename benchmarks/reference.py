"""The benchmark workloads as a plain sequential Python loop: no framework, no Ray.

Gives the expected bits of the final weights of W1 and W3 (and W2's result) and
the floor on seconds per round. Uses only benchmarks/workloads.py, so it runs in
elasticfl's venv or in Flower's:

    .venv/bin/python benchmarks/reference.py --workload W1
    .venv/bin/python benchmarks/reference.py --workload W3

Prints ONE JSON line on stdout:
    {"framework": "sequential", "workload", "rounds", "seconds_per_round" (median),
     "total_s", "final_accuracy", "final_loss", "weights_sha256", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as W  # noqa: E402


def run(workload: str, rounds: int | None = None) -> dict:
    spec = W.spec(workload)
    rounds = spec["rounds"] if rounds is None else rounds
    mem = W.ProcessTreeMemory().start()
    weights = W.initial_weights(workload)
    initial = [a.copy() for a in weights] if workload == "W2" else None
    if spec["model"] == "mlp":
        W.load_data()
        for c in range(spec["clients"]):
            W.client_data(spec["clients"], c)  # partition built (and digest checked) before round 1
    round_s: list[float] = []
    loss = acc = None
    t_start = time.perf_counter()
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        ids = W.cohort(workload, r)
        if spec["model"] == "w2":
            updates = (W.w2_client(weights) for _ in ids)
        else:
            updates = (W.train_client(weights, *W.client_data(spec["clients"], c), r, c) for c in ids)
        weights = W.fedavg(updates)  # generator: one update alive at a time, client-id order
        if spec["evaluate"]:
            loss, acc = W.evaluate(weights)
        round_s.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    out = {
        "framework": "sequential",
        "workload": workload,
        "rounds": rounds,
        "seconds_per_round": statistics.median(round_s),
        "total_s": total,
        "round_s": [round(s, 4) for s in round_s],
        "final_accuracy": acc,
        "final_loss": loss,
        "weights_sha256": W.weights_sha256(weights),
    }
    if initial is not None:
        out["w2_max_abs_error"] = W.w2_error(weights, initial, rounds)
    out.update(mem.stop())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=sorted(W.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=None, help="override the workload's round count (testing only)")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.workload, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
