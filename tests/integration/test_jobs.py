"""`elasticfl submit`: a run as a Ray job, followed with `watch`, `status`, `stop`, on a local Ray
with the dashboard (the job API) and token authentication on. One Ray for the module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import elasticfl
from elasticfl_cli.main import app
from tests.conftest import noisy_config, write_user_task

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def job_api():
    """(the job API's URL, the Ray module): a one-node Ray with its dashboard on free ports.

    ray.cluster_utils rather than ray.init: the dashboard agent, which runs the jobs, would take
    the fixed port 52365, which another Ray on this machine may hold. Token authentication is on,
    as ray.init(address="local") turns it on (a token made if there is none).
    """
    import ray
    from ray._private.authentication import authentication_token_setup as auth
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the shared Ray, if a test before started it
    os.environ["RAY_AUTH_MODE"] = "token"
    ray._raylet.Config.initialize("")  # this process reads the mode again
    auth.ensure_token_if_auth_enabled(None, create_token_if_missing=True)
    path = os.environ["PATH"]
    # The job's driver runs `elasticfl` on the head: on the PATH there, as `pip install elasticfl` puts it.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + path
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "include_dashboard": True,
                "dashboard_port": _free_port(),
                "dashboard_agent_listen_port": _free_port(),
            },
        )
    finally:
        os.environ["PATH"] = path
    context = ray.init(address=cluster.address, namespace="elasticfl", log_to_driver=False)
    yield f"http://{context.dashboard_url}", ray
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def noisy_yaml(tmp_path):
    def write(**kw) -> str:
        path = tmp_path / "noisy.yaml"
        path.write_text(noisy_config(**kw).to_yaml())
        return str(path)

    return write


def _job_outcome(url: str, job_id: str, timeout_s: float = 120.0) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status.value, client.get_job_logs(job_id)
        time.sleep(0.5)
    pytest.fail(f"job {job_id} still {status} after {timeout_s:.0f}s:\n{client.get_job_logs(job_id)}")


def _controller_of(run_id: str, timeout_s: float = 60.0):
    """The run's handle once the job's driver has started its controller."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return elasticfl.attach(run_id)
        except elasticfl.RunNotFoundError:
            time.sleep(0.2)
    pytest.fail(f"no controller for {run_id} after {timeout_s:.0f}s")


def test_a_submitted_run_is_a_ray_job_that_watch_and_status_follow(job_api, noisy_yaml, tmp_path):
    url, _ = job_api
    storage = str(tmp_path / "runs")
    submitted = runner.invoke(app, ["submit", noisy_yaml(rounds=3), "--address", url, "--storage", storage, "--json"])
    assert submitted.exit_code == 0, submitted.output
    job = json.loads(submitted.output.strip().splitlines()[-1])
    run_id, job_id = job["run_id"], job["job_id"]
    assert run_id.startswith("noisy-") and job["storage"] == Path(storage).resolve().as_uri()

    _controller_of(run_id)
    watched = runner.invoke(app, ["watch", run_id, "--json", "--storage", storage])
    assert watched.exit_code == 0, watched.output
    lines = [json.loads(line) for line in watched.output.splitlines() if line.startswith("{")]
    assert [line["round"] for line in lines[:-1]] == [1, 2, 3] and lines[-1]["state"] == "completed"

    state, logs = _job_outcome(url, job_id)
    assert state == "SUCCEEDED", logs
    assert f"run {run_id} started" in logs and "completed after 3/3 rounds" in logs
    assert elasticfl.status(run_id, storage=storage)["state"] == "completed"

    text = runner.invoke(app, ["submit", noisy_yaml(rounds=3), "--address", url, "--storage", storage, "--run-id", run_id])
    assert text.exit_code == 2 and "--resume" in text.output  # the run id is taken: checked before submitting


def test_stop_ends_a_submitted_run_and_its_job(job_api, tmp_path):
    url, _ = job_api
    storage = str(tmp_path / "runs")
    job = elasticfl.submit_job(noisy_config(rounds=300, sleep_s=0.02), address=url, storage=storage, run_id="job-to-stop")
    assert job.run_id == "job-to-stop" and job.job_id.startswith("elasticfl-job-to-stop-")
    handle = _controller_of(job.run_id)
    next(handle.rounds())
    stopped = runner.invoke(app, ["stop", job.run_id])
    assert stopped.exit_code == 0, stopped.output
    state, logs = _job_outcome(url, job.job_id)
    assert state == "SUCCEEDED", logs  # stopped on request: the driver exits 0
    saved = elasticfl.status(job.run_id, storage=storage)
    assert saved["state"] == "stopped" and 1 <= saved["round"] < 300


def test_a_submitted_runs_own_code_travels_from_the_submitting_machine(job_api, tmp_path, monkeypatch):
    url, _ = job_api
    write_user_task(tmp_path / "usercode", "my_job_task")
    config = elasticfl.RunConfig.from_dict(
        {
            "run": {"rounds": 2},
            "task": {"type": "custom", "path": "my_job_task:Halve"},
            "data": {"dataset": "none", "num_clients": 4},
            "executors": {"count": 1},
            "cluster": {"runtime_env": {"working_dir": "usercode"}},  # relative to where submit runs
        }
    )
    monkeypatch.chdir(tmp_path)
    job = elasticfl.submit_job(config, address=url, storage="runs")
    state, logs = _job_outcome(url, job.job_id)
    assert state == "SUCCEEDED", logs
    saved = elasticfl.status(job.run_id, storage=str(tmp_path / "runs"))
    assert saved["state"] == "completed" and saved["metrics"]["value"] == 2.0  # 8 -> 4 -> 2 by the shipped code


def test_without_the_right_token_submit_says_what_is_missing(job_api, noisy_yaml, tmp_path):
    url, _ = job_api
    config = noisy_yaml(rounds=2)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base["HOME"] = str(tmp_path)  # no ~/.ray/auth_token here
    cases = {
        "wrong": {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
        "mode unset": base,
    }
    command = [sys.executable, "-m", "elasticfl_cli.main", "submit", config, "--address", url, "--storage", str(tmp_path)]
    procs = {name: subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, env in cases.items()}  # fmt: skip
    outputs = {name: p.communicate(timeout=120)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 4, (name, outputs[name])
        assert "Traceback" not in outputs[name] and "RAY_AUTH_TOKEN" in outputs[name], outputs[name]
    assert "rejected the token from RAY_AUTH_TOKEN" in outputs["wrong"]
    assert "RAY_AUTH_MODE is unset" in outputs["mode unset"] and "RAY_AUTH_MODE=token" in outputs["mode unset"]

    # token mode with no token at all: said before anything is sent
    no_token = runner.invoke(app, ["submit", config, "--address", url, "--storage", str(tmp_path)],
                             env={"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": None, "HOME": str(tmp_path)})  # fmt: skip
    assert no_token.exit_code == 4 and "there is no token" in no_token.output and "RAY_AUTH_TOKEN" in no_token.output

    missing = runner.invoke(app, ["submit", config, "--storage", str(tmp_path)], env={"RAY_API_SERVER_ADDRESS": None})
    assert missing.exit_code == 2 and "http://HEAD:8265" in missing.output
    gcs = runner.invoke(app, ["submit", config, "--address", "127.0.0.1:6379"])
    assert gcs.exit_code == 2 and "dashboard" in gcs.output
