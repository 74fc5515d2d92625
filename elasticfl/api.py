"""The Python API: submit or run a config, follow it, stop it, inspect finished runs.

    import elasticfl
    result = elasticfl.run(elasticfl.RunConfig.from_yaml("examples/digits.yaml"))
    handle = elasticfl.submit(config)      # handle.status(), handle.watch(), handle.wait(), handle.stop()
    elasticfl.runs(storage="s3://bucket/runs", address="auto")     # every run the cluster or storage knows
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from .checkpoint import CheckpointInfo, CheckpointStore, list_runs
from .config import DEFAULT_STORAGE, Environment, RunConfig
from .controller import STATUS_FILE, RunState
from .errors import CheckpointError, ConfigError, RunFailedError, RunNotFoundError, StorageError
from .runtime import ControllerActor, connect, controller_name, ship_runtime_env

__all__ = [
    "run", "submit", "attach", "status", "stop", "runs", "checkpoints", "RunHandle", "RunResult", "new_run_id",
]  # fmt: skip

_POLL_S = 0.1
HEAD_NODE_RESOURCE = "node:__internal_head__"  # every Ray head node has it, one unit


@dataclass
class RunResult:
    run_id: str
    state: str
    round: int
    rounds: int
    metrics: dict[str, float]
    weights_sha256: str | None
    checkpoint: str | None
    error: str | None = None
    error_type: str | None = None
    resumed_from: int | None = None  # the checkpoint round this run (or its restarted controller) went on from
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.state == RunState.COMPLETED.value


def new_run_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{secrets.token_hex(2)}"


def _prepare(config: RunConfig, address: str | None, storage: str | None) -> RunConfig:
    """Resolve what depends on the driver's machine (cwd, environment) before the config travels."""
    env = Environment.read()
    store = storage or config.resolved_storage(env)
    if "://" not in store:  # a local folder: make it absolute, the controller runs elsewhere
        store = Path(store).expanduser().resolve().as_uri()
    return config.with_overrides(
        checkpoint={"storage": store, "endpoint_url": config.resolved_endpoint(env)},
        cluster={"address": address if address is not None else config.cluster.address},
    )


class RunHandle:
    """A run on the cluster, followed from this driver (or re-attached by run id)."""

    def __init__(
        self, run_id: str, actor: Any, config: RunConfig | None = None, *, owner: bool = True, namespace: str | None = None
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.namespace = namespace or (config.cluster.namespace if config is not None else "elasticfl")
        self._actor = actor
        self._owner = owner  # the driver that started the run releases its finished controller
        self._seen = 0
        self.history: list[dict[str, Any]] = []
        self._last_status: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        self._last_status = ray.get(self._actor.status.remote())
        return self._last_status

    def stop(self, abandon: bool = False) -> None:
        """Graceful: the round in flight finishes and is checkpointed, then the run stops.
        With ``abandon``, the round in flight is dropped: the run stops at its last round."""
        ray.get(self._actor.stop.remote(abandon))

    def rounds(self, poll_s: float = _POLL_S) -> Iterator[dict[str, Any]]:
        """Yield each round's history record as it completes, until the run finishes.

        A resumed run's earlier rounds (from its checkpoint) go into ``history``
        without being yielded again.
        """
        for record in self._arrivals(poll_s):
            if record["round"] > ((self._last_status or {}).get("resumed_from") or 0):
                yield record

    def watch(self, poll_s: float = _POLL_S) -> Iterator[dict[str, Any]]:
        """Yield every round record of the run: those done so far first (a resumed run's
        included), then each round as it completes, until the run finishes.

        ``rounds()`` yields only the rounds this run completes from now on; ``watch()`` is
        what ``elasticfl watch`` shows, for a handle from ``attach()`` in particular.
        """
        yield from list(self.history)
        yield from self._arrivals(poll_s)

    def _arrivals(self, poll_s: float) -> Iterator[dict[str, Any]]:
        """Each record not seen before, as it arrives (kept in ``history``), until the run finishes."""
        while True:
            status, new = self._fetch()
            self._last_status = status
            for record in new:
                self._seen = record["round"]
                self.history.append(record)
                yield record
            if RunState(status["state"]).finished:
                return
            time.sleep(poll_s)

    def _fetch(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One poll: the status and the records after the last one seen. A controller that
        left for good after the run finished (its driver released it) answers from storage."""
        try:
            return self._poll()
        except RunNotFoundError:
            stored = self._from_storage()
            if stored is None:
                raise
            return stored

    def _poll(self, patience_s: float = 300.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One poll of the controller, riding out a restart of its actor (its node died)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return ray.get(self._actor.poll.remote(self._seen))
            except (RayActorError, ActorUnavailableError):
                if self._gone_for_good():
                    raise RunNotFoundError(f"the controller of run {self.run_id!r} has exited") from None
                if time.monotonic() > deadline:
                    raise RunNotFoundError(
                        f"the controller of run {self.run_id!r} did not come back within {patience_s:.0f}s; "
                        f"`elasticfl status {self.run_id}` reads its last state from storage"
                    ) from None
                time.sleep(0.5)

    def _gone_for_good(self) -> bool:
        """A restarting controller keeps its name; one that exited (or was replaced) does not."""
        try:
            current = ray.get_actor(controller_name(self.run_id), namespace=self.namespace)
        except ValueError:
            return True
        return current._actor_id != self._actor._actor_id

    def _from_storage(self) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The final status and the records after the last one seen, as the controller left them."""
        uri = (self._last_status or {}).get("storage")
        if not uri or "/" not in uri:
            return None
        root, run_id = uri.rstrip("/").rsplit("/", 1)
        endpoint = self.config.resolved_endpoint() if self.config is not None else None
        try:
            store = _store(run_id, root, endpoint)
            saved = store.read_json(STATUS_FILE)
            if saved is None or not RunState(saved["state"]).finished:
                return None
            return saved, [r for r in store.read_round_records(saved["round"]) if r["round"] > self._seen]
        except (StorageError, CheckpointError, ConfigError, KeyError, ValueError):
            return None

    def wait(self, on_round: Callable[[dict[str, Any]], None] | None = None, *, release: bool | None = None) -> RunResult:
        """Follow the run to its end, then release the finished controller (by default only
        the handle that started the run does: a re-attached follower leaves it for its driver)."""
        if release is None:
            release = self._owner
        for record in self.rounds():
            if on_round is not None:
                on_round(record)
        status = self._last_status or self.status()
        if release:
            self._actor.release.remote()
        return RunResult(
            run_id=self.run_id,
            state=status["state"],
            round=status["round"],
            rounds=status["rounds"],
            metrics=status["metrics"],
            weights_sha256=status["weights_sha256"],
            checkpoint=status["checkpoint"],
            error=status["error"],
            error_type=status.get("error_type"),
            resumed_from=status.get("resumed_from"),
            history=self.history,
        )

    def weights(self) -> list:
        return ray.get(self._actor.weights.remote())


def submit(
    config: RunConfig,
    *,
    run_id: str | None = None,
    resume: bool = False,
    address: str | None = None,
    storage: str | None = None,
    quiet: bool = False,
) -> RunHandle:
    """Start (or resume) a run on the cluster and return at once."""
    config = _prepare(config, address, storage)
    run_id = run_id or new_run_id(config.run.name)
    if not resume and _store(run_id, config.checkpoint.storage, config.checkpoint.endpoint_url).list():
        raise ConfigError(
            f"run {run_id!r} already has checkpoints under {config.checkpoint.storage}; "
            "pass --resume to continue it, or choose another --run-id"
        )
    connect(config.cluster.address, config.cluster.namespace, quiet=quiet, dashboard=config.cluster.dashboard)
    _clear_finished_controller(run_id, config.cluster.namespace)
    options: dict[str, Any] = {
        "name": controller_name(run_id),
        "namespace": config.cluster.namespace,
        "lifetime": "detached",  # outlives the driver: a run keeps going when the laptop closes
        "max_restarts": -1,  # restarted on another node, it resumes from the latest checkpoint
        "max_task_retries": 0,
        # On the head: the one node whose loss loses the cluster anyway (spot and batch
        # nodes come and go). By the head's own resource rather than its node id: a soft
        # node affinity was seen to spill to a worker node, and a restarted head has a new id.
        "resources": {HEAD_NODE_RESOURCE: 0.001},
    }
    if config.cluster.runtime_env:  # user code travels with the run, not through a shared filesystem
        options["runtime_env"] = ship_runtime_env(config.cluster.runtime_env)
    actor = ControllerActor.options(**options).remote(config.to_dict(), run_id, resume)
    return RunHandle(run_id, actor, config, namespace=config.cluster.namespace)


def _clear_finished_controller(run_id: str, namespace: str) -> None:
    """A finished run's controller lingers for its driver; a resume under the same id replaces it."""
    name = controller_name(run_id)
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return
    try:
        state = ray.get(actor.status.remote(), timeout=30)["state"]
    except (RayActorError, ray.exceptions.GetTimeoutError):
        state = RunState.FAILED.value
    if not RunState(state).finished:
        raise ConfigError(f"run {run_id!r} is running already; follow it with `elasticfl status {run_id}` or stop it first")
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the name is released asynchronously
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return
        time.sleep(0.05)


def run(
    config: RunConfig,
    *,
    run_id: str | None = None,
    resume: bool = False,
    address: str | None = None,
    storage: str | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    raise_on_failure: bool = True,
    quiet: bool = False,
) -> RunResult:
    """Run to the end and return the outcome (raises RunFailedError if the run failed)."""
    handle = submit(config, run_id=run_id, resume=resume, address=address, storage=storage, quiet=quiet)
    result = handle.wait(on_round)
    if raise_on_failure and result.state == RunState.FAILED.value:
        raise RunFailedError(f"run {result.run_id} failed: {result.error}")
    return result


def attach(run_id: str, *, address: str | None = None, namespace: str = "elasticfl") -> RunHandle:
    """A handle on a running run's controller (RunNotFoundError if none is running)."""
    connect(address, namespace, quiet=True)
    try:
        actor = ray.get_actor(controller_name(run_id), namespace=namespace)
    except ValueError:
        raise RunNotFoundError(f"no running controller for run {run_id!r} in namespace {namespace!r}") from None
    return RunHandle(run_id, actor, owner=False, namespace=namespace)


def _store(run_id: str, storage: str | None, endpoint_url: str | None = None) -> CheckpointStore:
    env = Environment.read()
    return CheckpointStore(
        storage or env.storage or DEFAULT_STORAGE, run_id, endpoint_url=endpoint_url or env.s3_endpoint_url
    )


def status(run_id: str, *, storage: str | None = None, address: str | None = None, namespace: str = "elasticfl") -> dict[str, Any]:
    """A running run's status from its controller; a finished one's from storage."""
    address = address or Environment.read().ray_address
    if address is not None or ray.is_initialized():
        try:
            return attach(run_id, address=address, namespace=namespace).status()
        except (RunNotFoundError, RayActorError):  # finished (or its controller is restarting): read storage
            pass
    saved = _store(run_id, storage).read_json(STATUS_FILE)
    if saved is None:
        raise RunNotFoundError(
            f"run {run_id!r} is not running and has no status under its storage; "
            "check the run id and --storage (or ELASTICFL_STORAGE)"
        )
    return saved


def stop(run_id: str, *, abandon: bool = False, address: str | None = None, namespace: str = "elasticfl") -> None:
    attach(run_id, address=address or Environment.read().ray_address, namespace=namespace).stop(abandon)


def checkpoints(run_id: str, *, storage: str | None = None, verify: bool = True) -> list[CheckpointInfo]:
    return _store(run_id, storage).list(verify=verify)


# -- every run: live controllers and storage ----------------------------------------------------

def runs(*, storage: str | None = None, address: str | None = None, namespace: str = "elasticfl") -> list[dict[str, Any]]:
    """Every run the cluster (its live controllers) or the storage (run folders with a status)
    knows, newest first: each a status dict (run_id, state, round, rounds, updated_at, ...) with
    ``source``: "controller" (asked now) or "storage" (as its controller last wrote it).

    Like ``status``, the cluster is asked only when there is one to ask: ``address``,
    RAY_ADDRESS, or a Ray this process is connected to.
    """
    found = {info["run_id"]: info for info in _stored_runs(storage)}
    address = address or Environment.read().ray_address
    if address is not None or ray.is_initialized():
        connect(address, namespace, quiet=True)
        for info in _live_runs(namespace):
            found[info["run_id"]] = {**found.get(info["run_id"], {}), **info}
    return sorted(found.values(), key=lambda r: float(r.get("updated_at") or 0.0), reverse=True)


_CONTROLLER_PREFIX = controller_name("")


def _live_runs(namespace: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == namespace and a["name"].startswith(_CONTROLLER_PREFIX)
    )
    asked: dict[str, Any] = {}
    for name in names:
        try:
            asked[name] = ray.get_actor(name, namespace=namespace).status.remote()
        except ValueError:  # exited since it was listed
            continue
    ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=timeout_s) if asked else ([], [])
    answered = set(ready)
    out = []
    for name, ref in asked.items():
        if ref not in answered:
            continue  # being restarted, or busy: storage (if any) has its last state
        try:
            out.append({**ray.get(ref), "source": "controller"})
        except ray.exceptions.RayError:  # exited meanwhile
            continue
    return out


def _stored_runs(storage: str | None) -> list[dict[str, Any]]:
    env = Environment.read()
    root = storage or env.storage or DEFAULT_STORAGE
    ids = list_runs(root, endpoint_url=env.s3_endpoint_url)

    def read(run_id: str) -> dict[str, Any] | None:
        try:
            saved = _store(run_id, root).read_json(STATUS_FILE)
        except CheckpointError:  # a damaged status.json: list the run all the same
            return {"run_id": run_id, "state": "unknown", "source": "storage"}
        return None if saved is None else {**saved, "run_id": saved.get("run_id") or run_id, "source": "storage"}

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [info for info in pool.map(read, ids) if info is not None]
