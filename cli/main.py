"""The `elasticfl` command: every command parses, builds a config, and calls the library.

Exit codes: 0 completed (or stopped on request), 1 the run failed, 2 a usage or
config error, 3 the run was not found, 4 the cluster or storage could not be reached.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import elasticfl
from elasticfl.errors import (
    CheckpointError,
    ClusterError,
    ConfigError,
    ElasticFLError,
    RunNotFoundError,
    StorageError,
    TaskError,
)

app = typer.Typer(
    name="elasticfl",
    help="Elastic federated learning on Ray: run, follow, stop and resume FL runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 1, 2, 3, 4

ConfigArg = typer.Argument(..., help="Path of a YAML run config, e.g. examples/digits.yaml.")
StorageOpt = typer.Option(None, "--storage", help="Checkpoint storage (folder, file://, s3://, gs://).")
AddressOpt = typer.Option(None, "--address", help="Ray cluster address ('auto', host:port); none: local Ray.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output: one JSON object per line.")
NamespaceOpt = typer.Option("elasticfl", "--namespace", help="Ray namespace the run's actors live in.")


def _fail(exc: Exception) -> None:
    """User errors end with a message and an exit code, never a traceback."""
    code = {
        ConfigError: EXIT_USAGE,
        TaskError: EXIT_USAGE,
        RunNotFoundError: EXIT_NOT_FOUND,
        ClusterError: EXIT_UNREACHABLE,
        StorageError: EXIT_UNREACHABLE,
        CheckpointError: EXIT_FAILED,
    }
    exit_code = next((c for cls, c in code.items() if isinstance(exc, cls)), EXIT_FAILED)
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def _load(path: Path, rounds: Optional[int] = None) -> elasticfl.RunConfig:
    config = elasticfl.RunConfig.from_yaml(path)
    if rounds is not None:
        config = config.with_overrides(run={"rounds": rounds})
    return config


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


@app.command()
def validate(config: Path = ConfigArg) -> None:
    """Check a config file and print it with every default filled in."""
    try:
        cfg = _load(config)
    except ElasticFLError as exc:
        _fail(exc)
    out.print(f"[green]ok[/]: {config}", highlight=False)
    out.print(cfg.to_yaml(), highlight=False, markup=False)


@app.command()
def run(
    config: Path = ConfigArg,
    address: Optional[str] = AddressOpt,
    storage: Optional[str] = StorageOpt,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Name the run (default: NAME-TIME-XXXX)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --run-id from its latest checkpoint."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Override run.rounds."),
    as_json: bool = JsonOpt,
) -> None:
    """Run a config to the end, showing progress (Ctrl-C stops it gracefully)."""
    if resume and not run_id:
        err.print("[bold red]error:[/] --resume needs --run-id RUN_ID (see `elasticfl checkpoints`)")
        raise typer.Exit(EXIT_USAGE)
    try:
        cfg = _load(config, rounds)
        handle = elasticfl.submit(cfg, run_id=run_id, resume=resume, address=address, storage=storage, quiet=True)
        if not as_json:
            out.print(f"run [bold]{handle.run_id}[/] started ({cfg.run.rounds} rounds)", highlight=False)
        result = _follow(handle, cfg.run.rounds, as_json)
    except ElasticFLError as exc:
        _fail(exc)
    final = {
        "run_id": result.run_id,
        "state": result.state,
        "round": result.round,
        "rounds": result.rounds,
        "metrics": result.metrics,
        "checkpoint": result.checkpoint,
        "weights_sha256": result.weights_sha256,
        "error": result.error,
        "error_type": result.error_type,
    }
    if as_json:
        _emit(final)
    else:
        _summary(final)
    if result.state == "failed":
        # errors the user can fix (config, their code, the cluster) keep their own exit codes
        kinds = {"ConfigError": EXIT_USAGE, "TaskError": EXIT_USAGE, "ClusterError": EXIT_UNREACHABLE, "StorageError": EXIT_UNREACHABLE}
        raise typer.Exit(kinds.get(result.error_type or "", EXIT_FAILED))


def _follow(handle: Any, rounds: int, as_json: bool) -> Any:
    def on_round_json(record: dict[str, Any]) -> None:
        _emit(_round_line(record))

    if as_json:
        return _wait_interruptibly(handle, on_round_json)
    columns = (
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        bar = progress.add_task("rounds", total=rounds, info="starting executors...")
        status = handle.status()
        progress.update(bar, completed=status["round"])

        def on_round(record: dict[str, Any]) -> None:
            line = _round_line(record)
            info = f"clients {line['clients_ok']} ok / {line['clients_failed']} failed"
            if "accuracy" in line:
                info = f"loss {line['loss']:.4f}  acc {line['accuracy']:.4f}  " + info
            progress.update(bar, completed=record["round"], info=info)

        return _wait_interruptibly(handle, on_round)


def _wait_interruptibly(handle: Any, on_round: Any) -> Any:
    try:
        return handle.wait(on_round)
    except KeyboardInterrupt:
        err.print("stopping after the round in flight (Ctrl-C again to leave at once)...")
        handle.stop()
        return handle.wait(on_round)


def _round_line(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": record["round"],
        **record["metrics"],
        "clients_ok": record["clients_ok"],
        "clients_failed": record["clients_failed"],
        "duration_s": record["duration_s"],
    }


def _summary(final: dict[str, Any]) -> None:
    color = {"completed": "green", "stopped": "yellow"}.get(final["state"], "red")
    out.print(f"[{color}]{final['state']}[/] after {final['round']}/{final['rounds']} rounds", highlight=False)
    for key in ("accuracy", "loss"):
        if key in final["metrics"]:
            out.print(f"  {key}: {final['metrics'][key]:.4f}", highlight=False)
    out.print(f"  checkpoint: {final['checkpoint']}", highlight=False, soft_wrap=True)
    out.print(f"  weights_sha256: {final['weights_sha256']}", highlight=False, soft_wrap=True)
    out.print(f"  run id: {final['run_id']}", highlight=False)
    if final["error"]:
        out.print(f"  error: {final['error']}", highlight=False, soft_wrap=True)


@app.command()
def status(
    run_id: str = typer.Argument(..., help="The run id printed by `elasticfl run`."),
    storage: Optional[str] = StorageOpt,
    address: Optional[str] = AddressOpt,
    namespace: str = NamespaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A run's state: asks its controller if running, else reads its storage."""
    try:
        info = elasticfl.status(run_id, storage=storage, address=address, namespace=namespace)
    except ElasticFLError as exc:
        _fail(exc)
    if as_json:
        _emit(info)
        return
    table = Table(show_header=False, box=None)
    for key in ("run_id", "state", "round", "rounds", "metrics", "checkpoint", "weights_sha256", "error"):
        table.add_row(key, str(info.get(key)))
    out.print(table)


@app.command()
def stop(
    run_id: str = typer.Argument(..., help="The run to stop."),
    address: Optional[str] = AddressOpt,
    namespace: str = NamespaceOpt,
) -> None:
    """Stop a running run gracefully: the round in flight finishes and is checkpointed."""
    try:
        elasticfl.stop(run_id, address=address, namespace=namespace)
    except ElasticFLError as exc:
        _fail(exc)
    out.print(f"stop requested for {run_id}")


@app.command()
def checkpoints(
    run_id: str = typer.Argument(..., help="The run whose checkpoints to list."),
    storage: Optional[str] = StorageOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List a run's checkpoints, verifying each one's checksums."""
    try:
        infos = elasticfl.checkpoints(run_id, storage=storage)
    except ElasticFLError as exc:
        _fail(exc)
    if as_json:
        for info in infos:
            _emit(
                {
                    "round": info.round,
                    "uri": info.uri,
                    "valid": info.valid,
                    "reason": info.reason,
                    "size_bytes": info.size_bytes,
                    "created_at": info.created_at,
                }
            )
        return
    if not infos:
        err.print(f"no checkpoints for run {run_id!r}")
        raise typer.Exit(EXIT_NOT_FOUND)
    table = Table("round", "valid", "size", "created", "uri")
    for info in infos:
        valid = "yes" if info.valid else f"no: {info.reason}"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created_at))
        table.add_row(str(info.round), valid, f"{info.size_bytes / 1e6:.2f} MB", created, info.uri)
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
