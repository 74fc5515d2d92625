"""The Python API: submit or run a config, follow it, stop it, inspect finished runs.

    import elasticfl
    result = elasticfl.run(elasticfl.RunConfig.from_yaml("examples/digits.yaml"))
    handle = elasticfl.submit(config)      # handle.status(), handle.watch(), handle.wait(), handle.stop()
    job = elasticfl.submit_job(config, address="http://HEAD:8265")  # a Ray job: outlives this process
    elasticfl.runs(storage="s3://bucket/runs", address="auto")     # every run the cluster or storage knows
"""

from __future__ import annotations

import os
import secrets
import shlex
import tempfile
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
from .errors import CheckpointError, ClusterError, ConfigError, RunFailedError, RunNotFoundError, StorageError
from .runtime import ControllerActor, connect, controller_name, ship_runtime_env

__all__ = [
    "run", "submit", "submit_job", "attach", "status", "stop", "runs", "checkpoints",
    "RunHandle", "RunResult", "SubmittedJob", "new_run_id",
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

    def stop(self) -> None:
        """Graceful: the round in flight finishes and is checkpointed, then the run stops."""
        ray.get(self._actor.stop.remote())

    def rounds(self, poll_s: float = _POLL_S) -> Iterator[dict[str, Any]]:
        """Yield each round's history record as it completes, until the run finishes.

        A resumed run's earlier rounds (from its checkpoint) go into ``history``
        without being yielded again.
        """
        while True:
            status, new = self._fetch()
            self._last_status = status
            for record in new:
                self._seen = record["round"]
                self.history.append(record)
                if record["round"] > (status.get("resumed_from") or 0):
                    yield record
            if RunState(status["state"]).finished:
                return
            time.sleep(poll_s)

    def watch(self, poll_s: float = _POLL_S) -> Iterator[dict[str, Any]]:
        """Yield every round record of the run: those done so far first (a resumed run's
        included), then each round as it completes, until the run finishes.

        ``rounds()`` yields only the rounds this run completes from now on; ``watch()`` is
        what ``elasticfl watch`` shows, for a handle from ``attach()`` in particular.
        """
        shown = 0
        while True:
            status, new = self._fetch()
            self._last_status = status
            for record in new:
                self._seen = record["round"]
                self.history.append(record)
            while shown < len(self.history):
                shown += 1
                yield self.history[shown - 1]
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


def stop(run_id: str, *, address: str | None = None, namespace: str = "elasticfl") -> None:
    attach(run_id, address=address or Environment.read().ray_address, namespace=namespace).stop()


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


# -- a run as a Ray job -------------------------------------------------------------------------

JOB_CONFIG_FILE = "elasticfl-run.yaml"  # the config, as the job's driver reads it
_JOB_METADATA_RUN_ID = "elasticfl_run_id"


@dataclass
class SubmittedJob:
    """A run submitted as a Ray job: follow it by ``run_id`` (``attach``, ``status``, ``elasticfl
    watch``), or its driver by ``job_id`` (``ray job logs/status/stop``, the dashboard's Jobs page)."""

    run_id: str
    job_id: str
    address: str  # the job API (dashboard) address it was submitted to
    storage: str  # where the run's checkpoints, history and status go
    entrypoint: str


def submit_job(
    config: RunConfig,
    *,
    address: str,
    run_id: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    submission_timeout_s: float = 60.0,
) -> SubmittedJob:
    """Submit a run as a Ray job (Ray's job submission API) and return at once.

    The job's driver is ``elasticfl run`` on the cluster, so the run needs nothing from this
    process once submitted: unlike ``submit``, whose driver is this process, it outlives the
    laptop that started it. ``address`` is the cluster's job API, the dashboard:
    ``http://HEAD:8265``. The run id is chosen here, so the run can be followed at once.

    Clusters with token authentication (Ray's default since 2.52) need RAY_AUTH_MODE=token and
    the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) here.
    """
    _check_job_address(address)
    env = Environment.read()
    store = storage or config.resolved_storage(env)
    if "://" not in store:  # a local folder: absolute, as `run` makes it; the job's cwd is a temp dir
        store = Path(store).expanduser().resolve().as_uri()
    run_id = run_id or new_run_id(config.run.name)
    endpoint = config.resolved_endpoint(env)
    target = _store(run_id, store, endpoint)  # checks the run id too
    if not resume:
        try:
            taken = bool(target.list())
        except StorageError:  # storage this machine cannot reach: the job's driver checks it
            taken = False
        if taken:
            raise ConfigError(
                f"run {run_id!r} already has checkpoints under {store}; "
                "pass --resume to continue it, or choose another --run-id"
            )
    client = _job_client(address)
    runtime_env = _upload_runtime_env(client, dict(config.cluster.runtime_env), address)
    shipped = config.with_overrides(
        checkpoint={"storage": store, "endpoint_url": endpoint},
        # The driver joins the cluster its job runs on (Ray sets RAY_ADDRESS for it).
        cluster={"address": None, "runtime_env": runtime_env},
    )
    args = ["elasticfl", "run", JOB_CONFIG_FILE, "--run-id", run_id, "--storage", store]
    if resume:
        args.append("--resume")
    entrypoint = shlex.join(args)
    with tempfile.TemporaryDirectory(prefix="elasticfl-job-") as folder:
        Path(folder, JOB_CONFIG_FILE).write_text(shipped.to_yaml())
        job_id = _submit(
            client,
            address,
            submission_timeout_s,
            entrypoint=entrypoint,
            submission_id=f"elasticfl-{run_id}-{secrets.token_hex(2)}",
            runtime_env={"working_dir": folder},
            metadata={_JOB_METADATA_RUN_ID: run_id, "elasticfl_storage": store},
        )
    return SubmittedJob(run_id=run_id, job_id=job_id, address=address, storage=store, entrypoint=entrypoint)


_AUTH_HELP = (
    "Set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or a file named by "
    "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token); on the head node, `ray get-auth-token` prints it."
)


def _token_source() -> str | None:
    """Where Ray would read this process's auth token from, if anywhere."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH ({path})" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return "~/.ray/auth_token" if default.is_file() and default.read_text().strip() else None


def _auth_error(address: str, exc: BaseException) -> ClusterError:
    text = str(exc)
    mode, source = os.environ.get("RAY_AUTH_MODE"), _token_source()
    if "invalid" in text.lower() or "failed" in text.lower() or " 403" in text:
        why = f"rejected the token from {source or 'RAY_AUTH_TOKEN'}: it is not the cluster's token"
    elif (mode or "").lower() != "token":
        why = (
            f"requires token authentication, and no token was sent: RAY_AUTH_MODE is "
            f"{'unset' if mode is None else repr(mode)}, not 'token'"
            + (f" (a token is in {source}, sent only with RAY_AUTH_MODE=token)" if source else "")
        )
    else:
        why = "requires token authentication, and no token was found (RAY_AUTH_MODE=token is set)"
    return ClusterError(f"the Ray cluster at {address} {why}. {_AUTH_HELP}")


def _check_job_address(address: str) -> None:
    if not address or "://" not in address:
        raise ConfigError(
            f"--address {address!r}: a run is submitted to the cluster's job API, its dashboard: "
            "http://HEAD:8265 (not the GCS host:port that `run`, `watch` and `status` take)"
        )


def _job_client(address: str) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    _check_job_address(address)
    if (os.environ.get("RAY_AUTH_MODE") or "").lower() == "token" and _token_source() is None:
        raise ClusterError(f"RAY_AUTH_MODE=token is set but there is no token to send to {address}. {_AUTH_HELP}")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise _auth_error(address, exc) from None
    except (ConnectionError, OSError) as exc:
        raise ClusterError(
            f"cannot reach the Ray job API at {address} ({exc}); pass the dashboard address of the "
            "cluster's head, http://HEAD:8265 (check it is reachable from here, e.g. through `ray dashboard` "
            "or an SSH tunnel)"
        ) from None
    except RuntimeError as exc:
        raise ClusterError(f"the Ray job API at {address} refused the connection: {exc}") from None


def _upload_runtime_env(client: Any, runtime_env: dict[str, Any], address: str) -> dict[str, Any]:
    """The run's own code (cluster.runtime_env local working_dir / py_modules) goes to the cluster
    now, from here, where its paths make sense; the shipped config names the uploaded packages."""
    if not any(k in runtime_env for k in ("working_dir", "py_modules")):
        return runtime_env
    from ray.exceptions import AuthenticationError

    try:
        client._upload_working_dir_if_needed(runtime_env)
        client._upload_py_modules_if_needed(runtime_env)
    except AuthenticationError as exc:
        raise _auth_error(address, exc) from None
    except AttributeError as exc:  # Ray moved its internals
        raise ClusterError(
            "this Ray version cannot upload cluster.runtime_env paths through the job API; "
            "use URIs (e.g. s3://.../code.zip) in cluster.runtime_env"
        ) from exc
    runtime_env.pop("excludes", None)
    return runtime_env


def _submit(client: Any, address: str, timeout_s: float, **job: Any) -> str:
    from ray.exceptions import AuthenticationError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except AuthenticationError as exc:
            raise _auth_error(address, exc) from None
        except (ConnectionError, OSError) as exc:
            raise ClusterError(f"cannot reach the Ray job API at {address}: {exc}") from None
        except RuntimeError as exc:
            # A cluster that just started has no job agent for a few seconds.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise ClusterError(f"the Ray job API at {address} did not take the run: {exc}") from None
