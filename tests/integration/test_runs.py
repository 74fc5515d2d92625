"""`elasticfl.runs` / `elasticfl runs` (live controllers and storage) and RunHandle.watch(),
on the shared local Ray."""

from __future__ import annotations

import json
import threading
import time

from typer.testing import CliRunner

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller
from elasticfl.worker import InProcessPool
from elasticfl_cli.main import app
from tests.conftest import noisy_config, wait_controller_gone

runner = CliRunner()


def _stored_run(storage: str, run_id: str, rounds: int = 2) -> None:
    """A finished run that only its storage knows (run in-process, no controller actor)."""
    config = noisy_config(rounds=rounds)
    Controller(config, run_id, InProcessPool(config), CheckpointStore(storage, run_id)).run()


def test_runs_lists_live_controllers_and_stored_runs(ray_local, tmp_path):
    storage = str(tmp_path)
    _stored_run(storage, "old-run")
    (tmp_path / "not-a-run").mkdir()  # a folder with no status: not listed
    handle = elasticfl.submit(noisy_config(rounds=40, sleep_s=0.02), run_id="live-run", storage=storage, quiet=True)
    try:
        next(handle.rounds())  # it is running
        found = {r["run_id"]: r for r in elasticfl.runs(storage=storage)}
        assert {"old-run", "live-run"} <= set(found) and "not-a-run" not in found  # (+ other tests' live runs)
        live, old = found["live-run"], found["old-run"]
        assert live["source"] == "controller" and live["state"] == "running" and live["rounds"] == 40
        assert old["source"] == "storage" and old["state"] == "completed" and (old["round"], old["rounds"]) == (2, 2)
        assert live["updated_at"] >= old["updated_at"]
        listed = [r["run_id"] for r in elasticfl.runs(storage=storage)]
        assert listed.index("live-run") < listed.index("old-run")  # newest first

        table = runner.invoke(app, ["runs", "--storage", storage])
        assert table.exit_code == 0, table.output
        assert "live-run" in table.output and "running" in table.output and "completed" in table.output
        lines = [json.loads(line) for line in runner.invoke(app, ["runs", "--storage", storage, "--json"]).output.splitlines()]
        assert {"old-run", "live-run"} <= {line["run_id"] for line in lines}
    finally:
        handle.stop()
        handle.wait()
    wait_controller_gone("live-run")
    stored = {r["run_id"]: r for r in elasticfl.runs(storage=storage)}
    assert stored["live-run"]["source"] == "storage" and stored["live-run"]["state"] == "stopped"


def test_runs_of_an_empty_storage(ray_local, tmp_path):
    assert elasticfl.runs(storage=str(tmp_path / "nothing-here"), namespace="no-such-namespace") == []
    result = runner.invoke(app, ["runs", "--storage", str(tmp_path / "nothing-here"), "--namespace", "no-such-namespace"])
    assert result.exit_code == 0 and "no runs found" in result.output


def test_watch_yields_every_round_and_finishes_from_storage_once_the_controller_left(ray_local, tmp_path):
    owner = elasticfl.submit(noisy_config(rounds=6, sleep_s=0.05), run_id="watched", storage=str(tmp_path), quiet=True)
    follower = elasticfl.attach("watched")
    watching = follower.watch()
    seen = [next(watching), next(watching)]
    late = elasticfl.attach("watched").watch()  # attached after round 2: still shows it all
    assert next(late)["round"] == 1

    # The run's driver follows it to the end and releases its controller, which exits: the
    # followers, mid-watch, finish from storage (not after minutes of waiting for a restart).
    done = threading.Event()
    threading.Thread(target=lambda: (owner.wait(), done.set()), daemon=True).start()
    assert done.wait(60)
    wait_controller_gone("watched")
    started = time.monotonic()
    seen += list(watching)
    assert time.monotonic() - started < 10
    assert [r["round"] for r in seen] == [1, 2, 3, 4, 5, 6]
    assert follower.history[-1]["round"] == 6
    assert [r["round"] for r in late] == [2, 3, 4, 5, 6]
