"""The round loop as a plain class: select, dispatch, aggregate, evaluate, checkpoint.

No Ray here: the runtime wraps this class in an actor and hands it a pool of
executor actors; a unit test hands it an in-process pool and steps it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from ..checkpoint import Checkpoint, CheckpointStore
from ..config import RunConfig
from ..errors import CheckpointNotFoundError, ConfigError, RunFailedError
from ..policies import RoundClosePolicy
from .. import privacy as dp
from ..selection import WorkUnit, build_selector, make_units
from ..strategies import WeightedSum, build_strategy
from ..strategies import robust
from ..updates import UPLINK_METRIC
from ..weights import Weights, weights_nbytes, weights_sha256
from ._buffered import BufferedAsync
from ._types import ExecutorPool, RunState

__all__ = ["Controller", "STATUS_FILE"]

log = logging.getLogger("elasticfl.controller")
STATUS_FILE = "status.json"

# Config sections whose change would make a resumed run compute something else.
_DETERMINING = ("task", "data", "cohort", "strategy", "privacy", "compression", "simulation", "asynchronous")


class Controller:
    def __init__(
        self,
        config: RunConfig,
        run_id: str,
        pool: ExecutorPool,
        store: CheckpointStore,
        *,
        resume: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.pool = pool
        self.store = store
        self.resume = resume
        self.clock = clock
        self.strategy = build_strategy(config.strategy, config.task, config.data.num_clients)
        self._shared = getattr(self.strategy, "shared", None)
        # State clients carry from round to round (SCAFFOLD's c_i), by client id; checkpointed.
        self.client_state: dict[int, dict[str, Any]] = {}
        # Asynchronous training (FedBuff) in place of rounds, where configured.
        self.buffered = BufferedAsync(config) if config.asynchronous.enabled else None
        self._stream = None
        n = config.data.num_clients
        cohort = config.cohort
        self.selector = build_selector(config)  # cohort.selection; seeded by the run, fed the history
        self.quorum = 1 if cohort.min_clients is None else cohort.min_clients
        self.close_policy = RoundClosePolicy(cohort.size(n), self.quorum, cohort.deadline_s, cohort.over_select > 0)
        self.placement = config.client_pools()
        self.privacy = (  # DP-FedAvg: clip norm, noise, accountant
            dp.DPFedAvg(config.privacy, run_seed=config.run.seed, denominator=cohort.size(n), selected=cohort.selected(n), num_clients=n)
            if config.privacy.enabled else None
        )
        self.state = RunState.PENDING
        self.round = 0  # the last completed round
        self.weights: Weights | None = None
        self.history: list[dict[str, Any]] = []
        self.error: str | None = None
        self.error_type: str | None = None  # the exception class, so callers can tell user errors apart
        self.last_checkpoint: str | None = None
        self.resumed_from: int | None = None  # the checkpoint round a resume started from
        self.weights_digest: str | None = None
        self.started_at = clock()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="elasticfl-checkpoint", initializer=_background_priority)
        self._pending_save: Future | None = None
        self._checkpointed_round: int | None = None  # the round the newest checkpoint holds

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Load the latest checkpoint (resume) or initialise fresh weights."""
        if self.resume:
            checkpoint = self.store.latest()
            if checkpoint is None:
                raise CheckpointNotFoundError(
                    f"no complete checkpoint for run {self.run_id!r} under {self.store.run_uri}; "
                    "check checkpoint.storage and the run id, or start without --resume"
                )
            self._restore(checkpoint)
        else:
            if self.store.list():
                raise ConfigError(
                    f"run {self.run_id!r} already has checkpoints under {self.store.run_uri}; "
                    "pass --resume to continue it, or choose another --run-id"
                )
            self.weights = self.pool.init_weights()
        self.state = RunState.COMPLETED if self.round >= self.config.run.rounds else RunState.RUNNING
        self._write_status()

    def run(self) -> RunState:
        """Run rounds until done, stopped or failed; always leaves a final status behind.

        The state turns final only after the last checkpoint is written, so a caller
        that sees "completed" also sees that checkpoint.
        """
        state = self.state
        try:
            if state is RunState.PENDING:
                self.start()
                state = self.state
            while state is RunState.RUNNING:
                state = self.step()
        except Exception as exc:  # the run fails; the reason goes to status and storage
            log.exception("run %s failed", self.run_id)
            self.error = f"{type(exc).__name__}: {exc}"
            self.error_type = type(exc).__name__
            state = RunState.FAILED
        finally:
            self._finish(state)
        return self.state

    def request_stop(self, abandon: bool = False) -> None:
        """Graceful stop: the round in flight finishes and is checkpointed. With ``abandon``,
        the round in flight is dropped instead and the run stops at the last completed round."""
        self._stop.set()
        if abandon:
            self.close_policy.abandon()

    # -- one round ---------------------------------------------------------------------
    def step(self) -> RunState:
        """Run the next round; return the state the run is in afterwards."""
        assert self.weights is not None
        r = self.round + 1
        started = self.clock()
        trained_round = self._train_buffered(r) if self.buffered is not None else self._train_round(r)
        trained = self.clock()
        if trained_round is None:  # stopped mid-round: nothing of round r is kept
            log.info("run %s: round %d abandoned by a stop", self.run_id, r)
            if self._checkpointed_round != self.round:
                self._checkpoint()
            return RunState.STOPPED
        summed, clients, updates, fields = trained_round
        if self.privacy is not None:  # noise once per round, on the sum of every unit's clipped deltas
            summed, fields["privacy"] = self.privacy.privatize(summed, self.weights, r, clients)
        if self.config.strategy.robust is not None:
            fields.update(_robust_mean(self.config.strategy.robust, updates, summed))
        new_weights = self.strategy.aggregate(self.weights, summed)
        aggregated = self.clock()
        metrics = {}
        every = self.config.evaluation.every
        if every and (r % every == 0 or r == self.config.run.rounds):
            metrics = self.pool.evaluate(new_weights)
        evaluated = self.clock()
        train_losses = [c.metrics["train_loss"] for c in clients if c.status == "ok" and "train_loss" in c.metrics]
        if train_losses:
            metrics["train_loss"] = float(np.mean(train_losses))

        statuses = Counter(c.status for c in clients)
        record = {
            "round": r,
            "started_at": started,
            "duration_s": round(self.clock() - started, 6),
            "phases_s": {  # where the round's time went
                "train": round(trained - started, 6),
                "aggregate": round(aggregated - trained, 6),
                "evaluate": round(evaluated - aggregated, 6),
            },
            "metrics": metrics,
            **fields,
            "clients_ok": statuses["ok"],
            "clients_failed": statuses["failed"] + statuses["rejected"],
            "clients_late": statuses["late"],  # not waited for: the round closed at its target or deadline
            "bytes_broadcast": weights_nbytes(self.weights),
            **self._uplink_bytes(clients),
            "executors": self.pool.describe(),  # how many, where, how many replaced so far
            "clients": [c.to_dict() for c in clients],
        }
        with self._lock:
            self.weights = new_weights
            self.round = r
            self.history.append(record)
        self._saver.submit(self._write_record, r, record)  # in order, before round r's checkpoint
        last = r >= self.config.run.rounds
        if last or r % self.config.checkpoint.every == 0 or self._stop.is_set():
            self._checkpoint()
        if last:
            return RunState.COMPLETED
        return RunState.STOPPED if self._stop.is_set() else RunState.RUNNING

    def _train_round(self, r: int):
        """A synchronous round: select a cohort, train it in work units, gather the units'
        sums. None when a stop abandoned it; else (sum, client reports, per-client updates
        for robust aggregation, fields for the history record)."""
        cohort = self.selector.cohort(r, self.history)
        fields: dict[str, Any] = {"cohort": [int(c) for c in cohort], "selection": self.selector.name}
        if self.selector.info:  # what it did, e.g. how many never-seen clients it explored
            fields["selection_info"] = dict(self.selector.info)
        units = make_units(cohort, self.config.executors.unit_size, sum(w.size for w in self.weights), self.placement)
        results = sorted(self.pool.train_units(r, self.weights, self._with_state(units), self.close_policy), key=lambda u: u.order)
        if self.close_policy.abandoned:
            return None
        summed = WeightedSum()
        clients, updates = [], []
        for unit in results:  # unit order: the float sums never depend on who ran what
            summed.merge(unit.summed)
            clients.extend(unit.clients)
            updates.extend(unit.updates or ())
            self.client_state.update(unit.client_state)
            unit.summed = unit.updates = None  # release the unit's partial sum (object store memory) now
        clients.sort(key=lambda c: c.client_id)
        ok = sum(c.status == "ok" for c in clients)
        if ok < self.quorum:
            reasons = sorted({c.reason for c in clients if c.reason})[:3]
            raise RunFailedError(
                f"round {r}: {ok} of {len(cohort)} clients returned a usable update, fewer than "
                f"cohort.min_clients={self.quorum}; reasons: {reasons or 'none reported'}"
            )
        fields.update(units=len(units), unit_retries=sum(u.attempts - 1 for u in results))
        return summed, clients, updates, fields

    def _train_buffered(self, r: int):
        """An asynchronous server step (FedBuff): collect ``buffer_size`` arrivals."""
        if self._stream is None:  # the first step of this controller: start (or, resumed, restart) the stream
            self._stream = self.pool.open_stream()
            self.buffered.resubmit(self._stream, self.client_state)
        step = self.buffered.collect(
            self._stream, self.round, self.weights, self.client_state, lambda: self.close_policy.abandoned
        )
        if step is None:
            return None
        summed, clients, fields = step
        return summed, clients, [], fields

    def _uplink_bytes(self, clients: list) -> dict[str, int]:
        """What the ok clients' updates took on the wire, encoded and as plain weights."""
        ok = [c for c in clients if c.status == "ok"]
        raw = len(ok) * weights_nbytes(self.weights)
        if self.config.compression.codec == "none":
            return {"bytes_uplink": raw, "bytes_uplink_raw": raw}
        return {"bytes_uplink": int(sum(c.metrics.get(UPLINK_METRIC, 0) for c in ok)), "bytes_uplink_raw": raw}

    def _with_state(self, units: list[WorkUnit]) -> list[WorkUnit]:
        """Attach what the strategy sends every client and each client's carried state."""
        shared = self._shared(self.weights) if self._shared is not None else {}
        if self.privacy is not None:
            shared = {**shared, **self.privacy.shared()}
        if not shared and not self.client_state:
            return units
        return [
            replace(u, shared=shared, state={c: self.client_state[c] for c in u.client_ids if c in self.client_state})
            for u in units
        ]

    def _privacy_status(self, last: dict[str, Any] | None) -> dict[str, Any]:
        """The status's ``privacy`` entry (ε spent so far, for δ); none when privacy is off."""
        if self.privacy is None:
            return {}
        eps = last["privacy"]["epsilon"] if last and "privacy" in last else 0.0
        return {"privacy": {"epsilon": eps, "delta": self.config.privacy.delta}}

    # -- checkpoints -------------------------------------------------------------------
    def _checkpoint(self) -> None:
        """Save in the background so the next round overlaps the write; one save at a time."""
        self._wait_for_save()
        self._checkpointed_round = self.round
        arrays, strategy_scalars = _flatten_state(self.weights or [], self.strategy.state_dict(), self.client_state)
        extra: dict[str, Any] = {}
        if self.buffered is not None:
            extra["asynchronous"], versions = self.buffered.state(self.round)
            for v, weights in versions.items():
                arrays.update({f"version/{v}/{i}": a for i, a in enumerate(weights)})
        state = {
            "format": 1,
            "run_id": self.run_id,
            "round": self.round,
            "config": self.config.to_dict(),
            "strategy": strategy_scalars,
            **({"privacy": self.privacy.state_dict()} if self.privacy is not None else {}),
            **extra,
        }
        self._pending_save = self._saver.submit(self._save, self.round, arrays, state)

    def _write_record(self, round: int, record: dict[str, Any]) -> None:
        try:
            self.store.write_round_record(round, record)
        except Exception as exc:  # the history is a report, not state: never fail a run over it
            log.error("could not write round %d's history record: %s", round, exc)

    def _save(self, round: int, arrays: dict[str, np.ndarray], state: dict) -> None:
        # The weights digest is computed once, when the run ends, not per checkpoint:
        # the manifest's checksums already guard each checkpoint's bytes.
        uri = self.store.save(round, arrays, state)
        with self._lock:
            self.last_checkpoint = uri
        self._write_status()

    def _wait_for_save(self) -> None:
        if self._pending_save is not None:
            future, self._pending_save = self._pending_save, None
            try:
                future.result()
            except Exception as exc:  # a failed save is retried by the store; after that, the run goes on
                log.error("checkpoint failed for run %s: %s", self.run_id, exc)
                with self._lock:
                    self.error = f"last checkpoint failed: {exc}"

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        saved = RunConfig.from_dict(state["config"], source=f"checkpoint {checkpoint.uri}")
        changed = [s for s in _DETERMINING if getattr(saved, s) != getattr(self.config, s)]
        if saved.run.seed != self.config.run.seed:
            changed.append("run.seed")
        if changed:
            raise ConfigError(
                f"cannot resume run {self.run_id!r}: {', '.join(changed)} differ from the checkpointed config; "
                "resume with the same config (only run.rounds, executors, checkpoint and cluster may change)"
            )
        weights, strategy_state, self.client_state = _unflatten_state(checkpoint.arrays, state.get("strategy", {}))
        self.strategy.load_state_dict(strategy_state)
        if self.privacy is not None:
            self.privacy.load_state_dict(state.get("privacy", {}))
        if self.buffered is not None:
            older = {int(k.split("/")[1]) for k in checkpoint.arrays if k.startswith("version/")}
            versions = {v: [np.array(checkpoint.arrays[f"version/{v}/{i}"]) for i in range(len(weights))] for v in older}
            self.buffered.load(state.get("asynchronous", {}), versions, int(state["round"]), weights)
        self.weights = weights
        self.round = int(state["round"])
        self.history = self.store.read_round_records(self.round)
        self.resumed_from = self.round
        self._checkpointed_round = self.round
        self.last_checkpoint = checkpoint.uri
        log.info("run %s resumed from round %d (%s)", self.run_id, self.round, checkpoint.uri)

    def _finish(self, state: RunState) -> None:
        self._wait_for_save()
        if state is not RunState.FAILED and self.weights is not None and self.weights_digest is None:
            self.weights_digest = weights_sha256(self.weights)
        with self._lock:
            self.state = state
        try:
            self._write_status()
        except Exception as exc:  # storage gone: the status still answers from memory
            log.error("could not write final status for run %s: %s", self.run_id, exc)
        self._saver.shutdown(wait=True)

    # -- what callers can see ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            last = self.history[-1] if self.history else None
            return {
                "run_id": self.run_id,
                "name": self.config.run.name,
                "state": self.state.value,
                "round": self.round,
                "rounds": self.config.run.rounds,
                "metrics": dict(last["metrics"]) if last else {},
                "weights_sha256": self.weights_digest,
                "checkpoint": self.last_checkpoint,
                "storage": self.store.run_uri,
                "error": self.error,
                "error_type": self.error_type,
                "resumed_from": self.resumed_from,
                **self._privacy_status(last),
                "started_at": self.started_at,
                "updated_at": self.clock(),
            }

    def history_since(self, after_round: int) -> list[dict[str, Any]]:
        with self._lock:
            return [h for h in self.history if h["round"] > after_round]

    def poll(self, after_round: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The status and the history after ``after_round``, as one consistent snapshot."""
        with self._lock:
            return self.status(), self.history_since(after_round)

    def _write_status(self) -> None:
        self.store.write_json(STATUS_FILE, self.status())


def _robust_mean(config, updates: list[tuple[int, float, Weights]], summed: WeightedSum) -> dict[str, Any]:
    """Put the robust aggregate of the clients' updates where the weighted mean would go
    (``summed``), so any strategy applies to it; returns what to record about it."""
    updates.sort(key=lambda u: u[0])  # client-id order, whichever unit brought them
    if not updates:
        return {"aggregation": {"name": config.name, "clients": 0}}
    arrays = [u[2] for u in updates]
    info: dict[str, Any] = {"name": config.name, "clients": len(updates)}
    if config.name == "median":
        result = robust.coordinate_median(arrays)
    elif config.name == "trimmed_mean":
        result = robust.trimmed_mean(arrays, config.beta)
    else:
        result, kept = robust.krum(arrays, [u[1] for u in updates], config.num_malicious, config.num_to_keep)
        info["kept"] = [updates[i][0] for i in kept]
    # The aggregate stands for the weighted mean: scaled by the clients' total weight (which
    # side sums such as FedNova's are relative to), mean() hands it back. Exactly: a float32
    # value times an integer example count is exact in float64, and so is the division.
    summed.sums = [np.asarray(r, np.float64) * summed.total_weight for r in result]
    summed.dtypes = [a.dtype.str for a in arrays[0]]
    return {"aggregation": info}


def _background_priority() -> None:
    """Checkpoint writing yields the CPU to the round in flight (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


def _flatten_state(
    weights: Weights, strategy_state: dict[str, Any], client_state: dict[int, dict[str, Any]] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays go to the checkpoint's binary part, everything else to its JSON."""
    arrays = {f"weights/{i}": w for i, w in enumerate(weights)}
    scalars: dict[str, Any] = {}
    for key, value in strategy_state.items():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
            arrays.update({f"strategy/{key}/{i}": v for i, v in enumerate(value)})
        else:
            scalars[key] = value
    for cid, state in (client_state or {}).items():
        for key, value in state.items():
            arrays.update({f"client/{cid}/{key}/{i}": v for i, v in enumerate(value)})
    return arrays, scalars


def _unflatten_state(
    arrays: dict[str, np.ndarray], scalars: dict[str, Any]
) -> tuple[Weights, dict[str, Any], dict[int, dict[str, Any]]]:
    def ordered(prefix: str) -> list[np.ndarray]:
        keys = sorted((k for k in arrays if k.startswith(prefix)), key=lambda k: int(k.rsplit("/", 1)[1]))
        return [np.array(arrays[k]) for k in keys]  # writable copies

    state: dict[str, Any] = dict(scalars)
    for name in {k.split("/")[1] for k in arrays if k.startswith("strategy/")}:
        state[name] = ordered(f"strategy/{name}/")
    clients: dict[int, dict[str, Any]] = {}
    for cid, key in {tuple(k.split("/")[1:3]) for k in arrays if k.startswith("client/")}:
        clients.setdefault(int(cid), {})[key] = ordered(f"client/{cid}/{key}/")
    return ordered("weights/"), state, clients
