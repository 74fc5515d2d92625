"""The `elasticfl` command: every command parses, builds a config, and calls the library.

Exit codes: 0 completed (or stopped on request), 1 the run failed, 2 a usage or
config error, 3 the run was not found, 4 the cluster or storage could not be reached,
130 `watch` left on Ctrl-C (the run goes on).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import ray
import typer
from ray.exceptions import ActorUnavailableError, RayActorError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from elasticfl.config import DEFAULT_STORAGE, Environment
from elasticfl.controller import STATUS_FILE, RunState
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
EXIT_INTERRUPTED = 130  # Ctrl-C in `watch`: the run goes on, its outcome is not known yet

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
        # `ray job stop`, Slurm and Kubernetes end a driver with SIGTERM: a graceful stop, as Ctrl-C is.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        result = _follow(handle, as_json)
    except ElasticFLError as exc:
        _fail(exc)
    _finish(_final(result), as_json)


@app.command()
def watch(
    run_id: str = typer.Argument(..., help="The run id printed by `elasticfl run` (or RunHandle.run_id)."),
    address: Optional[str] = typer.Option(
        None, "--address", help="The Ray cluster the run is on ('auto', host:port); none: RAY_ADDRESS, else storage only."
    ),
    storage: Optional[str] = StorageOpt,
    namespace: str = NamespaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Follow a run by id until it ends, as `run` shows it; exit with the run's exit code.

    Shows the rounds done so far, then each round as it completes. Ctrl-C stops
    watching only: the run goes on (stop it with `elasticfl stop RUN_ID`). A run
    whose controller is gone is shown from its storage (--storage).
    """
    try:
        handle, looked = _live_controller(run_id, address, namespace)
        if handle is None:
            _from_storage(run_id, storage, looked, as_json)
            return
        if not as_json:
            out.print(
                f"watching run [bold]{run_id}[/] (Ctrl-C stops watching; the run goes on)", highlight=False
            )
        try:
            result = _follow(handle, as_json, watching=True)
        except RunNotFoundError:  # its controller exited while we watched: storage has the outcome
            seen = handle.history[-1]["round"] if handle.history else 0
            _from_storage(run_id, storage, looked, as_json, after_round=seen)
            return
    except ElasticFLError as exc:
        _fail(exc)
    _finish(_final(result), as_json)


# -- following a run: shared by `run` and `watch` ----------------------------------------------

FINAL_KEYS = ("run_id", "state", "round", "rounds", "metrics", "checkpoint", "weights_sha256", "error", "error_type")


def _follow(handle: Any, as_json: bool, *, watching: bool = False) -> Any:
    """Show a run's rounds as they complete, until it finishes; return its RunResult.

    `run` follows the run it started: Ctrl-C stops the run. `watch` re-attached by
    run id: it also shows the rounds done before it attached (those of a resumed
    run included), Ctrl-C leaves the run alone, and the finished controller is left
    for the run's own driver to collect.
    """
    shown = 0  # how many of handle.history are on screen

    def on_round(record: dict[str, Any]) -> None:
        nonlocal shown
        records = handle.history[shown:] if watching else [record]
        shown = len(handle.history)
        for rec in records:
            view.show(rec)

    def follow() -> Any:
        try:
            result = handle.wait(on_round, release=not watching)
        except KeyboardInterrupt:
            if watching:
                _stop_watching(handle.run_id)
            err.print("stopping after the round in flight (Ctrl-C again to leave at once)...")
            handle.stop()
            result = handle.wait(on_round)
        for rec in result.history[shown:] if watching else ():  # a resumed run's rounds, if none came after
            view.show(rec)
        return result

    if as_json:
        view = _RoundView(as_json=True)
        return follow()
    status = handle.status()
    with Progress(*_PROGRESS_COLUMNS, console=out, transient=False) as progress:
        view = _RoundView(as_json=False, rounds=status["rounds"], done=status["round"], progress=progress)
        return follow()


def _stop_watching(run_id: str) -> None:
    err.print(f"stopped watching; run {run_id} goes on. Stop it with: elasticfl stop {run_id}", highlight=False)
    raise typer.Exit(EXIT_INTERRUPTED)


_PROGRESS_COLUMNS = (
    TextColumn("round"),
    MofNCompleteColumn(),
    BarColumn(),
    TextColumn("{task.fields[info]}"),
    TimeElapsedColumn(),
    TextColumn("ETA"),
    TimeRemainingColumn(),
)


class _RoundView:
    """One JSON line per round, or one text line per round above a progress bar with an ETA."""

    def __init__(self, as_json: bool, rounds: int = 0, done: int = 0, progress: Optional[Progress] = None) -> None:
        self.as_json, self.rounds, self.done, self.progress = as_json, rounds, done, progress
        self.lost = 0  # executors lost before the last round shown: each line shows the new ones
        if progress is not None:
            info = "starting executors..." if done == 0 else ""
            self.bar = progress.add_task("rounds", total=rounds, completed=done, info=info)

    def show(self, record: dict[str, Any]) -> None:
        if self.as_json:
            _emit(_round_line(record))
            return
        console = self.progress.console if self.progress is not None else out
        console.print(_round_text(record, self.rounds, self.lost), highlight=False, soft_wrap=True)
        self.lost = record.get("executors", {}).get("lost", self.lost)
        if self.progress is not None and record["round"] > self.done:
            # rounds done before the bar appeared do not count towards its speed (the ETA)
            self.done = record["round"]
            self.progress.update(self.bar, completed=self.done, info="")


def _round_line(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "round": record["round"],
        **record["metrics"],
        "clients_ok": record["clients_ok"],
        "clients_failed": record["clients_failed"],
        "clients_late": record.get("clients_late", 0),
        "unit_retries": record.get("unit_retries", 0),
        "executors": {name: pool["ready"] for name, pool in record.get("executors", {}).get("pools", {}).items()},
        "duration_s": record["duration_s"],
    }


def _round_text(record: dict[str, Any], rounds: int, lost_before: int = 0) -> str:
    metrics = record["metrics"]
    parts = [f"round {record['round']}/{rounds}" if rounds else f"round {record['round']}"]
    shown = [k for k in ("loss", "accuracy") if k in metrics] or [k for k in ("train_loss",) if k in metrics]
    parts += [f"{'acc' if k == 'accuracy' else k} {metrics[k]:.4f}" for k in shown]
    clients = f"clients {record['clients_ok']} ok / {record['clients_failed']} failed"
    if record.get("clients_late"):
        clients += f" / {record['clients_late']} late"
    parts.append(clients)
    if "asynchronous" in record:  # FedBuff: how old the buffered updates were
        parts.append(f"staleness {record['asynchronous']['staleness_mean']:.1f} (max {record['asynchronous']['staleness_max']})")
    else:
        parts.append(f"retries {record.get('unit_retries', 0)}")
    executors = record.get("executors", {})
    pools = executors.get("pools", {})
    if pools:  # ready executors, +those waiting for a node; per pool when there are several
        counts = {name: f"{p['ready']}" + (f"+{p['starting']}" if p.get("starting") else "") for name, p in pools.items()}
        if len(counts) == 1:
            parts.append(f"executors {next(iter(counts.values()))}")
        else:
            parts.append("executors " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    lost = executors.get("lost", 0) - lost_before
    if lost > 0:
        parts.append(f"lost {lost}" + (f" ({executors['preempted']} preempted so far)" if executors.get("preempted") else ""))
    parts.append(f"{record['duration_s']:.2f}s")
    return "  ".join(parts)


def _final(source: Any) -> dict[str, Any]:
    """The final result line: from a RunResult, or from a status dict (live or stored)."""
    if isinstance(source, dict):
        return {key: source.get(key) for key in FINAL_KEYS}
    return {key: getattr(source, key) for key in FINAL_KEYS}


def _finish(final: dict[str, Any], as_json: bool) -> None:
    """Print a finished run's outcome and end with its exit code (shared by `run` and `watch`)."""
    if as_json:
        _emit(final)
    else:
        _summary(final)
    if final["state"] == "failed":
        # errors the user can fix (config, their code, the cluster) keep their own exit codes
        kinds = {"ConfigError": EXIT_USAGE, "TaskError": EXIT_USAGE, "ClusterError": EXIT_UNREACHABLE, "StorageError": EXIT_UNREACHABLE}
        raise typer.Exit(kinds.get(final["error_type"] or "", EXIT_FAILED))


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


# -- `watch`: finding the run ------------------------------------------------------------------

def _live_controller(run_id: str, address: Optional[str], namespace: str) -> tuple[Any, str]:
    """(a handle on the run's live controller, or None; where it was looked for, for messages).

    Like `status`, the cluster is only asked when there is one to ask: --address,
    RAY_ADDRESS, or a Ray this process is connected to already. Without one, starting
    an embedded Ray could not find the run anyway.
    """
    address = address or Environment.read().ray_address
    if address is None and not ray.is_initialized():
        return None, "no Ray cluster was asked (pass --address or set RAY_ADDRESS)"
    cluster = f"the Ray cluster at {address}" if address else "the Ray cluster this process is connected to"
    looked = f"no controller in namespace {namespace!r} on {cluster}"
    deadline = time.monotonic() + 30
    while True:
        try:
            handle = elasticfl.attach(run_id, address=address, namespace=namespace)
            handle.status()
            return handle, looked
        except RunNotFoundError:
            return None, looked
        except (RayActorError, ActorUnavailableError):  # exiting for good, or being restarted
            if time.monotonic() > deadline:
                return None, f"its controller on {cluster} did not answer for 30s"
            time.sleep(0.5)


def _from_storage(run_id: str, storage: Optional[str], looked: str, as_json: bool, after_round: int = 0) -> None:
    """A run with no live controller: its rounds and last state, as its controller left them."""
    env = Environment.read()
    store = CheckpointStore(storage or env.storage or DEFAULT_STORAGE, run_id, endpoint_url=env.s3_endpoint_url)
    saved = store.read_json(STATUS_FILE)
    if saved is None:
        raise RunNotFoundError(
            f"run {run_id!r} not found: {looked}, and there is no {STATUS_FILE} under {store.run_uri}; "
            "check the run id, --address (or RAY_ADDRESS) and --storage (or ELASTICFL_STORAGE)"
        )
    finished = RunState(saved["state"]).finished
    if finished and not as_json:
        out.print(f"run {run_id} is over; from its storage ({store.run_uri}):", highlight=False, soft_wrap=True)
    view = _RoundView(as_json, rounds=saved.get("rounds") or 0)
    for record in store.read_round_records(saved.get("round") or 0):
        if record["round"] > after_round:
            view.show(record)
    if not finished:
        if as_json:
            _emit(_final(saved))
        age = time.time() - float(saved.get("updated_at") or time.time())
        err.print(
            f"run {run_id} has no live controller ({looked}). Its status in {store.run_uri} says "
            f"{saved['state']!r} at round {saved.get('round')}/{saved.get('rounds')}, last updated {_ago(age)}. "
            f"If its controller is gone, continue it with: elasticfl run CONFIG --run-id {run_id} --resume",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NOT_FOUND)
    _finish(_final(saved), as_json)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


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
    abandon: bool = typer.Option(False, "--abandon", help="Drop the round in flight instead of finishing it."),
    address: Optional[str] = AddressOpt,
    namespace: str = NamespaceOpt,
) -> None:
    """Stop a running run gracefully: the round in flight finishes and is checkpointed
    (with --abandon it is dropped, and the run stops at its last completed round)."""
    try:
        elasticfl.stop(run_id, abandon=abandon, address=address, namespace=namespace)
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


# Commands kept in modules of their own: report; submit and runs; serve.
from . import _jobs, _report, _serve  # noqa: E402  (they use _fail, defined above)

for _commands in (_report, _jobs, _serve):
    _commands.register(app, _fail)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
