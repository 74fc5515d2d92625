"""`elasticfl submit` (a run as a Ray job) and `elasticfl runs` (every run the cluster or storage knows).

Registered on the app by cli/main.py (``register(app, fail)``); they share its exit codes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.table import Table

import elasticfl
from elasticfl.api import runs as list_runs
from elasticfl.jobs import submit_job
from elasticfl.errors import ElasticFLError

EXIT_USAGE = 2
_CHATTY = ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging")
out = Console()
err = Console(stderr=True)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def register(app: typer.Typer, fail: Callable[[Exception], None]) -> None:
    @app.command()
    def submit(
        config: Path = typer.Argument(..., help="Path of a YAML run config, e.g. examples/digits.yaml."),
        address: Optional[str] = typer.Option(
            None, "--address", envvar="RAY_API_SERVER_ADDRESS",
            help="The cluster's job API: its dashboard, http://HEAD:8265 (or RAY_API_SERVER_ADDRESS).",
        ),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Checkpoint storage as the cluster sees it (s3://, gs://, or a shared folder)."
        ),
        run_id: Optional[str] = typer.Option(None, "--run-id", help="Name the run (default: NAME-TIME-XXXX)."),
        resume: bool = typer.Option(False, "--resume", help="Continue --run-id from its latest checkpoint."),
        rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Override run.rounds."),
        as_json: bool = typer.Option(False, "--json", help="Print the run id and job id as one JSON object."),
    ) -> None:
        """Submit a run as a Ray job: it runs on the cluster and outlives this machine.

        Prints the run id (chosen now, to follow at once) and the Ray job id, then exits.
        Follow the run with `elasticfl watch RUN_ID --address auto` on a node of the cluster.
        Token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token).
        """
        if resume and not run_id:
            err.print("[bold red]error:[/] --resume needs --run-id RUN_ID (see `elasticfl runs`)")
            raise typer.Exit(EXIT_USAGE)
        if not address:
            err.print(
                "[bold red]error:[/] submit needs the cluster's job API: --address http://HEAD:8265 "
                "(the Ray dashboard's address), or RAY_API_SERVER_ADDRESS",
                highlight=False,
            )
            raise typer.Exit(EXIT_USAGE)
        try:
            cfg = elasticfl.RunConfig.from_yaml(config)
            if rounds is not None:
                cfg = cfg.with_overrides(run={"rounds": rounds})
            import ray.job_submission  # noqa: F401 - its loggers set their level on import

            for name in _CHATTY:  # "Uploading package gcs://...": the config's folder, every time
                logging.getLogger(name).setLevel(logging.WARNING)
            job = submit_job(cfg, address=address, run_id=run_id, resume=resume, storage=storage)
        except ElasticFLError as exc:
            fail(exc)
        if as_json:
            _emit({"run_id": job.run_id, "job_id": job.job_id, "address": job.address, "storage": job.storage})
            return
        host = urlparse(job.address).hostname or "HEAD"
        out.print(f"submitted run [bold]{job.run_id}[/] as Ray job [bold]{job.job_id}[/]", highlight=False, soft_wrap=True)
        for label, text in (
            ("storage", job.storage),
            ("watch", f"elasticfl watch {job.run_id} --address auto   (on a node of the cluster; "
                      f"elsewhere --address {host}:6379, the cluster's GCS address)"),
            ("status", f"elasticfl status {job.run_id} --storage {job.storage}"),
            ("stop", f"elasticfl stop {job.run_id} --address auto"),
            ("job logs", f"ray job logs {job.job_id} --address {job.address} --follow"),
        ):  # fmt: skip
            out.print(f"  {label + ':':<10}{text}", highlight=False, markup=False, soft_wrap=True)

    @app.command()
    def runs(
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Checkpoint storage to list (folder, file://, s3://, gs://)."
        ),
        address: Optional[str] = typer.Option(
            None, "--address",
            help="Also ask this Ray cluster's live controllers ('auto', host:port); none: RAY_ADDRESS, else storage only.",
        ),
        namespace: str = typer.Option("elasticfl", "--namespace", help="Ray namespace the runs' controllers live in."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
    ) -> None:
        """List every run the cluster (live controllers) or the storage knows, newest first."""
        try:
            found = list_runs(storage=storage, address=address, namespace=namespace)
        except ElasticFLError as exc:
            fail(exc)
        if as_json:
            for info in found:
                _emit(info)
            return
        if not found:
            err.print("no runs found (check --storage or ELASTICFL_STORAGE, and --address for live runs)")
            return
        table = Table("run id", "state", "round", "updated", "from")
        now = time.time()
        for info in found:
            updated = info.get("updated_at")
            table.add_row(
                str(info["run_id"]),
                str(info.get("state")),
                f"{info.get('round', '?')}/{info.get('rounds', '?')}",
                _ago(now - float(updated)) if updated else "-",
                str(info.get("source")),
            )
        out.print(table)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"
