"""Buffered asynchronous training (FedBuff) against synchronous rounds, with slow clients.

    .venv/bin/python benchmarks/asynchronous.py [--rounds 60] [--seeds 0 1] [--slow-s 0.03 0.3]
                                               [--only METHOD ...] [--write] > runs.jsonl
    .venv/bin/python benchmarks/asynchronous.py --from runs.jsonl [more.jsonl] --write

Digits split over 100 clients by label-Dirichlet(0.5), the "Strategies" task (the
64-10 MLP, 5 local epochs of SGD, batch 16, lr 0.05), centralised evaluation after
every round or server step. Clients 0-19 (20%) are on simulated slow hardware
(``simulation: {slow_clients: "0-19", slow_s}``: each of their trainings sleeps
``slow_s`` longer), at each level of ``--slow-s``. Every method runs through
``elasticfl.run`` (embedded local Ray, quiet) with two executors of one CPU, and
gets the same budget of ``--rounds`` x 10 client updates:

    sync             FedAvg, 10 clients a round, waits for the slowest
    sync-deadline    the same with ``cohort.deadline_s`` (--deadline-factor x the median
                     round of the same seed's sync run, or --deadline-s) and
                     ``min_clients: 5``: clients not back by then are dropped as "late"
    sync-overselect  12 selected a round (``over_select: 0.2``), closes at 10 updates
                     (not run unless named with --only: every round closes early)
    sync-m           sync with FedAvgM (server_lr 1.0, momentum 0.5)
    fedbuff          ``asynchronous`` with buffer_size 10, concurrency 4 (two executors,
                     each with one client training and one queued), FedAvg on the
                     buffered mean
    fedbuff-m        the same with FedAvgM (server_lr 1.0, momentum 0.5)

Synchronous rounds run with ``executors.unit_size: 1`` (the default cuts a 10-client
cohort into two units of 5, and a deadline then drops a whole unit of 5 with its one
straggler; one-client units are also what asynchronous training dispatches).

Per run it prints one JSON line: wall seconds (the whole ``elasticfl.run`` call, and
from the first round's start to the last round's end), seconds and client updates
until the global model first reaches ``--target`` test accuracy (times from the
history's ``started_at`` / ``duration_s``, relative to round 1's start), final and
last-10 mean accuracy, the executors' busy share, the share of usable updates that
came from slow clients, staleness (FedBuff), the rounds closed early and the clients
dropped, and the measured training seconds of normal and slow clients; then a table
per slowness level. Seeds change the partition, the cohorts, the dispatches and the
initial weights. --write replaces the "Asynchronous training (FedBuff) against
synchronous rounds" section of RESULTS.md; --from rebuilds it from saved JSON lines.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SECTION = "Asynchronous training (FedBuff) against synchronous rounds"
ALPHA = 0.5
PER_ROUND = 10
EXECUTORS = 2
SLOW = "0-19"
SLOW_IDS = set(range(20))
CONCURRENCY = 4
METHODS = {  # name: (cohort, asynchronous, strategy); sync-deadline's deadline_s is set per run
    "sync": ({"clients_per_round": PER_ROUND}, None, {"name": "fedavg"}),
    "sync-deadline": ({"clients_per_round": PER_ROUND, "deadline_s": None, "min_clients": 5}, None, {"name": "fedavg"}),
    "sync-overselect": ({"clients_per_round": PER_ROUND, "over_select": 0.2}, None, {"name": "fedavg"}),
    "sync-m": ({"clients_per_round": PER_ROUND}, None, {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.5}),
    "fedbuff": (None, {"enabled": True, "buffer_size": PER_ROUND, "concurrency": CONCURRENCY}, {"name": "fedavg"}),
    "fedbuff-m": (
        None, {"enabled": True, "buffer_size": PER_ROUND, "concurrency": CONCURRENCY},
        {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.5},
    ),
}
# sync-overselect closes every round with units in flight (and, with a slow leftover, may
# replace an executor): it is left out unless named with --only.
DEFAULT_METHODS = ["sync", "sync-deadline", "sync-m", "fedbuff", "fedbuff-m"]


def config(method: str, seed: int, rounds: int, slow_s: float, deadline_s: float | None, storage: str):
    import strategies
    from elasticfl import RunConfig

    cohort, asynchronous, strategy = METHODS[method]
    cfg = strategies.config(strategy, rounds, storage).to_dict()
    cfg["run"].update(name=f"async-bench-{method}", seed=seed)
    cfg["data"]["partition"] = {"name": "dirichlet", "alpha": ALPHA}
    cfg["executors"].update(count=EXECUTORS, num_cpus=1)
    cfg["simulation"] = {"slow_clients": SLOW, "slow_s": slow_s}
    if asynchronous is not None:
        cfg["asynchronous"] = asynchronous
        cfg["cohort"] = {"clients_per_round": PER_ROUND}  # unused by asynchronous training
    else:
        cfg["cohort"] = {k: (deadline_s if k == "deadline_s" else v) for k, v in cohort.items()}
        cfg["executors"]["unit_size"] = 1
    cfg["checkpoint"]["every"] = rounds  # only the last: the runs are timed
    return RunConfig.from_dict(cfg)


def settings(method: str) -> str:
    cohort, asynchronous, strategy = METHODS[method]
    parts = []
    if asynchronous is not None:
        parts.append(f"buffer {asynchronous['buffer_size']}, concurrency {asynchronous['concurrency']}")
    else:
        parts.append(f"{PER_ROUND} a round")
        if "deadline_s" in cohort:
            parts.append(f"deadline 1.5× sync's median round, min_clients {cohort['min_clients']}")
        if cohort.get("over_select"):
            parts.append(f"over_select {cohort['over_select']:g} ({round(PER_ROUND * (1 + cohort['over_select']))} picked)")
    if strategy["name"] != "fedavg":
        parts.append(f"FedAvgM η={strategy['server_lr']:g}, β={strategy['momentum']:g}")
    return ", ".join(parts)


def summarise(history: list[dict], target: float) -> dict:
    t0 = history[0]["started_at"]
    accs = [h["metrics"].get("accuracy") for h in history]
    ok = [[c for c in h["clients"] if c["status"] == "ok"] for h in history]
    updates = sum(len(o) for o in ok)
    reached = next((i for i, a in enumerate(accs) if a is not None and a >= target), None)
    normal = [c["duration_s"] for o in ok for c in o if c["client_id"] not in SLOW_IDS]
    slow = [c["duration_s"] for o in ok for c in o if c["client_id"] in SLOW_IDS]
    train_wall = history[-1]["started_at"] + history[-1]["duration_s"] - t0
    busy = sum(c.get("duration_s") or 0.0 for h in history for c in h["clients"])
    row = {
        "rounds_done": len(history), "updates": updates, "target": target,
        "seconds_to_target": None if reached is None else round(history[reached]["started_at"] + history[reached]["duration_s"] - t0, 3),
        "updates_to_target": None if reached is None else sum(len(o) for o in ok[: reached + 1]),
        "rounds_to_target": None if reached is None else reached + 1,
        "final_accuracy": accs[-1], "last10_mean_accuracy": statistics.mean(a for a in accs[-10:] if a is not None),
        "best_accuracy": max(a for a in accs if a is not None),
        "train_wall_s": round(train_wall, 3),
        # the executors' time inside clients' training (the slow clients' sleep included)
        "executor_busy_share": busy / (EXECUTORS * train_wall),
        "slow_share": sum(c["client_id"] in SLOW_IDS for o in ok for c in o) / max(1, updates),
        "late": sum(h["clients_late"] for h in history),
        "late_slow": sum(c["status"] == "late" and c["client_id"] in SLOW_IDS for h in history for c in h["clients"]),
        "rounds_closed_early": sum(h["clients_late"] > 0 for h in history),
        "round_s_median": statistics.median(h["duration_s"] for h in history),
        "round_s_max": max(h["duration_s"] for h in history),
        "evaluate_s_total": round(sum(h["phases_s"]["evaluate"] for h in history), 3),
        "client_s_normal_mean": statistics.mean(normal) if normal else None,
        "client_s_slow_mean": statistics.mean(slow) if slow else None,
    }
    if history[0].get("asynchronous"):
        stale = [(c["client_id"], c["metrics"]["staleness"]) for o in ok for c in o]
        taus = [t for _, t in stale]
        row.update(
            staleness_mean=statistics.mean(taus), staleness_max=max(taus),
            staleness_hist={str(t): taus.count(t) for t in sorted(set(taus))},
            staleness_mean_slow=statistics.mean([t for c, t in stale if c in SLOW_IDS] or [0]),
            staleness_mean_normal=statistics.mean([t for c, t in stale if c not in SLOW_IDS] or [0]),
        )
    return row


def run_one(method: str, seed: int, rounds: int, slow_s: float, deadline_s: float | None, target: float) -> dict:
    import elasticfl

    with tempfile.TemporaryDirectory(prefix="elasticfl-async-") as tmp:
        start = time.perf_counter()
        result = elasticfl.run(config(method, seed, rounds, slow_s, deadline_s, tmp), quiet=True)
        wall = time.perf_counter() - start
    row = {"method": method, "seed": seed, "slow_s": slow_s, "rounds": rounds, "state": result.state}
    if METHODS[method][0] and "deadline_s" in METHODS[method][0]:
        row["deadline_s"] = deadline_s
    row.update(summarise(result.history, target), wall_s=round(wall, 1))
    return row


# -- the section ----------------------------------------------------------------------------

def _cells(rows: list[dict], fmt) -> str:
    return "; ".join(fmt(r) for r in rows)  # one value per seed


def table(rows: list[dict], slow_s: float) -> str:
    seeds = sorted({r["seed"] for r in rows if r["slow_s"] == slow_s})
    lines = [
        "| method | settings | seconds to 85% | updates to 85% | final accuracy (mean of last 10) "
        "| wall: rounds (whole run) | executors busy | slow clients' share of updates | staleness: mean, max (slow clients' mean) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method and r["slow_s"] == slow_s), key=lambda r: r["seed"])
        if not mine:
            continue
        none = "not reached"
        stale = "—"
        if "staleness_mean" in mine[0]:
            stale = _cells(mine, lambda r: f"{r['staleness_mean']:.2f}, {r['staleness_max']} ({r['staleness_mean_slow']:.2f})")
        label = settings(method)
        if "deadline_s" in mine[0]:
            label += f": {_cells(mine, lambda r: format(r['deadline_s'], 'g'))} s, closed {_cells(mine, lambda r: str(r['rounds_closed_early']))} rounds early"
        if [r["seed"] for r in mine] != seeds:
            label += f" (seed {', '.join(str(r['seed']) for r in mine)} only)"
        if mine[0].get("note"):
            label += f" ({mine[0]['note']})"
        to_s = _cells(mine, lambda r: none if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f} s")
        to_n = _cells(mine, lambda r: none if r["updates_to_target"] is None else str(r["updates_to_target"]))
        acc = _cells(mine, lambda r: f"{r['final_accuracy']:.3f} ({r['last10_mean_accuracy']:.3f})")
        wall = _cells(mine, lambda r: f"{r['train_wall_s']:.1f} s ({r['wall_s']:.0f} s)")
        busy = _cells(mine, lambda r: f"{r['executor_busy_share']:.0%}")
        share = _cells(mine, lambda r: f"{r['slow_share']:.0%}")
        lines.append(f"| {method} | {label} | {to_s} | {to_n} | {acc} | {wall} | {busy} | {share} | {stale} |")
    return "\n".join(lines)


def write_section(section: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text()  # read right before writing: other scripts write their own sections
    pattern = re.compile(r"\n## " + re.escape(SECTION) + r"\n.*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: "\n" + section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=60, help="rounds / server steps, each of 10 client updates")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--slow-s", type=float, nargs="+", default=[0.03, 0.3], help="simulation.slow_s levels for clients 0-19")
    ap.add_argument("--deadline-factor", type=float, default=1.5,
                    help="sync-deadline's deadline_s: this times the median round of the same seed's sync run")
    ap.add_argument("--deadline-s", type=float, help="a fixed deadline_s instead (needed without sync in --only)")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--only", nargs="*", choices=list(METHODS), help=f"run these methods (default {' '.join(DEFAULT_METHODS)})")
    ap.add_argument("--from", dest="sources", nargs="+", metavar="FILE", help="rebuild the tables from saved JSON lines")
    ap.add_argument("--write", action="store_true", help="write the section into RESULTS.md")
    args = ap.parse_args()
    rows: list[dict] = []
    start = time.perf_counter()
    if args.sources:
        for src in args.sources:
            rows += [json.loads(line) for line in Path(src).read_text().splitlines() if line.startswith("{")]
    else:
        methods = args.only or DEFAULT_METHODS
        for slow_s in args.slow_s:
            for seed in args.seeds:  # one seed's methods back to back, in the same conditions
                deadline = args.deadline_s
                for method in sorted(methods, key=list(METHODS).index):  # sync first: it sets the deadline
                    if method == "sync-deadline" and deadline is None:
                        ap.error("sync-deadline without sync needs --deadline-s")
                    row = run_one(method, seed, args.rounds, slow_s, deadline, args.target)
                    if method == "sync" and args.deadline_s is None:
                        deadline = round(args.deadline_factor * row["round_s_median"], 3)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    total = time.perf_counter() - start
    for slow_s in sorted({r["slow_s"] for r in rows}):
        print(f"\nslow_s {slow_s:g}\n" + table(rows, slow_s))
    if not args.sources:
        print(f"total {total:.0f} s", flush=True)
    if args.write:
        write_section(section_text(rows))
    return 0


def _reflow(text: str, width: int = 90) -> str:
    """Re-wrap the prose paragraphs and bullets (numbers were filled in); tables and code stay."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith(("|", "```", "#")) or "\n|" in block:
            out.append(block)
            continue
        wrapped = []
        for item in re.split(r"\n(?=- )", block):
            indent = "  " if item.startswith("- ") else ""
            wrapped.append(textwrap.fill(" ".join(item.split()), width, subsequent_indent=indent, break_on_hyphens=False))
        out.append("\n".join(wrapped))
    return "\n\n".join(out).rstrip("\n") + "\n"


def section_text(rows: list[dict]) -> str:
    levels = sorted({r["slow_s"] for r in rows})
    lo, hi = levels[0], levels[-1]

    def get(method: str, slow_s: float, key: str) -> list:
        return [r[key] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method and r["slow_s"] == slow_s]

    def fmt(values: list, spec: str = ".1f", unit: str = "") -> str:  # one value per seed, in prose
        parts = [format(v, spec) + unit for v in values]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def client_ms(slow_s: float, key: str) -> float:
        return 1000 * statistics.mean(r[key] for r in rows if r["slow_s"] == slow_s and r[key] is not None)

    normal_ms = statistics.mean(client_ms(x, "client_s_normal_mean") for x in levels)
    ratio = {x: client_ms(x, "client_s_slow_mean") / client_ms(x, "client_s_normal_mean") for x in levels}
    seeds = sorted({r["seed"] for r in rows if r["method"] == "sync"})
    less = {x: [1 - a / b for a, b in zip(get("fedbuff", x, "train_wall_s"), get("sync", x, "train_wall_s"))] for x in levels}
    busier = [100 * (a - b) for a, b in zip(get("fedbuff", hi, "executor_busy_share"), get("sync", hi, "executor_busy_share"))]
    acc_gap = [
        100 * (b - a) for x in levels for m, twin in (("fedbuff", "sync"), ("fedbuff-m", "sync-m"))
        for a, b in zip(get(m, x, "last10_mean_accuracy"), get(twin, x, "last10_mean_accuracy"))
    ]
    hist = [r["staleness_hist"] for r in rows if "staleness_hist" in r]
    fresh = [h.get("0", 0) / sum(h.values()) for h in hist]
    one = [h.get("1", 0) / sum(h.values()) for h in hist]
    stale_slow = [r["staleness_mean_slow"] for r in rows if "staleness_mean_slow" in r]
    stale_normal = [r["staleness_mean_normal"] for r in rows if "staleness_mean_normal" in r]
    deadline_rows = [r for r in rows if r["method"] == "sync-deadline"]
    lo_to = [r["seconds_to_target"] for r in rows if r["slow_s"] == lo and r["seconds_to_target"] is not None]
    over = [r for r in rows if r["method"] == "sync-overselect"]
    over_text = ""
    if over:
        o = over[0]
        sync_o = next(r for r in rows if r["method"] == "sync" and r["slow_s"] == o["slow_s"] and r["seed"] == o["seed"])
        over_text = (
            f" sync-overselect closes every round early ({o['rounds_closed_early']} of {o['rounds_done']}) and is still"
            f" slower than sync (seed {o['seed']}, slow_s {o['slow_s']:g}): {o['train_wall_s']:.1f} s for the rounds against"
            f" {sync_o['train_wall_s']:.1f} s, a median round of {o['round_s_median']:.2f} s against {sync_o['round_s_median']:.2f} s,"
            f" {o['executor_busy_share']:.0%} executors busy against {sync_o['executor_busy_share']:.0%}, and"
            f" {o['seconds_to_target']:.1f} s to 85% against {sync_o['seconds_to_target']:.1f} s (in {o['updates_to_target']}"
            f" updates against {sync_o['updates_to_target']}); {o['late_slow']} of its {o['late']} dropped clients were slow,"
            f" and the slow clients' share of its updates was {o['slow_share']:.0%} (sync {sync_o['slow_share']:.0%})."
        )
        # from a separate run with the same settings that logged each round's executors
        # (the history's "executors" field): seed 0, slow_s 0.3, 41.1 s for the rounds
        over_text += (
            " What it loses is executors: a separate run with the same settings (41.1 s for the rounds)"
            " replaced an executor in 11 of its 60 rounds, each time because a slow client (id under 20)"
            " dispatched early in the closed round was still training 0.1 s after the close, and at 41 of"
            " the 60 round ends one of the two executors was a replacement still starting, so one executor"
            " did most of the work. The grace is too short for a 0.3 s straggler, and a replacement takes"
            " seconds to start on this machine."
        )
    tables = "\n\n".join(
        f"**slow_s {x:g}** (a slow client ≈ {ratio[x]:.0f}× a normal one)\n\n{table(rows, x)}" for x in levels
    )
    return _reflow(f"""## {SECTION}

Digits over 100 clients by label-Dirichlet(0.5), the "Strategies" task (the 64-10 MLP,
5 local epochs of SGD, batch 16, lr 0.05), test accuracy on the 360 test images after
every round or server step. Clients 0-19 (20%) are on simulated slow hardware
(`simulation: {{slow_clients: "0-19", slow_s}}`: each of their trainings sleeps `slow_s`
longer). Measured inside the executors, a normal client trains for {normal_ms:.1f} ms on
average; with `slow_s` {lo:g} a slow one takes {client_ms(lo, "client_s_slow_mean"):.0f} ms
({ratio[lo]:.0f}×), with {hi:g}, {client_ms(hi, "client_s_slow_mean"):.0f} ms ({ratio[hi]:.0f}×).
Every method runs through `elasticfl.run` (embedded local Ray, quiet) with two executors
of one CPU and gets the same budget: 60 rounds or server steps of 10 client updates.

- **sync**: FedAvg, 10 clients a round, `executors.unit_size: 1` (each client its own work
  unit, as FedBuff dispatches them; the default cuts the cohort into two units of 5, and
  a deadline would then drop a unit of 5 for one straggler). It waits for every client.
- **sync-deadline**: the same with `cohort.deadline_s` at 1.5× the median round of the
  same seed's sync run, `min_clients: 5`; clients not back by then are dropped ("late").
- **sync-overselect**: 12 picked (`over_select: 0.2`), the round closes at 10 updates;
  one seed and level only.
- **sync-m**: sync with FedAvgM (server lr 1, momentum 0.5), the control for fedbuff-m.
- **fedbuff**: `asynchronous: {{enabled: true, buffer_size: 10, concurrency: 4}}` (two
  executors, each training one client with one more queued), staleness weight
  (1+τ)^−0.5, FedAvg on the buffered mean; **fedbuff-m** the same with FedAvgM
  (server lr 1, momentum 0.5).

```
.venv/bin/python benchmarks/asynchronous.py > runs.jsonl          # seeds 0 1, slow_s 0.03 and 0.3
.venv/bin/python benchmarks/asynchronous.py --only sync-overselect --seeds 0 --slow-s 0.3 >> runs.jsonl
.venv/bin/python benchmarks/asynchronous.py --from runs.jsonl --write
```

After the early-close fix (below), sync-deadline and sync-overselect were rerun alone, one
run after another (`--only sync-deadline` with the deadlines of the first runs,
`--deadline-s 0.501` and `0.509` at slow_s 0.3, `0.1` at 0.03; `--only sync-overselect
--seeds 0 --slow-s 0.3`), and their rows replaced; every other row is from the first runs
(none of those methods closes a round early).

The {len(rows)} runs took {sum(r["wall_s"] for r in rows) / 60:.0f} minutes in all. Each cell: seed {"; seed ".join(map(str, seeds))}.
"Seconds to 85%": from round 1's start to the end of the first round (server step) whose
global model reaches 85% test accuracy; "updates to 85%": the usable client updates until
then. "Wall: rounds": round 1's start to the last round's end, in brackets the whole
`elasticfl.run` call (executor start-up; the script's first run also starts Ray).
"Executors busy": the clients' training time, sleep included, over 2 × the rounds' wall
time. Staleness τ: server steps between an update's dispatch and its arrival.

{tables}

What the numbers show (pairs of values are seeds {" and ".join(map(str, seeds))}):

- **FedBuff buys executor time, and here not much of it.** It keeps the executors busier
  (at slow_s {hi:g}: {fmt(get("fedbuff", hi, "executor_busy_share"), ".0%")} against sync's
  {fmt(get("sync", hi, "executor_busy_share"), ".0%")}; at {lo:g}: {fmt(get("fedbuff", lo, "executor_busy_share"), ".0%")}
  against {fmt(get("sync", lo, "executor_busy_share"), ".0%")}), so the same 600 updates took
  {fmt([100 * v for v in less[hi]], ".0f", "%")} less wall time at slow_s {hi:g} and
  {fmt([100 * v for v in less[lo]], ".0f", "%")} less at {lo:g}. Each update is worth less,
  though: with 4 clients in flight and a buffer of 10, {min(one):.0%}-{max(one):.0%} of the updates
  are a step stale, and fedbuff needs {fmt(get("fedbuff", hi, "updates_to_target"), "d")} updates to reach 85%
  where sync needs {fmt(get("sync", hi, "updates_to_target"), "d")} (fedbuff-m {fmt(get("fedbuff-m", hi, "updates_to_target"), "d")},
  sync-m {fmt(get("sync-m", hi, "updates_to_target"), "d")}). Net, seconds to 85% at slow_s {hi:g}: fedbuff
  {fmt(get("fedbuff", hi, "seconds_to_target"))} against sync {fmt(get("sync", hi, "seconds_to_target"))};
  fedbuff-m {fmt(get("fedbuff-m", hi, "seconds_to_target"))} against sync-m {fmt(get("sync-m", hi, "seconds_to_target"))}.
  At slow_s {lo:g} (a slow client about {ratio[lo]:.0f}× a normal one) every method gets there in {min(lo_to):.0f}-{max(lo_to):.0f} s and the differences are
  noise: a normal client's {normal_ms:.1f} ms of training is comparable to what a dispatch and
  its reply cost, so both modes are bound by per-call overhead, not by the slow clients.
  FedBuff's accuracy over the last 10 steps is {min(acc_gap):.1f}-{max(acc_gap):.1f} points below its
  synchronous twin's.
- **Part of seed 1's FedBuff lead is the draw.** FedBuff's dispatches come from their own
  seeded stream, which gave the slow clients {fmt(get("fedbuff", hi, "slow_share"), ".0%")} of
  its updates against {fmt(get("sync", hi, "slow_share"), ".0%")} of sync's: seed 1 had less sleeping
  to do. The executor busy share, not the wall time, is the like-for-like measure:
  {fmt(busier, ".0f")} points more at slow_s {hi:g}, about a tenth less time for the same work.
- **Server momentum matters more than asynchrony here**: FedAvgM (β 0.5) reaches 85% in
  {fmt(get("sync-m", hi, "updates_to_target"), "d")} updates synchronously. Compare fedbuff-m with sync-m, not with sync.
- **FedBuff did not under-sample the slow clients here.** Their share of its updates is the
  same at both slowness levels for each seed ({fmt(get("fedbuff", lo, "slow_share"), ".0%")} at slow_s {lo:g},
  {fmt(get("fedbuff", hi, "slow_share"), ".0%")} at {hi:g}): dispatch draws uniformly from the clients not training, and
  with 4 of 100 in flight a draw hits a busy (mostly slow) client rarely: in a rerun of
  seed 1's two fedbuff runs, 15 and 11 of 600 dispatches were redrawn, moving the share by
  under a point. The
  known FedBuff bias shows as staleness instead: slow clients' updates average
  τ {min(stale_slow):.2f}-{max(stale_slow):.2f} against {min(stale_normal):.2f}-{max(stale_normal):.2f}
  for the others, so they count about 0.8-0.85 of a fresh update against 0.93. Both would
  grow with more clients in flight per buffer and a wider speed gap.
- **Staleness** is τ = 0 for {min(fresh):.0%}-{max(fresh):.0%} of the updates, 1 for
  {min(one):.0%}-{max(one):.0%}, 2 or 3 for the rest (at most {max(r["staleness_max"] for r in rows if "staleness_max" in r)}):
  with 4 in flight and a buffer of 10, about 3 updates a step cross a version boundary.
- **Dropping stragglers does not pay here.** Early closes used to cost seconds each, and
  that was a bug, fixed in this session. A round that closed early replaced every executor
  holding one of its calls, running or only queued (1-5 s for a new process, imports and
  the data), and the next evaluation waited for it: sync-deadline took 44.0 s for seed 1's
  rounds at slow_s 0.03 (17 early closes) and 42.3 and 67.2 s at 0.3 (5 and 11),
  sync-overselect 159.8 s at 14% executors busy. A first fix cancelled the round's queued
  calls and ran into Ray's ordered actor queue: cancelling a call already sent to an actor
  leaves a gap in its sequence, which the actor waits 30 s on before failing the call
  behind it (ray-project/ray issues #66020 and #65785 are related open issues on ordered
  actor queues and cancellation). Now a closed round's leftover calls are left to finish,
  and an executor still busy with one 0.1 s after the close is replaced. With that,
  sync-deadline closed {fmt([r["rounds_closed_early"] for r in sorted(deadline_rows, key=lambda r: r["seed"]) if r["slow_s"] == lo], "d")} rounds early at slow_s {lo:g} and
  {fmt([r["rounds_closed_early"] for r in sorted(deadline_rows, key=lambda r: r["seed"]) if r["slow_s"] == hi], "d")} at {hi:g}, none of them stalled (its longest round
  {max(get("sync-deadline", lo, "round_s_max")):.2f} s at {lo:g}, {max(get("sync-deadline", hi, "round_s_max")):.2f} s at {hi:g}), and it is back to about
  sync's pace: {fmt(get("sync-deadline", lo, "train_wall_s"))} s for the rounds against sync's {fmt(get("sync", lo, "train_wall_s"))} at slow_s {lo:g},
  {fmt(get("sync-deadline", hi, "train_wall_s"))} against {fmt(get("sync", hi, "train_wall_s"))} at {hi:g}; {fmt(get("sync-deadline", hi, "seconds_to_target"))} s to 85% at {hi:g}
  against sync's {fmt(get("sync", hi, "seconds_to_target"))}. It saves nothing because the deadline does not
  drop the slow clients: a round dispatches its clients in id order, so clients 0-19
  start first, and the late ones are the highest ids still queued. Of the
  {sum(r["late"] for r in deadline_rows)} clients it dropped over its runs, {sum(r["late_slow"] for r in deadline_rows)} were slow; an early close saved at
  most what was left of a slow client's sleep, and lost the updates of the normal clients
  queued behind it.{over_text} A deadline could pay only if the slow clients were
  the ones still out when it fires; as dispatched here it drops whichever clients come
  last in id order.

Caveats:

- Two cores for the driver, Ray's daemons, the controller and two executors, on a shared
  VM that other jobs were loading; the same command moves by tens of percent. A seed's
  methods run back to back. The sync-deadline and sync-overselect reruns ran later than
  the other rows, one after another, and a CI run may have been using the same
  two cores: compare them with sync to within tens of percent.
- **Sleep instead of compute.** A slow client's sleep holds its executor (an actor runs
  one call at a time) but not its core. For the executors that is the same as real
  compute, each having a core of its own; the freed core goes to the driver, controller
  and Ray daemons, which then do not compete with training. FedBuff's controller does
  more while clients train (a dispatch per update rather than per round), so the sleep
  flatters FedBuff slightly. The larger distortion goes the other way: on real uneven
  hardware every client trains on its own device, in parallel, so a synchronous round
  waits for the slowest of its 10 (a slow client is in 89% of cohorts), while FedBuff's
  rate is the number in flight over the mean client time. Here 100 clients share two
  executors: a slow client holds half the cluster in both modes, a round costs about half
  its total work plus the imbalance at the barrier, and FedBuff can win only that
  imbalance. This setup understates what buffered asynchrony buys on heterogeneous
  devices rather than flattering it. (Moving the slow clients to the end of the id order,
  `slow_clients: "80-99"`, seed 0, slow_s 0.3: sync 25.1 s at 81% busy, fedbuff 19.3 s at
  90%, much as above: work stealing balances the round either way.)
- Concurrency above the executor count adds queued calls, not parallelism: 4 = 2 training
  + 2 waiting, and those start from the version current when they were dispatched.
- FedBuff runs are not bit-reproducible: the arrival order is the cluster's timing. The
  dispatch sequence is seeded (in seed 1, 593 of 599 dispatches picked the same client at
  both slowness levels), so the runs stay close. Synchronous runs are reproducible: their
  accuracies are identical at both levels.
- Evaluation after every step costs FedBuff more: the evaluate call queues on an executor
  behind a client in training, {fmt(get("fedbuff", hi, "evaluate_s_total"))} s of FedBuff's
  {fmt(get("fedbuff", hi, "train_wall_s"))} s at slow_s {hi:g}, against {fmt(get("sync", hi, "evaluate_s_total"))} s for sync,
  whose executors are idle when a round ends.
- Two seeds, one partition each, 360 test images (one image is 0.28 points): a point of
  accuracy or 20-40 updates to 85% is within noise.
""")


if __name__ == "__main__":
    sys.exit(main())
