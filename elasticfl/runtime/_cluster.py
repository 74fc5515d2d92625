"""Connecting to Ray: the embedded local instance or an existing cluster."""

from __future__ import annotations

import logging
from typing import Any

import ray

from ..errors import ClusterError

__all__ = ["connect", "controller_name"]


def controller_name(run_id: str) -> str:
    return f"controller/{run_id}"


def connect(address: str | None, namespace: str, *, quiet: bool = False) -> None:
    """Start the embedded local Ray (address None) or join the cluster at ``address``.

    Reuses a connection this process already has. Token authentication (on by
    default since Ray 2.52) is left to Ray: the embedded instance makes its own
    token; a cluster's token comes from RAY_AUTH_TOKEN / ~/.ray/auth_token.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"namespace": namespace, "ignore_reinit_error": True}
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
