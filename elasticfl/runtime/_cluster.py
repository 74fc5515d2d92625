"""Connecting to Ray: the embedded local instance or an existing cluster."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from ..config import Environment
from ..errors import ClusterError

__all__ = ["connect", "controller_name", "ship_runtime_env"]


def controller_name(run_id: str) -> str:
    return f"controller/{run_id}"


def connect(address: str | None, namespace: str, *, quiet: bool = False, dashboard: bool = True) -> None:
    """Start the embedded local Ray (address None) or join the cluster at ``address``.

    Reuses a connection this process already has. Token authentication (on by
    default since Ray 2.52) is left to Ray: the embedded instance makes its own
    token; a cluster's token comes from RAY_AUTH_TOKEN / ~/.ray/auth_token.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": namespace, "ignore_reinit_error": True}
    if address is None:
        # $RAY_ADDRESS (set for Ray Jobs' drivers) names the cluster; otherwise a new local
        # Ray, never whichever other Ray happens to run on this machine.
        address = Environment.read().ray_address or "local"
    if address == "local":
        kwargs["include_dashboard"] = dashboard
    if quiet:
        kwargs.update(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); check cluster.address / --address "
            "(omit it to start a local Ray) and that RAY_AUTH_TOKEN matches the cluster's token"
        ) from exc
    except Exception as exc:
        if "auth" in str(exc).lower() or "token" in str(exc).lower():
            raise ClusterError(
                f"Ray refused the connection to {address!r}: {exc}. The cluster uses token "
                "authentication: set RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token"
            ) from exc
        raise


def ship_runtime_env(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """Upload local ``working_dir`` / ``py_modules`` to the cluster and return URIs in their place.

    Ray uploads local paths only for the job-level runtime_env given to
    ``ray.init``; a run's own code must reach its controller and executors even
    when this driver connected earlier (a notebook, a test session, two runs with
    different code). So do what ``ray.init`` does, per run.
    """
    if not runtime_env or not any(k in runtime_env for k in ("working_dir", "py_modules")):
        return runtime_env
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    except ImportError as exc:  # Ray moved its internals: fall back to URIs only
        raise ClusterError(
            "this Ray version cannot upload cluster.runtime_env paths per run; pass URIs "
            "(e.g. s3://.../code.zip) or start Ray with ray.init(runtime_env=...)"
        ) from exc
    scratch = ray._private.worker.global_worker.node.get_runtime_env_dir_path()
    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    env = upload_py_modules_if_needed(dict(runtime_env), include_gitignore=include_gitignore, scratch_dir=scratch)
    env = upload_working_dir_if_needed(env, include_gitignore=include_gitignore, scratch_dir=scratch)
    env.pop("excludes", None)
    return env
