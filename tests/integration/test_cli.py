"""The CLI through typer's CliRunner: clear errors and exit codes, no tracebacks."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from elasticfl_cli.main import app
from tests.conftest import noisy_config, wait_controller_gone

runner = CliRunner()


def _lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def noisy_yaml(tmp_path):
    path = tmp_path / "noisy.yaml"
    path.write_text(noisy_config(rounds=3).to_yaml())
    return path


def test_a_bad_config_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"task": {"type": "classification", "lr": 0}}))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "task.lr" in result.output and "Traceback" not in result.output


def test_validate_prints_the_full_config(noisy_yaml):
    result = runner.invoke(app, ["validate", str(noisy_yaml)])
    assert result.exit_code == 0 and "NoisyMean" in result.output and "keep_last" in result.output


def test_resume_needs_a_run_id(noisy_yaml):
    result = runner.invoke(app, ["run", str(noisy_yaml), "--resume"])
    assert result.exit_code == 2 and "--run-id" in result.output


def test_status_of_an_unknown_run_exits_3(tmp_path):
    result = runner.invoke(app, ["status", "no-such-run", "--storage", str(tmp_path)])
    assert result.exit_code == 3 and "no-such-run" in result.output and "Traceback" not in result.output


def test_run_status_checkpoints_and_resume(ray_local, noisy_yaml, tmp_path):
    store = str(tmp_path / "runs")
    result = runner.invoke(app, ["run", str(noisy_yaml), "--json", "--storage", store, "--run-id", "cli-run"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    assert [l["round"] for l in lines[:-1]] == [1, 2, 3] and "norm" in lines[0]
    final = lines[-1]
    assert final["state"] == "completed" and len(final["weights_sha256"]) == 64

    status = runner.invoke(app, ["status", "cli-run", "--json", "--storage", store])
    assert status.exit_code == 0
    assert _lines(status.output)[0]["weights_sha256"] == final["weights_sha256"]

    listed = runner.invoke(app, ["checkpoints", "cli-run", "--json", "--storage", store])
    rounds = [c["round"] for c in _lines(listed.output)]
    assert listed.exit_code == 0 and rounds[-1] == 3 and all(c["valid"] for c in _lines(listed.output))

    again = runner.invoke(app, ["run", str(noisy_yaml), "--storage", store, "--run-id", "cli-run"])
    assert again.exit_code == 2 and "--resume" in again.output  # the run id exists: no silent overwrite

    more = runner.invoke(app, ["run", str(noisy_yaml), "--json", "--storage", store, "--run-id", "cli-run", "--resume", "--rounds", "5"])
    assert more.exit_code == 0, more.output
    assert _lines(more.output)[-1]["round"] == 5


def test_stop_of_an_unknown_run_exits_3(ray_local):
    result = runner.invoke(app, ["stop", "no-such-run"])
    assert result.exit_code == 3 and "no running controller" in result.output


def test_user_code_that_cannot_be_imported_exits_2(ray_local, tmp_path):
    cfg = noisy_config(rounds=1).to_dict()
    cfg["task"]["path"] = "no_such_module_anywhere:Task"
    path = tmp_path / "bad_task.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["run", str(path), "--storage", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "no_such_module_anywhere" in result.output and "runtime_env" in result.output


# -- watch: re-attach to a run by id ----------------------------------------------------------

def test_watch_follows_a_submitted_run_then_reads_it_from_storage(ray_local, tmp_path):
    import elasticfl

    store = str(tmp_path / "runs")
    handle = elasticfl.submit(noisy_config(rounds=3, sleep_s=0.1), run_id="watched", storage=store, quiet=True)

    # live, while it runs: the progress `run` shows, then the same summary and exit code
    live = runner.invoke(app, ["watch", "watched", "--storage", store])
    assert live.exit_code == 0, live.output
    assert "watching run watched" in live.output and "the run goes on" in live.output
    assert all(f"round {r}/3" in live.output for r in (1, 2, 3)) and "ETA" in live.output
    assert "clients 6 ok / 0 failed" in live.output and "retries 0" in live.output
    assert "completed after 3/3 rounds" in live.output

    # watch left the finished controller to its driver, which still reads the outcome
    result = handle.wait()
    assert result.state == "completed"
    wait_controller_gone("watched")

    # no controller any more: the rounds and the outcome come from storage, as `run --json` printed them
    stored = runner.invoke(app, ["watch", "watched", "--json", "--storage", store])
    assert stored.exit_code == 0, stored.output
    lines = _lines(stored.output)
    assert [l["round"] for l in lines[:-1]] == [1, 2, 3] and "norm" in lines[0] and "clients_ok" in lines[0]
    final = lines[-1]
    assert final["state"] == "completed" and final["round"] == 3 and final["weights_sha256"] == result.weights_sha256
    text = runner.invoke(app, ["watch", "watched", "--storage", store])
    assert text.exit_code == 0 and "from its storage" in text.output and "completed after 3/3" in text.output


def test_watch_of_an_unknown_run_exits_3_naming_where_it_looked(ray_local, tmp_path):
    result = runner.invoke(app, ["watch", "no-such-run", "--storage", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "no-such-run" in result.output and "status.json" in result.output and str(tmp_path) in result.output
    assert "namespace 'elasticfl'" in result.output and "Traceback" not in result.output


def test_watch_of_a_run_whose_controller_is_gone_suggests_resume(tmp_path):
    from elasticfl.checkpoint import CheckpointStore

    CheckpointStore(str(tmp_path), "orphan").write_json(
        "status.json", {"run_id": "orphan", "state": "running", "round": 2, "rounds": 5, "metrics": {}, "updated_at": 0}
    )
    result = runner.invoke(app, ["watch", "orphan", "--storage", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "no live controller" in result.output and "--run-id orphan --resume" in result.output


def test_ctrl_c_in_watch_leaves_the_run_alone(monkeypatch):
    from elasticfl_cli import main as cli

    class Handle:
        run_id, history, stopped = "busy", [], False

        def wait(self, on_round=None, *, release=True):
            raise KeyboardInterrupt

        def stop(self):
            self.stopped = True

    handle = Handle()
    monkeypatch.setattr(cli, "_live_controller", lambda *args: (handle, ""))
    result = runner.invoke(app, ["watch", "busy", "--json"])
    assert result.exit_code == 130 and not handle.stopped
    assert "elasticfl stop busy" in result.output
