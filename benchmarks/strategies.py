"""Strategies on non-IID digits, and the server optimisers against Flower's.

Two modes:

    .venv/bin/python benchmarks/strategies.py [--rounds 60] [--write]
        Each strategy through ``elasticfl.run`` (embedded local Ray, quiet) on digits
        split over 100 clients by label-Dirichlet(0.1), 10 clients a round. Prints one
        JSON line per strategy; --write replaces the "Strategies" section of RESULTS.md.

    benchmarks/.venv-flower/bin/python benchmarks/strategies.py --against-flower
        Feeds elasticfl's FedAdam / FedYogi / FedAdagrad and Flower 1.42's
        ``aggregate_fit`` the same client results for several rounds and compares.
        Flower pins another Ray and protobuf, so it cannot share elasticfl's venv;
        this mode imports only numpy, flwr and ``elasticfl.strategies`` (pure numpy).

Top-level imports are the standard library only, so both venvs can load this file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

TARGET = 0.90
# The server optimisers' step is η·m/(√v+τ), about η per weight per round, so they need a
# far smaller η than FedAvgM's 1.0: picked on this workload (same seed) from {0.01, 0.03}
# for FedAdam / FedYogi and {0.03, 0.1} for FedAdagrad; the table states them.
STRATEGIES = {
    "fedavg": {"name": "fedavg"},
    "fedavgm": {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.9},
    "fedprox": {"name": "fedprox", "mu": 0.1},
    "fedprox-mu1": {"name": "fedprox", "mu": 1.0},
    "fedadam": {"name": "fedadam", "server_lr": 0.03},
    "fedyogi": {"name": "fedyogi", "server_lr": 0.03},
    "fedadagrad": {"name": "fedadagrad", "server_lr": 0.1},
    "fednova": {"name": "fednova"},
    "scaffold": {"name": "scaffold"},
}


def config(strategy: dict, rounds: int, storage: str):
    from elasticfl import RunConfig

    return RunConfig.from_dict({
        "run": {"name": f"strategies-{strategy['name']}", "seed": 0, "rounds": rounds},
        "task": {"type": "classification", "model": "mlp", "hidden": [64], "epochs": 5, "batch_size": 16, "lr": 0.05},
        "data": {"dataset": "digits", "num_clients": 100, "partition": {"name": "dirichlet", "alpha": 0.1}},
        "cohort": {"fraction": 0.2},
        "executors": {"count": 2, "num_cpus": 1},
        "strategy": strategy,
        "checkpoint": {"storage": storage, "every": 10, "keep_last": 1},
        "evaluation": {"every": 1},
        "cluster": {"dashboard": False},
    })


def run_one(key: str, rounds: int) -> dict:
    import elasticfl

    with tempfile.TemporaryDirectory(prefix="elasticfl-strategies-") as tmp:
        start = time.perf_counter()
        result = elasticfl.run(config(STRATEGIES[key], rounds, tmp), quiet=True)
        wall = time.perf_counter() - start
    accs = [h["metrics"].get("accuracy") for h in result.history]
    reached = next((h["round"] for h, a in zip(result.history, accs) if a is not None and a >= TARGET), None)
    return {
        "strategy": key, "params": STRATEGIES[key], "rounds": rounds, "rounds_to_90": reached,
        "final_accuracy": accs[-1], "best_accuracy": max(a for a in accs if a is not None),
        "wall_s": round(wall, 1), "state": result.state,
    }


def table(rows: list[dict]) -> str:
    base = next(r for r in rows if r["strategy"] == "fedavg")
    lines = [
        "| strategy | settings | rounds to 90% | final accuracy | best accuracy | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k != "name") or "—"
        reached = "not reached" if r["rounds_to_90"] is None else str(r["rounds_to_90"])
        if r is not base and r["rounds_to_90"] and base["rounds_to_90"]:
            reached += f" ({r['rounds_to_90'] / base['rounds_to_90']:.2f}× FedAvg)"
        delta = "" if r is base else f" ({r['final_accuracy'] - base['final_accuracy']:+.3f})"
        lines.append(
            f"| {r['strategy']} | {settings} | {reached} | {r['final_accuracy']:.3f}{delta} "
            f"| {r['best_accuracy']:.3f} | {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def write_section(section: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text()
    # replace our section (up to the next "## " heading) or append it
    pattern = re.compile(r"\n## Strategies\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: "\n" + section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- against Flower ----------------------------------------------------------------------------

def against_flower(rounds: int = 5) -> int:
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdagrad as FlAdagrad, FedAdam as FlAdam, FedYogi as FlYogi

    from elasticfl.strategies import FedAdagrad, FedAdam, FedYogi, WeightedSum

    eta, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    cases = {
        "fedadam": (FedAdam(eta, b1, b2, tau), FlAdam, {"beta_1": b1, "beta_2": b2}),
        "fedyogi": (FedYogi(eta, b1, b2, tau), FlYogi, {"beta_1": b1, "beta_2": b2}),
        "fedadagrad": (FedAdagrad(eta, b1, tau), FlAdagrad, {}),
    }
    failures = 0
    for name, (ours, fl_cls, betas) in cases.items():
        rng = np.random.default_rng(0)
        x = [rng.standard_normal((5, 4)), rng.standard_normal(4)]  # float64: both means are then the same bits
        flower = fl_cls(initial_parameters=ndarrays_to_parameters(x), eta=eta, tau=tau, **betas)
        flower.inplace = False  # Flower's plain weighted mean: Σ n·w / Σ n, as ours
        if name == "fedadagrad":
            flower.beta_1 = b1  # Flower's FedAdagrad has no beta_1 argument and uses 0 (no momentum)
        # Flower starts v at 0, the paper at v₋₁ ≥ τ² (ours: τ²); start ours at 0 to compare the rest
        ours.load_state_dict({"m": [np.zeros_like(a) for a in x], "v": [np.zeros_like(a) for a in x]})
        report = {"strategy": name, "rounds": rounds}
        worst_m = worst_v = worst_x = 0.0
        for r in range(1, rounds + 1):
            clients = [([a + rng.standard_normal(a.shape) * 0.3 for a in x], int(rng.integers(1, 40))) for _ in range(6)]
            summed = WeightedSum()
            for w, n in clients:
                summed.add(w, n)
            results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(w), n, {})) for w, n in clients]
            new_ours = ours.aggregate(x, summed)
            new_fl = parameters_to_ndarrays(flower.aggregate_fit(r, results, [])[0])
            state = ours.state_dict()
            worst_m = max(worst_m, *(float(np.abs(a - b).max()) for a, b in zip(state["m"], flower.m_t)))
            worst_v = max(worst_v, *(float(np.abs(a - b).max()) for a, b in zip(state["v"], flower.v_t)))
            if name == "fedadam":
                # Flower bias-corrects the step: η·√(1−β2^(t+1))/(1−β1^(t+1)), t = server_round;
                # the paper's Algorithm 2 does not. Compare the steps after undoing that factor.
                factor = np.sqrt(1 - b2 ** (r + 1.0)) / (1 - b1 ** (r + 1.0))
                worst_x = max(worst_x, *(float(np.abs((f - g) / factor - (o - g)).max()) for f, o, g in zip(new_fl, new_ours, x)))
            else:
                worst_x = max(worst_x, *(float(np.abs(f - o).max()) for f, o in zip(new_fl, new_ours)))
            x = new_ours
            flower.current_weights = [a.copy() for a in x]  # both go on from the same weights
        report.update(max_abs_diff_m=worst_m, max_abs_diff_v=worst_v, max_abs_diff_step=worst_x)
        ok = worst_m <= 1e-12 and worst_v <= 1e-12 and worst_x <= 1e-9
        report["agrees"] = ok
        failures += not ok
        print(json.dumps(report))
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against-flower", action="store_true")
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--only", nargs="*", choices=sorted(STRATEGIES), help="run only these strategies")
    ap.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = ap.parse_args()
    if args.against_flower:
        return against_flower()
    rows = []
    for key in args.only or STRATEGIES:
        rows.append(run_one(key, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    if args.write:
        write_section(section_text(rows, args.rounds))
    else:
        print(table(rows) if any(r["strategy"] == "fedavg" for r in rows) else "")
    return 0


def section_text(rows: list[dict], rounds: int) -> str:
    return f"""## Strategies

Digits split over 100 clients by label-Dirichlet(α = 0.1), 20 clients a round
(`cohort.fraction: 0.2`), {rounds} rounds, the 64-10 MLP, 5 local epochs of SGD
(lr 0.05, batch 16), seed 0, centralised evaluation on the 360 test images every
round; two executors of one CPU on the 2-core machine described above.

```
.venv/bin/python benchmarks/strategies.py --rounds {rounds} --write
```

{table(rows)}

"Rounds to 90%": the first round whose global model reaches 90% test accuracy.
One seed, one partition: differences of a few points are within run-to-run spread
of other seeds. The server optimisers' `server_lr` was picked on this same seed
(FedAdam / FedYogi from {{0.01, 0.03}}, FedAdagrad from {{0.03, 0.1}}); their step is
about `server_lr` per weight per round. FedNova divides each client's change by its
local steps; it is FedAvg exactly when every client takes the same number of steps,
but here the clients hold 1 to 94 rows (median 9; 4 of the 100 hold none) and all
train 5 epochs of batch 16, so they take 5 × ⌈rows/16⌉ steps, 5 to 30. SCAFFOLD runs
with `server_lr` 1.0 and `local_lr` = `task.lr` (0.05; the task has no momentum); the
controller keeps a control variate for every client that has trained (one model's
size each) besides its own, and sends its own to every client each round. Wall time
is the `elasticfl.run` call; the runs share one embedded Ray, so the first (FedAvg)
also pays for starting it. The machine is shared, so times move by tens of percent.

Against Flower 1.42 (`benchmarks/.venv-flower/bin/python benchmarks/strategies.py
--against-flower`, also run by `tests/unit/test_strategies.py` when that venv exists):
on the same client results over 5 rounds, FedAdam's, FedYogi's and FedAdagrad's m and v
agree bit for bit, and so do FedYogi's and FedAdagrad's weights; FedAdam's step agrees
to 3e-16 once Flower's bias correction is undone. Two differences are deliberate
(the paper's Algorithm 2): v starts at τ² (Flower: 0; the comparison starts both at 0),
and FedAdam has no bias correction. Flower's FedAdagrad also fixes β1 = 0 (no momentum).
"""


if __name__ == "__main__":
    sys.exit(main())
