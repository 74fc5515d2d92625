"""Runs as Ray jobs: the run's driver (`elasticfl run`) runs on the cluster, so the run
needs nothing from the machine that submitted it.

    job = elasticfl.submit_job(config, address="http://HEAD:8265", storage="s3://bucket/runs")
    elasticfl.attach(job.run_id, address="auto").watch()
"""

from __future__ import annotations

import os
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import _store, new_run_id
from .config import Environment, RunConfig
from .errors import ClusterError, ConfigError, StorageError

__all__ = ["submit_job", "SubmittedJob"]

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
