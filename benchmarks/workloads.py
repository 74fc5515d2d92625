"""The benchmark workloads W1, W2, W3 of benchmarks/WORKLOADS.md, framework-free.

SELF-CONTAINED on purpose: this module imports only numpy, scikit-learn, torch
and the standard library. It is imported from elasticfl's venv (benchmarks/run.py,
benchmarks/reference.py) *and* from Flower's own venv (benchmarks/flower_peer.py,
including inside Flower's Ray actors), so it must never import elasticfl, flwr or
ray. Everything a framework needs to run a workload the same way is here: the data
and its split, the model, one client's local training, the centralised
evaluation, the W3 cohort rule, the W2 weights, the FedAvg that defines the
expected bits, the digest of a set of weights, and a process-tree memory sampler.

Weights are always a ``list[np.ndarray]`` in model order (the order of the torch
model's ``state_dict``: ``0.weight, 0.bias, 2.weight, 2.bias``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "WORKLOADS",
    "ALPHA",
    "SEED",
    "BATCH_SIZE",
    "LR",
    "W2_ARRAYS",
    "W2_ARRAY_LEN",
    "W2_DELTA",
    "load_data",
    "dirichlet_partition",
    "owner_array",
    "partition_sha256",
    "client_data",
    "initial_weights",
    "mlp_initial_weights",
    "w2_initial_weights",
    "train_client",
    "w2_client",
    "w2_error",
    "evaluate",
    "cohort",
    "w3_cohorts",
    "fedavg",
    "weights_sha256",
    "process_start_time",
    "ProcessTreeMemory",
]

# --------------------------------------------------------------------------- #
# Workload table (WORKLOADS.md, "Workloads")
# --------------------------------------------------------------------------- #

WORKLOADS: dict[str, dict] = {
    # per-client overhead with real training
    "W1": {"clients": 100, "per_round": 100, "rounds": 20, "model": "mlp", "evaluate": True},
    # moving and averaging a large model (100 MB); no evaluation
    "W2": {"clients": 10, "per_round": 10, "rounds": 5, "model": "w2", "evaluate": False},
    # many registered clients, few per round
    "W3": {"clients": 1000, "per_round": 100, "rounds": 10, "model": "mlp", "evaluate": True},
}

ALPHA = 0.5  # label-Dirichlet concentration
SEED = 0  # partition seed
BATCH_SIZE = 32
LR = 0.05
W2_ARRAYS = 4
W2_ARRAY_LEN = 6_250_000  # 4 x 6.25M float32 = 25M floats = 100 MB
W2_DELTA = np.float32(0.001)

# Expected partition digests (sha256 of owner.astype('<i8').tobytes()), by prefix.
PARTITION_DIGEST_PREFIX = {100: "f7e48fc3", 1000: "7a4d4dff"}


def spec(workload: str) -> dict:
    try:
        return WORKLOADS[workload]
    except KeyError:
        raise ValueError(f"unknown workload {workload!r}; expected one of {sorted(WORKLOADS)}") from None


# --------------------------------------------------------------------------- #
# Data and partition (W1, W3)
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=None)
def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): digits, X/16 float32, int64 labels, 80/20 stratified.

    1437 train rows and 360 test rows. Cached per process: do not modify them.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    arrays = (np.ascontiguousarray(x_tr), np.ascontiguousarray(y_tr),
              np.ascontiguousarray(x_te), np.ascontiguousarray(y_te))
    return arrays  # type: ignore[return-value]


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float = ALPHA,
                        seed: int = SEED) -> list[np.ndarray]:
    """Label-Dirichlet split exactly as WORKLOADS.md defines it.

    One generator, consumed in this order: for each class k ascending, the
    ascending train-row indices of class k are shuffled, then p ~ Dirichlet([alpha]*N)
    is drawn and the shuffled indices are cut at (cumsum(p)*len).astype(int64)[:-1];
    chunk c goes to client c. Each client's indices are sorted at the end. No
    resampling: some clients get no rows.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for k in np.unique(labels):  # ascending
        idx_k = np.flatnonzero(labels == k)  # ascending row indices
        rng.shuffle(idx_k)
        p = rng.dirichlet([alpha] * num_clients)
        cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
        for c, chunk in enumerate(np.split(idx_k, cuts)):
            chunks[c].append(chunk)
    return [np.sort(np.concatenate(c).astype(np.int64)) if c else np.zeros(0, np.int64)
            for c in chunks]


def owner_array(parts: Sequence[np.ndarray], num_rows: int) -> np.ndarray:
    """owner[i] = the client that holds train row i."""
    owner = np.full(num_rows, -1, dtype=np.int64)
    for c, idx in enumerate(parts):
        owner[idx] = c
    if (owner < 0).any():
        raise AssertionError("partition does not cover every row")
    return owner


def partition_sha256(parts: Sequence[np.ndarray], num_rows: int) -> str:
    return hashlib.sha256(owner_array(parts, num_rows).astype("<i8").tobytes()).hexdigest()


@functools.lru_cache(maxsize=None)
def _partition(num_clients: int) -> tuple[np.ndarray, ...]:
    _, y_tr, _, _ = load_data()
    parts = dirichlet_partition(y_tr, num_clients)
    want = PARTITION_DIGEST_PREFIX.get(num_clients)
    if want is not None:
        got = partition_sha256(parts, len(y_tr))
        if not got.startswith(want):
            raise AssertionError(f"partition digest for N={num_clients} is {got[:8]}, expected {want}")
    return tuple(parts)


def client_data(num_clients: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one client of the N-client Dirichlet split (cached per process)."""
    x_tr, y_tr, _, _ = load_data()
    idx = _partition(num_clients)[client_id]
    return x_tr[idx], y_tr[idx]


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def _single_thread_torch():
    """Import torch pinned to one intra-op thread: one CPU per client, and the same
    kernels (hence bits) in every process whatever its default thread count."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return torch


def _new_mlp():
    torch = _single_thread_torch()
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def mlp_initial_weights() -> list[np.ndarray]:
    """torch.manual_seed(0), then Sequential(Linear(64,64), ReLU(), Linear(64,10)), float32.

    Note: reseeds torch's global generator (as the definition says).
    """
    torch = _single_thread_torch()
    torch.manual_seed(0)
    model = _new_mlp()
    return [t.detach().numpy().astype(np.float32, copy=True) for t in model.state_dict().values()]


def w2_initial_weights() -> list[np.ndarray]:
    """4 arrays of 6,250,000 float32, drawn in turn from one default_rng(0).standard_normal."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal(W2_ARRAY_LEN, dtype=np.float32) for _ in range(W2_ARRAYS)]


def initial_weights(workload: str) -> list[np.ndarray]:
    return w2_initial_weights() if spec(workload)["model"] == "w2" else mlp_initial_weights()


_MODEL_CACHE: dict[int, object] = {}


def _model_with(weights: Sequence[np.ndarray]):
    """A per-process (per-thread) cached MLP holding a copy of ``weights``."""
    torch = _single_thread_torch()
    key = threading.get_ident()
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = _MODEL_CACHE[key] = _new_mlp()
    params = list(model.state_dict().values())
    if len(params) != len(weights):
        raise ValueError(f"expected {len(params)} arrays, got {len(weights)}")
    with torch.no_grad():
        for p, w in zip(params, weights):
            w = np.asarray(w)
            if tuple(p.shape) != w.shape:
                raise ValueError(f"array shape {w.shape} != model shape {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
    return model


# --------------------------------------------------------------------------- #
# Client work and evaluation
# --------------------------------------------------------------------------- #


def train_client(weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, round: int,
                 client_id: int) -> tuple[list[np.ndarray], int]:
    """One client's local training (W1, W3). Rounds are numbered from 1.

    1 epoch of SGD (lr 0.05, no momentum), batch 32 with the last partial batch
    kept, mean cross-entropy; example order default_rng([0, round, client_id]).permutation(n),
    batches are consecutive slices of that order. A client with no rows returns
    the weights unchanged with weight 0. Returns (new weights, n).
    """
    n = int(len(y))
    if n == 0:
        return list(weights), 0
    torch = _single_thread_torch()
    model = _model_with(weights)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    order = np.random.default_rng([0, int(round), int(client_id)]).permutation(n)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    model.train()
    for start in range(0, n, BATCH_SIZE):
        idx = torch.from_numpy(order[start:start + BATCH_SIZE])
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return [t.detach().numpy().copy() for t in model.state_dict().values()], n


def w2_client(weights: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """W2's client: the received weights + 0.001 (float32), weight 1."""
    return [np.add(w, W2_DELTA, dtype=np.float32) for w in weights], 1


def w2_error(final: Sequence[np.ndarray], initial: Sequence[np.ndarray] | None = None,
             rounds: int | None = None) -> float:
    """max |final - (initial + rounds x 0.001)| over all W2 weights (float32 rounding: ~1e-6)."""
    initial = w2_initial_weights() if initial is None else initial
    rounds = WORKLOADS["W2"]["rounds"] if rounds is None else rounds
    shift = float(W2_DELTA) * rounds
    return float(max(np.max(np.abs(f.astype(np.float64) - (i.astype(np.float64) + shift)))
                     for f, i in zip(final, initial)))


def evaluate(weights: Sequence[np.ndarray], x_test: np.ndarray | None = None,
             y_test: np.ndarray | None = None) -> tuple[float, float]:
    """Centralised (mean cross-entropy loss, accuracy) on the test rows (default: the 360 digits test rows)."""
    if x_test is None or y_test is None:
        _, _, x_test, y_test = load_data()
    torch = _single_thread_torch()
    model = _model_with(weights)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32)))
        yt = torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64))
        loss = float(torch.nn.functional.cross_entropy(logits, yt))
        acc = float((logits.argmax(dim=1) == yt).double().mean())
    return loss, acc


# --------------------------------------------------------------------------- #
# Cohorts
# --------------------------------------------------------------------------- #


def w3_cohorts(rounds: int | None = None, num_clients: int = 1000, per_round: int = 100) -> list[np.ndarray]:
    """W3's cohorts: one rng = default_rng(0), drawn once per round in order:
    sort(rng.choice(1000, 100, replace=False)). Element r-1 is round r's cohort."""
    rounds = WORKLOADS["W3"]["rounds"] if rounds is None else rounds
    rng = np.random.default_rng(0)
    return [np.sort(rng.choice(num_clients, per_round, replace=False)).astype(np.int64)
            for _ in range(rounds)]


def cohort(workload: str, round: int) -> list[int]:
    """The ascending client ids that take part in ``round`` (1-based) of ``workload``."""
    s = spec(workload)
    if not 1 <= round <= s["rounds"]:
        raise ValueError(f"{workload} has rounds 1..{s['rounds']}, got {round}")
    if s["per_round"] == s["clients"]:
        return list(range(s["clients"]))
    return [int(c) for c in _w3_cohorts_cached(s["rounds"], s["clients"], s["per_round"])[round - 1]]


@functools.lru_cache(maxsize=None)
def _w3_cohorts_cached(rounds: int, num_clients: int, per_round: int) -> tuple[np.ndarray, ...]:
    return tuple(w3_cohorts(rounds, num_clients, per_round))


# --------------------------------------------------------------------------- #
# Aggregation and digest
# --------------------------------------------------------------------------- #


def fedavg(updates: Iterable[tuple[Sequence[np.ndarray], float]]) -> list[np.ndarray]:
    """FedAvg as elasticfl does it, which defines the expected bits of W1/W3.

    ``updates`` are (weights, n) in client-id order (any iterable, consumed once,
    so a generator keeps only one update alive at a time). Each update is
    multiplied by n in float64 and summed in float64 in the given order; the sum
    is divided by sum(n) and cast back to the updates' dtype. Updates with
    n == 0 contribute nothing.
    """
    sums: list[np.ndarray] | None = None
    dtypes: list[np.dtype] = []
    total = 0.0
    for weights, n in updates:
        if sums is None:
            sums = [np.zeros(np.shape(a), np.float64) for a in weights]
            dtypes = [np.asarray(a).dtype for a in weights]
        if n:
            for acc, a in zip(sums, weights):
                if n == 1:
                    np.add(acc, a, out=acc, casting="unsafe")
                else:
                    acc += np.multiply(a, n, dtype=np.float64)
        total += float(n)
    if sums is None or total <= 0:
        raise ValueError("no weighted updates to average")
    return [(s / total).astype(d) for s, d in zip(sums, dtypes)]


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """sha256 over the arrays' raw bytes in model order."""
    digest = hashlib.sha256()
    for a in weights:
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Timing and memory
# --------------------------------------------------------------------------- #


def process_start_time(pid: int | str = "self") -> float:
    """Wall-clock (time.time()) start of a process, from /proc (10 ms resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    start_ticks = int(fields[19])  # field 22 of stat; [0] here is field 3 (state)
    with open("/proc/stat", "rb") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                rest = f.read().rpartition(b")")[2].split()
            out[int(name)] = int(rest[1])
        except (OSError, IndexError, ValueError):
            continue  # the process went away
    return out


def process_tree(root: int | None = None) -> list[int]:
    """``root`` (default: this process) and all its descendants, by /proc ppid links."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _rollup(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in bytes, from /proc/PID/smaps_rollup (0, 0 if it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return pss, rss


def _hwm(pid: int) -> int:
    """VmHWM (the kernel's exact peak RSS of one process) in bytes, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        return cmd[:80] or "?"
    except OSError:
        return "?"


def tree_memory(root: int | None = None) -> dict:
    """One sample: summed PSS and RSS of the process tree, plus the per-process figures."""
    per = {pid: _rollup(pid) for pid in process_tree(root)}
    return {
        "pss_bytes": sum(p for p, _ in per.values()),
        "rss_bytes": sum(r for _, r in per.values()),
        "processes": per,
    }


class ProcessTreeMemory:
    """Peak memory of this process and ALL its descendants, sampled every ~50 ms.

    The sampler is a daemon thread of the calling process: under heavy CPU load
    (or a long GIL hold) samples come late (see ``max_gap_s``) and a short peak can
    be missed; ``sum_hwm_rss_bytes`` (sum of the processes' own peak RSS) bounds RSS
    from above whatever the sampling.

    A local Ray started by the driver (raylet, GCS, workers and actors) is made of
    descendants of the driver, so they are all counted. PSS (proportional set
    size, from each process's /proc/PID/smaps_rollup) is the figure to compare:
    RSS counts the shared object store once per process that maps it. The peaks
    are peaks of the *sums* over the tree at one sample time.

        mem = ProcessTreeMemory().start()
        ...
        peaks = mem.stop()   # {"peak_pss_bytes": ..., "peak_rss_bytes": ...}
    """

    def __init__(self, interval: float = 0.05, root: int | None = None, rescan_every: int = 10):
        self.interval = interval
        self.rescan_every = max(1, int(rescan_every))
        self._pids: list[int] | None = None
        self.root = os.getpid() if root is None else root
        self.peak_pss_bytes = 0
        self.peak_rss_bytes = 0
        self.peak_root_pss_bytes = 0  # the root process (the driver) alone
        self.peak_processes = 0  # the largest number of processes seen in the tree
        self._peak_pids: dict[int, tuple[int, int]] = {}
        self._peak_names: dict[int, str] | None = None
        self.samples = 0
        self.max_gap_s = 0.0  # the longest time between two samples (the sampler shares the GIL)
        # pid -> last VmHWM seen: summed, an upper bound on peak RSS that no sampling
        # interval can miss (each process's own peak, whenever it happened)
        self._hwm: dict[tuple[int, int], int] = {}
        self._last_t: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self, rescan: bool = False) -> dict:
        """Take one sample now: {"pss_bytes", "rss_bytes", "processes": {pid: (pss, rss)}}.

        The tree is re-walked (every /proc/*/stat read, which costs more as the
        machine runs more processes) only every ``rescan_every`` samples; between
        walks the known processes are re-read and the ones that exited dropped.
        """
        rescan = rescan or self._pids is None or self.samples % self.rescan_every == 0
        if rescan:
            self._pids = process_tree(self.root)
        per = {}
        for pid in self._pids:
            pss, rss = _rollup(pid)
            if pss or rss:
                per[pid] = (pss, rss)
        self._pids = list(per) or [self.root]
        s = {"pss_bytes": sum(p for p, _ in per.values()),
             "rss_bytes": sum(r for _, r in per.values()),
             "processes": per}
        with self._lock:
            self._name_peak()
            now = time.monotonic()
            if self._last_t is not None:
                self.max_gap_s = max(self.max_gap_s, now - self._last_t)
            self._last_t = now
            self.samples += 1
            if s["pss_bytes"] > self.peak_pss_bytes:
                self._peak_pids = per  # pid -> (pss, rss) at the PSS peak
                self._peak_names = None
            self.peak_pss_bytes = max(self.peak_pss_bytes, s["pss_bytes"])
            self.peak_rss_bytes = max(self.peak_rss_bytes, s["rss_bytes"])
            self.peak_root_pss_bytes = max(self.peak_root_pss_bytes, per.get(self.root, (0, 0))[0])
            self.peak_processes = max(self.peak_processes, len(per))
        if rescan:
            for pid in per:
                h = _hwm(pid)
                if h:
                    self._hwm[(pid, self._start_key(pid))] = h
        return s

    @staticmethod
    def _start_key(pid: int) -> int:
        # pids get reused: key each process by (pid, start time)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return int(f.read().rpartition(b")")[2].split()[19])
        except (OSError, ValueError, IndexError):
            return -1

    @property
    def sum_hwm_rss_bytes(self) -> int:
        """Sum over every process seen in the tree of its own peak RSS (VmHWM, read at
        each tree walk and at stop()): an upper bound on the tree's peak RSS, except for
        what a process that exited gained in its last ~0.5 s."""
        return int(sum(self._hwm.values()))

    def _name_peak(self) -> None:
        if self._peak_names is None and self._peak_pids:
            self._peak_names = {pid: _proc_name(pid) for pid in self._peak_pids}

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def start(self) -> "ProcessTreeMemory":
        # Reading smaps_rollup costs kernel time on a 2-core machine; the timing pass of
        # benchmarks/run.py turns sampling off (BENCH_MEMORY_SAMPLING=0) and measures memory
        # in a separate pass, so neither figure disturbs the other.
        if os.environ.get("BENCH_MEMORY_SAMPLING", "1") == "0":
            return self
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="ProcessTreeMemory", daemon=True)
            self._thread.start()
        return self

    def describe_peak(self) -> list[dict]:
        """The processes at the PSS peak, largest first: [{"pid", "name", "pss_bytes", "rss_bytes"}]."""
        with self._lock:
            self._name_peak()
            items = sorted(self._peak_pids.items(), key=lambda kv: -kv[1][0])
            names = self._peak_names or {}
        return [{"pid": pid, "name": names.get(pid, "?"), "pss_bytes": pss, "rss_bytes": rss}
                for pid, (pss, rss) in items]

    def peaks(self) -> dict:
        with self._lock:
            return {"peak_pss_bytes": int(self.peak_pss_bytes), "peak_rss_bytes": int(self.peak_rss_bytes)}

    def stop(self) -> dict:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample(rescan=True)
        return self.peaks()

    def __enter__(self) -> "ProcessTreeMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
