"""`elasticfl serve`: deploy the Ray Serve app, print its URL and endpoints, block until Ctrl-C.

Registered on the app by cli/main.py (``register(app, _fail)``), like `report`: it takes
main's error handler rather than importing main (see cli/_report.py for why).
"""

from __future__ import annotations

import ipaddress
import signal
import time
from typing import Any, Callable, NoReturn, Optional

import typer
from rich.console import Console

from elasticfl.config import Environment
from elasticfl.errors import ElasticFLError

out = Console()
err = Console(stderr=True)

EXIT_FAILED = 1


def register(app: typer.Typer, fail: Callable[[Exception], NoReturn]) -> None:
    """Add the `serve` command to ``app``; ``fail`` turns an ElasticFLError into a message and exit code."""

    @app.command()
    def serve(
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Checkpoint storage the runs live in (folder, file://, s3://, gs://)."
        ),
        host: str = typer.Option(
            "127.0.0.1", "--host", help="Address the HTTP proxy listens on (0.0.0.0: every interface)."
        ),
        port: int = typer.Option(8000, "--port", help="HTTP port of the proxy on the head node."),
        token_env: str = typer.Option(
            "ELASTICFL_SERVE_TOKEN", "--token-env", help="Environment variable holding the bearer token."
        ),
        address: Optional[str] = typer.Option(
            None, "--address", help="Ray cluster address ('auto', host:port); none: RAY_ADDRESS, else a local Ray."
        ),
        namespace: str = typer.Option("elasticfl", "--namespace", help="Ray namespace the runs' actors live in."),
        run_id: Optional[str] = typer.Option(
            None, "--run-id", help="Serve predictions of this run only (requests may omit run_id)."
        ),
        public_predict: bool = typer.Option(
            False, "--public-predict", help="POST /predict without a token (stop still needs one)."
        ),
        reload_s: float = typer.Option(5.0, "--reload-s", min=0, help="Look for a newer checkpoint at most this often."),
        max_batch: int = typer.Option(1024, "--max-batch", min=1, help="Most rows per /predict request."),
        replicas: int = typer.Option(1, "--replicas", min=1, help="Replicas of the app (each asks for 0 CPUs)."),
        name: str = typer.Option("elasticfl", "--name", help="Serve application name (a second app needs another)."),
        route_prefix: str = typer.Option("/", "--route-prefix", help="URL path the app is served under."),
    ) -> None:
        """Serve runs over HTTP with Ray Serve: status, history, stop, and predictions.

        GET /runs, /runs/RUN_ID, /runs/RUN_ID/history; POST /runs/RUN_ID/stop; POST /predict,
        answered with the run's latest checkpoint, reloaded when a newer one lands.

        Stop and predict need 'Authorization: Bearer TOKEN', the token being read from the
        variable --token-env names (never from the command line); without one, they are disabled.

        Blocks until Ctrl-C, then deletes the app.
        """
        import elasticfl

        token = Environment.read(serve_token_var=token_env).serve_token
        try:
            handle = elasticfl.serve(
                storage=storage,
                host=host,
                port=port,
                token=token,
                address=address,
                namespace=namespace,
                run_id=run_id,
                public_predict=public_predict,
                reload_s=reload_s,
                max_batch=max_batch,
                num_replicas=replicas,
                name=name,
                route_prefix=route_prefix,
            )
        except ElasticFLError as exc:
            fail(exc)
        except Exception as exc:  # Serve refused the deployment: say why, without a traceback
            err.print(f"[bold red]error:[/] could not deploy the Serve app: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED)
        _show(handle, token_env, token is not None)
        _block_until_interrupted()
        err.print(f"deleting Serve app {handle.name!r}...", highlight=False)
        handle.shutdown()


def _show(handle: Any, token_env: str, has_token: bool) -> None:
    out.print(f"Serve app [bold]{handle.name}[/] at [bold]{handle.url}[/]", highlight=False, soft_wrap=True)
    out.print(f"  runs from {handle.storage}", highlight=False, soft_wrap=True)
    for line in handle.endpoints:
        method, _, rest = line.partition(" ")
        out.print(f"  {method:<5}{handle.url}{rest.strip()}", highlight=False, markup=False, soft_wrap=True)
    if has_token:
        out.print(f"  stop{'' if handle.public_predict else ' and predict'} need 'Authorization: Bearer $"
                  f"{token_env}'", highlight=False, markup=False)
    else:
        err.print(
            f"  {token_env} is not set: stop is disabled"
            + ("" if handle.public_predict else " and so is predict (or pass --public-predict)")
            + f"; set {token_env} and run again to enable it",
            highlight=False,
            markup=False,
        )
    if handle.public_predict:
        out.print("  predict is public (--public-predict): anyone who reaches the port can query the models",
                  highlight=False)
    if not _is_loopback(handle.host):
        err.print(
            f"  listening on {handle.host}: Serve speaks plain HTTP and its port is outside Ray's token "
            "authentication; expose it only on a trusted network or behind a TLS proxy",
            highlight=False,
        )
    out.print("Ctrl-C deletes the app.", highlight=False)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _block_until_interrupted() -> None:
    """Wait for Ctrl-C; SIGTERM (a service manager's stop) counts as one."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
