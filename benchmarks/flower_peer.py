"""Flower 1.42 as the benchmark's peer: runs W1, W2 or W3 of WORKLOADS.md.

Run it with Flower's own venv (Flower pins Ray 2.55.1; see setup_flower.sh):

    bash benchmarks/setup_flower.sh
    benchmarks/.venv-flower/bin/python benchmarks/flower_peer.py --workload W1

It uses Flower's current Message API: a ``ServerApp`` that runs Flower's own
round loop, ``Strategy.start()``, of a ``flwr.serverapp.strategy.FedAvg``
(subclassed only to pick the WORKLOADS cohort and to time the rounds),
a ``ClientApp`` with a ``@train`` handler exchanging ``ArrayRecord`` /
``MetricRecord``, and ``flwr.simulation.run_simulation`` on the Ray backend with
two client actors of one CPU each. The global model is evaluated centrally (in
the ServerApp) after every round (not for W2).

Prints ONE JSON line on stdout (everything else, Flower's and Ray's logs
included, goes to stderr):

    {"framework": "flower", "version", "workload", "rounds",
     "startup_s"          process start -> round 1 start (nodes registered and
                          Flower's Ray backend initialised; Ray actors start
                          lazily, so their cold start falls in round 1),
     "seconds_per_round"  median over rounds, from the ServerApp's round boundaries
                          (start: Strategy.start() calls configure_train; end: its
                          evaluate_fn, after aggregation, has evaluated the model),
     "total_s"            round 1 start -> end of the last round,
     "peak_pss_bytes", "peak_rss_bytes"  whole process tree (driver, Ray daemons,
                          actors), sampled every 50 ms from process start,
     "final_accuracy", "final_loss", "weights_sha256" of the final global weights,
     ...}

Digest vs the sequential reference (benchmarks/reference.py): with the default
``--aggregation flower`` the global model is averaged by Flower's own
``aggregate_arrayrecords``, which (1) multiplies each float32 update by the
float factor n_i / sum(n) and accumulates in float32 (numpy keeps float32 for
``float32_array * python_float``), where the reference multiplies by n_i and sums
in float64, dividing once at the end; and (2) sums in the order the replies came
back (whichever of the two actors finished first), not in client-id order. Both
change the last bits, so the Flower digest generally does NOT equal the
reference's, and can even differ from one Flower run to the next. With
``--aggregation exact`` the replies are sorted by partition id and averaged with
workloads.fedavg (the reference's float64 rule): everything else (partition,
cohort, local training, data path through Flower) is then checked bit for bit.
"""

from __future__ import annotations

import os
import sys
import time

_BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if _BENCH_DIR not in sys.path:
    sys.path.insert(0, _BENCH_DIR)

import workloads as W  # noqa: E402  (numpy/sklearn/torch only)

# In the driver, start the memory sampler and claim stdout before Flower and Ray
# are imported (importing them is part of the start-up being measured).
_MEM = None
_JSON_OUT = None
if __name__ == "__main__":
    _MEM = W.ProcessTreeMemory(interval=0.05).start()
    # Keep the real stdout for the one JSON line; everything else printed to fd 1
    # (Flower, Ray, C extensions) goes to stderr instead.
    _JSON_OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Flower sends usage telemetry over HTTPS by default; this machine has no
    # network, so turn it off rather than leave it failing in the background.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # Never attach to some other Ray cluster that happens to be running here.
    os.environ.pop("RAY_ADDRESS", None)

import json  # noqa: E402
import statistics  # noqa: E402
from collections.abc import Iterable  # noqa: E402

from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

PARTITION_ID_KEY = "partition-id"  # flwr.common.constant.PARTITION_ID_KEY
WEIGHT_KEY = "num-examples"  # FedAvg's default weighted_by_key

# --------------------------------------------------------------------------- #
# ClientApp (runs inside Flower's Ray actors)
#
# flower_peer.py is run as __main__, but the ClientApp handed to Flower is
# ``flower_peer.client_app`` (the module imported under its own name, see main()),
# so Ray pickles these handlers by reference and the actors import this module
# (Flower puts the driver's sys.path on the actors' PYTHONPATH). The actors keep
# workloads' per-process data cache between messages.
# --------------------------------------------------------------------------- #

client_app = ClientApp()
_TRACE = os.environ.get("FLOWER_PEER_TRACE")  # path prefix: per-actor log of client calls (debugging)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    _t0 = time.time()
    pid = int(context.node_config[PARTITION_ID_KEY])
    config = msg.content["config"]
    workload = str(config["workload"])
    server_round = int(config["server-round"])
    weights = msg.content["arrays"].to_numpy_ndarrays()
    if workload == "W2":
        new_weights, n = W.w2_client(weights)
    else:
        x, y = W.client_data(W.spec(workload)["clients"], pid)
        new_weights, n = W.train_client(weights, x, y, server_round, pid)
    del weights
    content = RecordDict(
        {
            "arrays": ArrayRecord(new_weights),
            # partition-id lets the server check its node -> partition mapping
            "metrics": MetricRecord({WEIGHT_KEY: int(n), PARTITION_ID_KEY: pid}),
        }
    )
    if _TRACE:
        with open(f"{_TRACE}.{os.getpid()}", "a") as f:
            f.write(f"{_t0:.4f} {time.time() - _t0:.4f} r{server_round} p{pid}\n")
    return Message(content=content, reply_to=msg)


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Tells the server which partition this node holds (fallback mapping only)."""
    pid = int(context.node_config[PARTITION_ID_KEY])
    return Message(content=RecordDict({"metrics": MetricRecord({PARTITION_ID_KEY: pid})}), reply_to=msg)


# --------------------------------------------------------------------------- #
# Server side (runs in a thread of the driver process)
# --------------------------------------------------------------------------- #


class CohortFedAvg(FedAvg):
    """Flower's FedAvg, except that the train cohort is the WORKLOADS rule.

    Stock FedAvg samples ``random.sample(grid.get_node_ids(), k)``; WORKLOADS.md
    fixes the cohort (all clients for W1/W2; W3's seeded rng draw), so
    configure_train sends to the nodes that hold those partition ids. Aggregation
    is stock FedAvg (``aggregate_arrayrecords``) unless exact=True.
    """

    def __init__(self, workload: str, node_of: dict[int, int], exact: bool, **kwargs):
        n = W.spec(workload)["clients"]
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # no client-side evaluation: it is centralised
            min_train_nodes=n,
            min_available_nodes=n,
            # the replies' MetricRecord only carries num-examples (the weight) and
            # partition-id (a check): nothing worth averaging
            train_metrics_aggr_fn=lambda records, key: MetricRecord(),
            **kwargs,
        )
        self.workload = workload
        self.node_of = node_of  # partition id -> node id
        self.partition_of = {node: pid for pid, node in node_of.items()}
        self.exact = exact
        self.last_cohort: list[int] = []
        self.round_starts: dict[int, float] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # First call of every round in Strategy.start(): the round's start boundary.
        self.round_starts[server_round] = time.time()
        self.last_cohort = W.cohort(self.workload, server_round)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.node_of[pid] for pid in self.last_cohort]
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        errors = [m for m in replies if m.has_error()]
        if errors:
            raise RuntimeError(
                f"round {server_round}: {len(errors)} client error(s), first: {errors[0].error.reason}"
            )
        got = {}
        for m in replies:
            pid = int(m.content["metrics"][PARTITION_ID_KEY])
            if self.partition_of.get(m.metadata.src_node_id) != pid:
                raise RuntimeError(
                    f"node {m.metadata.src_node_id} holds partition {pid}, "
                    f"expected {self.partition_of.get(m.metadata.src_node_id)}"
                )
            got[pid] = m
        if sorted(got) != self.last_cohort:
            raise RuntimeError(f"round {server_round}: replies from {len(got)} of {len(self.last_cohort)} clients")
        if not self.exact:
            # Stock Flower: float32 accumulation of update * (n_i / sum n), in
            # reply-arrival order (see the module docstring).
            return super().aggregate_train(server_round, replies)
        # exact: the reference rule, float64 in partition-id order
        ordered = [got[pid].content for pid in self.last_cohort]
        mean = W.fedavg(
            (rd["arrays"].to_numpy_ndarrays(), int(rd["metrics"][WEIGHT_KEY])) for rd in ordered
        )
        return ArrayRecord(mean), None


def node_partition_map(grid: Grid, num_nodes: int, how: str = "auto") -> tuple[dict[int, int], str]:
    """partition id -> node id, and how it was found.

    Flower's simulation registers the N SuperNodes in a loop and gives the i-th
    registered node partition id i (flwr/server/superlink/fleet/vce/vce_api.py,
    _register_nodes); node ids themselves are random. The in-memory LinkState
    keeps nodes in a dict in registration order, so that order is the mapping.
    It costs nothing, and every training reply re-checks it (the client reports
    context.node_config["partition-id"]). If the grid does not expose that state,
    fall back to asking every node once with a QUERY message (slower start-up).
    """
    deadline = time.time() + 120
    while len(list(grid.get_node_ids())) < num_nodes:
        if time.time() > deadline:
            raise RuntimeError("SuperNodes did not come online")
        time.sleep(0.05)
    state = getattr(grid, "state", None)
    if how == "auto" and state is not None and hasattr(state, "get_node_info"):
        online = set(grid.get_node_ids())
        ordered = [info.node_id for info in state.get_node_info() if info.node_id in online]
        if len(ordered) == num_nodes:
            return {pid: node for pid, node in enumerate(ordered)}, "registration-order"
    messages = [
        Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        for node in grid.get_node_ids()
    ]
    mapping = {}
    for reply in grid.send_and_receive(messages, timeout=600):
        mapping[int(reply.content["metrics"][PARTITION_ID_KEY])] = reply.metadata.src_node_id
    if sorted(mapping) != list(range(num_nodes)):
        raise RuntimeError(f"partition query answered by {len(mapping)} of {num_nodes} nodes")
    return mapping, "query"


def _wait_for_ray(timeout: float = 600) -> None:
    import ray

    deadline = time.time() + timeout
    while not ray.is_initialized():
        if time.time() > deadline:
            raise RuntimeError("Flower's Ray backend did not start")
        time.sleep(0.02)


RESULT: dict = {}
CONFIG: dict = {}

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    workload = CONFIG["workload"]
    spec = W.spec(workload)
    rounds = CONFIG.get("rounds") or spec["rounds"]
    node_of, how = node_partition_map(grid, spec["clients"], CONFIG.get("node_mapping", "auto"))
    # Flower registers the nodes before it starts Ray, so the nodes are "online"
    # seconds before anything can run. Round 1 starts once the Ray backend is up
    # in this process (ray.init done; it runs in the simulation's main thread):
    # start-up then includes Ray's start, as it does for elasticfl. The actors'
    # own cold start (their first message imports torch, loads the data) stays
    # in round 1, which the median over rounds leaves out.
    _wait_for_ray()
    t_ray = time.time()
    strategy = CohortFedAvg(workload, node_of, exact=CONFIG["aggregation"] == "exact")
    initial = ArrayRecord(W.initial_weights(workload))
    if spec["evaluate"]:
        W.load_data()
    ends: dict[int, float] = {}
    last: dict = {"loss": None, "acc": None}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Strategy.start() calls this after round 0 (before round 1 starts) and at
        # the very end of every round, after aggregation: the round's end boundary.
        out = None
        if spec["evaluate"]:
            loss, acc = W.evaluate(arrays.to_numpy_ndarrays())
            last.update(loss=loss, acc=acc)
            out = MetricRecord({"loss": loss, "accuracy": acc})
        if server_round >= 1:
            ends[server_round] = time.time()
            print(f"[flower_peer] round {server_round}/{rounds} "
                  f"{ends[server_round] - strategy.round_starts[server_round]:.3f}s"
                  + (f" acc={last['acc']:.4f} loss={last['loss']:.4f}" if out is not None else ""),
                  file=sys.stderr, flush=True)
        return out

    # Flower's own round loop, unchanged: configure_train -> send_and_receive ->
    # aggregate_train -> (client-side evaluation: none, fraction_evaluate=0) ->
    # evaluate_fn. Note it keeps the previous round's replies referenced until the
    # next round's replies arrive, which is part of Flower's memory profile on W2.
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=rounds,
        train_config=ConfigRecord({"workload": workload}),
        evaluate_fn=evaluate_fn,
    )
    del initial
    final = result.arrays.to_numpy_ndarrays()
    starts = [strategy.round_starts[r] for r in range(1, rounds + 1)]
    RESULT.update(
        starts=starts, ends=[ends[r] for r in range(1, rounds + 1)], t_ray=t_ray,
        loss=last["loss"], acc=last["acc"], mapping=how,
        weights_sha256=W.weights_sha256(final),
        w2_max_abs_error=W.w2_error(final, rounds=rounds) if workload == "W2" else None,
    )


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run a WORKLOADS.md workload on Flower's Ray simulation.")
    ap.add_argument("--workload", required=True, choices=sorted(W.WORKLOADS))
    ap.add_argument("--aggregation", choices=["flower", "exact"], default="flower",
                    help="flower: stock FedAvg aggregate_arrayrecords (default); "
                         "exact: workloads.fedavg in partition-id order (digest check)")
    ap.add_argument("--rounds", type=int, default=None, help="override the round count (testing only)")
    ap.add_argument("--node-mapping", choices=["auto", "query"], default="auto",
                    help="how the server learns node id -> partition id: auto = Flower's registration "
                         "order (free, checked on every reply); query = ask every node once before round 1")
    ap.add_argument("--num-cpus", type=int, default=2,
                    help="CPUs Ray may use; with 1 CPU per client this is the number of actors (default 2)")
    args = ap.parse_args(argv)

    from flwr.simulation import run_simulation

    import flower_peer as fp  # this file under its own name: pickled by reference (see above)

    fp.CONFIG.update(workload=args.workload, aggregation=args.aggregation, rounds=args.rounds,
                     node_mapping=args.node_mapping)
    spec = W.spec(args.workload)
    t_process = W.process_start_time()
    run_simulation(
        server_app=fp.server_app,
        client_app=fp.client_app,
        num_supernodes=spec["clients"],
        backend_name="ray",
        backend_config={
            # One CPU per client actor. Flower sizes its actor pool as
            # floor(Ray's CPUs / num_cpus per client); pinning Ray to 2 CPUs makes
            # that exactly 2 actors on this machine (and on any bigger one).
            "client_resources": {"num_cpus": 1, "num_gpus": 0},
            "init_args": {"num_cpus": args.num_cpus, "num_gpus": 0},
        },
    )
    t_done = time.time()
    res = fp.RESULT
    if not res:
        raise SystemExit("flower_peer: the ServerApp did not finish (see the log above)")
    peaks = _MEM.stop() if _MEM is not None else {}
    if _MEM is not None and os.environ.get("FLOWER_PEER_MEMORY_DETAIL"):
        for row in _MEM.describe_peak():
            print(f"[flower_peer] at peak: {row['pss_bytes'] / 2**20:9.1f} MiB PSS {row['rss_bytes'] / 2**20:9.1f} MiB RSS"
                  f"  {row['pid']} {row['name']}", file=sys.stderr)
    starts, ends = res["starts"], res["ends"]
    out = {
        "framework": "flower",
        "version": _flwr_version(),
        "workload": args.workload,
        "rounds": len(starts),
        "startup_s": starts[0] - t_process,
        "seconds_per_round": statistics.median(e - s for s, e in zip(starts, ends)),
        "total_s": ends[-1] - starts[0],
        "first_round_s": ends[0] - starts[0],
        "ray_ready_s": res["t_ray"] - t_process,
        "wall_s": t_done - t_process,
        "round_s": [round(e - s, 4) for s, e in zip(starts, ends)],
        **peaks,
        "peak_driver_pss_bytes": _MEM.peak_root_pss_bytes if _MEM is not None else None,
        "sum_hwm_rss_bytes": _MEM.sum_hwm_rss_bytes if _MEM is not None else None,
        "memory_samples": _MEM.samples if _MEM is not None else None,
        "memory_max_gap_s": round(_MEM.max_gap_s, 3) if _MEM is not None else None,
        "final_accuracy": res["acc"],
        "final_loss": res["loss"],
        "weights_sha256": res["weights_sha256"],
        "aggregation": args.aggregation,
        "node_mapping": res["mapping"],
        "actors": args.num_cpus,
    }
    if res["w2_max_abs_error"] is not None:
        out["w2_max_abs_error"] = res["w2_max_abs_error"]
    out_stream = _JSON_OUT or sys.stdout
    out_stream.write(json.dumps(out) + "\n")
    out_stream.flush()
    return 0


if __name__ == "__main__":
    code = main()
    # Ray/Flower leave non-daemon threads behind at times; do not hang on them.
    sys.stderr.flush()
    os._exit(code)
