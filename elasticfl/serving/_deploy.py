"""Deploying the app: ``elasticfl.serve(...)`` and the handle it returns."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_STORAGE, Environment
from ..errors import ClusterError, ConfigError
from ._inputs import RUN_ID, hash_token
from ._options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RELOAD_S,
    ENDPOINTS,
    MIN_TOKEN_CHARS,
    ServeOptions,
)

__all__ = ["serve", "ServeHandle", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_APP_NAME"]

log = logging.getLogger("elasticfl.serving")

DEFAULT_HOST = "127.0.0.1"  # Serve's HTTP port is outside Ray's token authentication, and plain HTTP
DEFAULT_PORT = 8000
DEFAULT_APP_NAME = "elasticfl"


@dataclass
class ServeHandle:
    """A deployed app: its URL, and ``shutdown()`` to take it down again."""

    url: str
    name: str
    host: str
    port: int
    route_prefix: str
    storage: str
    token_configured: bool
    public_predict: bool
    run_id: str | None = None
    _started_serve: bool = field(default=False, repr=False)
    _down: bool = field(default=False, repr=False)

    @property
    def endpoints(self) -> list[str]:
        return list(ENDPOINTS)

    def shutdown(self) -> None:
        """Delete the app. Serve itself (its proxy, the port) goes too if this call started it
        and no other app is left on it."""
        if self._down:
            return
        import ray
        from ray import serve as ray_serve

        self._down = True
        if not ray.is_initialized():  # Ray is gone, and the app with it (or it lives on a cluster we left)
            log.warning("not connected to Ray: Serve app %r was not deleted", self.name)
            return
        ray_serve.delete(self.name)
        if self._started_serve and not ray_serve.status().applications:
            ray_serve.shutdown()

    def __enter__(self) -> "ServeHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def serve(
    storage: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    address: str | None = None,
    namespace: str = "elasticfl",
    run_id: str | None = None,
    public_predict: bool = False,
    reload_s: float = DEFAULT_RELOAD_S,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    num_replicas: int = 1,
    num_cpus: float = 0.0,
    name: str = DEFAULT_APP_NAME,
    route_prefix: str = "/",
    quiet: bool = True,
) -> ServeHandle:
    """Deploy the elasticfl app on Ray Serve and return its handle (``.url``, ``.shutdown()``).

    ``token`` (default: ``$ELASTICFL_SERVE_TOKEN``) guards ``POST /runs/{id}/stop`` and, unless
    ``public_predict``, ``POST /predict``; without one those endpoints answer 403. The HTTP proxy
    runs on the head node only, listening on ``host:port`` (loopback by default). ``storage``
    (default: ``$ELASTICFL_STORAGE``, else ./elasticfl-runs) is where the runs' checkpoints are.
    ``run_id`` pins /predict to that run. Replicas ask Ray for ``num_cpus`` (0: they fit anywhere).
    """
    env = Environment.read()
    token = token if token is not None else env.serve_token
    _check(token=token, port=port, run_id=run_id, reload_s=reload_s, max_batch=max_batch,
           max_body_bytes=max_body_bytes, num_replicas=num_replicas, num_cpus=num_cpus, route_prefix=route_prefix)
    store = storage or env.storage or DEFAULT_STORAGE
    if "://" not in store:  # a local folder: absolute, for replicas started elsewhere
        store = Path(store).expanduser().resolve().as_uri()
    options = ServeOptions(
        storage=store,
        endpoint_url=env.s3_endpoint_url,
        namespace=namespace,
        token_sha256=hash_token(token) if token else None,
        public_predict=public_predict,
        run_id=run_id,
        reload_s=float(reload_s),
        max_batch=int(max_batch),
        max_body_bytes=int(max_body_bytes),
    )

    from ..runtime import connect

    connect(address, namespace, quiet=quiet, dashboard=False)
    from ray import serve as ray_serve

    from ._app import ElasticFLApp

    started = _start_serve(host, port)
    app = ElasticFLApp.options(
        name="ElasticFLApp", num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus}
    ).bind(options)
    try:
        ray_serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
    except Exception:
        if started and not ray_serve.status().applications:
            ray_serve.shutdown()
        raise
    shown = _shown_host(host)
    prefix = "" if route_prefix == "/" else route_prefix.rstrip("/")
    return ServeHandle(
        url=f"http://{shown}:{port}{prefix}",
        name=name,
        host=host,
        port=port,
        route_prefix=route_prefix,
        storage=store,
        token_configured=bool(token),
        public_predict=public_predict,
        run_id=run_id,
        _started_serve=started,
    )


def _check(*, token, port, run_id, reload_s, max_batch, max_body_bytes, num_replicas, num_cpus, route_prefix) -> None:
    problems = []
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        problems.append(
            f"the serve token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if token is not None and (token != token.strip() or any(c.isspace() for c in token)):
        problems.append("the serve token must not contain whitespace")
    if run_id is not None and (not isinstance(run_id, str) or not RUN_ID.match(run_id)):
        problems.append(f"run_id={run_id!r}: use letters, digits, '.', '_' or '-'")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"port={port!r}: use 1-65535")
    if reload_s < 0:
        problems.append(f"reload_s={reload_s}: must be >= 0")
    if max_batch < 1 or max_body_bytes < 1:
        problems.append(f"max_batch={max_batch}, max_body_bytes={max_body_bytes}: both must be >= 1")
    if num_replicas < 1 or num_cpus < 0:
        problems.append(f"num_replicas={num_replicas}, num_cpus={num_cpus}: need num_replicas >= 1, num_cpus >= 0")
    if not isinstance(route_prefix, str) or not route_prefix.startswith("/"):
        problems.append(f"route_prefix={route_prefix!r}: must start with '/'")
    if problems:
        raise ConfigError("serve: " + "; ".join(problems))


def _start_serve(host: str, port: int) -> bool:
    """Start Serve with one HTTP proxy, on the head node; True if this call started it.

    Serve's HTTP options are fixed while it runs: if it runs already on another host or
    port, say so rather than deploy where nobody looks.
    """
    from ray import serve as ray_serve

    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # Serve's internals moved: fall back to its own warning
        client = None
    if client is not None:
        current = client.http_config
        if (current.host, current.port) != (host, port):
            raise ConfigError(
                f"Ray Serve already runs on this cluster, listening on {current.host}:{current.port}; its HTTP "
                f"options cannot change while it runs. Use host={current.host!r} port={current.port} "
                "(--host/--port), or shut Serve down first (`serve shutdown`)"
            )
        return False
    try:
        ray_serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    except TimeoutError as exc:
        raise ClusterError(
            f"Ray Serve's HTTP proxy did not come up on {host}:{port} ({exc}); is the port in use? "
            "Choose another with --port"
        ) from exc
    return True


def _shown_host(host: str) -> str:
    """The host to put in the URL: the head's address when listening on every interface."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    if not unspecified:
        return f"[{host}]" if ":" in host else host
    import ray

    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeManagerAddress"]
    return host
