"""The Serve app over real HTTP on loopback: runs, status, history, stop (with and without
the token), predict (against a local computation), hot reload, bad inputs.

One Ray and one Serve for the module: two apps on it, one with a token and one without
(public predict, stop disabled). The runs are a small digits run (the built-in classifier,
so predict has a model) and a slow NoisyMean run to stop.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from tests.conftest import noisy_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serve-test-token-0123456789abcdef"
MAX_BATCH = 50
MAX_BODY = 200_000
RELOAD_S = 0.2

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP(S)_PROXY from the env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def detail(self) -> str:
        return self.body.get("detail", "") if isinstance(self.body, dict) else ""


def http(url: str, method: str = "GET", body: Any = None, *, token: str | None = None, raw: bytes | None = None) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _opener.open(request, timeout=60) as response:
            return Reply(response.status, json.loads(response.read() or b"null"), response.headers)
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return Reply(exc.code, parsed, exc.headers)


@dataclass
class Served:
    storage: str
    url: str  # the app with a token
    open_url: str  # the app without one: public predict, stop disabled
    port: int


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from ray import serve as ray_serve

    if ray.is_initialized():  # the shared function-scoped Ray of other modules: ours has Serve on it
        ray.shutdown()
    ray.init(address="local", num_cpus=2, namespace="elasticfl", include_dashboard=False, log_to_driver=False)
    storage = str(tmp_path_factory.mktemp("serve-runs"))
    port = _free_port()
    apps = []
    try:
        with pytest.MonkeyPatch.context() as env:
            env.delenv("ELASTICFL_SERVE_TOKEN", raising=False)
            common = dict(storage=storage, port=port, reload_s=RELOAD_S, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)
            apps.append(elasticfl.serve(token=TOKEN, **common))
            apps.append(elasticfl.serve(public_predict=True, name="elasticfl-open", route_prefix="/open", **common))
        assert apps[0].url == f"http://127.0.0.1:{port}" and apps[1].url == f"http://127.0.0.1:{port}/open"
        yield Served(storage, apps[0].url, apps[1].url, port)
    finally:
        for app in reversed(apps):
            app.shutdown()
        ray_serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def digits_run(served):
    """A finished 2-round digits run (10 clients, 5 per round): (config, RunResult)."""
    config = elasticfl.RunConfig.from_yaml(ROOT / "examples" / "digits.yaml").with_overrides(
        run={"rounds": 2}, data={"num_clients": 10}, cohort={"min_clients": 3}
    )
    result = elasticfl.run(config, storage=served.storage, quiet=True)
    assert result.ok
    return config, result


@pytest.fixture(scope="module")
def digits_rows():
    from elasticfl.datasets import load_digits

    return load_digits().x_test[:20]


def _local_probabilities(storage: str, run_id: str, x: np.ndarray) -> tuple[int, np.ndarray]:
    """The latest checkpoint's model, computed here with plain torch: (round, probabilities)."""
    import torch

    from elasticfl.tasks.classification import mlp

    checkpoint = CheckpointStore(storage, run_id).latest()
    weights = [checkpoint.arrays[f"weights/{i}"] for i in range(4)]
    model = mlp(64, 10, [64])
    model.load_state_dict({k: torch.from_numpy(np.array(w)) for k, w in zip(model.state_dict(), weights)})
    with torch.no_grad():
        return checkpoint.round, torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def test_the_app_takes_no_cpu_and_one_proxy(served):
    import ray
    from ray import serve as ray_serve

    assert ray.available_resources().get("CPU") == 2  # replicas and proxy ask for 0 CPUs
    status = ray_serve.status()
    assert len(status.proxies) == 1  # HeadOnly
    assert {status.applications[n].status for n in ("elasticfl", "elasticfl-open")} == {"RUNNING"}


def test_runs_status_and_history(served, digits_run):
    config, result = digits_run
    index = http(served.url + "/")
    assert index.status == 200 and index.body["control_enabled"] and index.body["storage"].startswith("file://")

    runs = http(served.url + "/runs")
    assert runs.status == 200
    listed = {r["run_id"]: r for r in runs.body["runs"]}
    assert listed[result.run_id]["state"] == "completed" and listed[result.run_id]["round"] == 2

    status = http(f"{served.url}/runs/{result.run_id}")
    assert status.status == 200
    assert status.body == elasticfl.status(result.run_id, storage=served.storage)
    assert status.body["weights_sha256"] == result.weights_sha256

    history = http(f"{served.url}/runs/{result.run_id}/history")
    assert history.status == 200 and [r["round"] for r in history.body["history"]] == [1, 2]
    assert history.body["history"][1]["metrics"] == result.metrics
    later = http(f"{served.url}/runs/{result.run_id}/history?after=1")
    assert [r["round"] for r in later.body["history"]] == [2]

    missing = http(f"{served.url}/runs/no-such-run")
    assert missing.status == 404 and "no-such-run" in missing.detail
    assert http(f"{served.url}/runs/no-such-run/history").status == 404


def test_predict_answers_with_the_latest_checkpoint(served, digits_run, digits_rows):
    _, result = digits_run
    body = {"run_id": result.run_id, "inputs": digits_rows.tolist()}
    reply = http(served.url + "/predict", "POST", body, token=TOKEN)
    assert reply.status == 200, reply.body
    probabilities = np.array(reply.body["outputs"], dtype=np.float32)
    assert probabilities.shape == (20, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert reply.body["labels"] == probabilities.argmax(axis=1).tolist()
    round_, expected = _local_probabilities(served.storage, result.run_id, digits_rows)
    assert reply.body["round"] == round_ and reply.body["checkpoint"].endswith(f"round-{round_:08d}")
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)

    # the token guards predict unless the app was deployed with public_predict
    assert http(served.url + "/predict", "POST", body).status == 401
    assert http(served.url + "/predict", "POST", body, token="not-the-token-at-all").status == 403
    public = http(served.open_url + "/predict", "POST", body)
    assert public.status == 200 and public.body["labels"] == reply.body["labels"]


def test_bad_inputs_get_clear_4xx(served, digits_run, digits_rows):
    _, result = digits_run
    run_id = result.run_id
    row = digits_rows[0].tolist()
    cases = [  # (body or raw bytes, status, words the message must hold)
        (b"{not json", 400, "not valid JSON"),
        ([row], 422, "JSON object"),
        ({"run_id": run_id}, 422, "missing field 'inputs'"),
        ({"inputs": [row]}, 422, "missing field 'run_id'"),
        ({"run_id": run_id, "input": [row]}, 422, "did you mean 'inputs'"),
        ({"run_id": run_id, "inputs": [row[:10]]}, 422, "each row must have 64 values; got rows of 10"),
        ({"run_id": run_id, "inputs": [row, row[:63]]}, 422, "rows differ in length"),
        ({"run_id": run_id, "inputs": row}, 422, "wrap a single example"),
        ({"run_id": run_id, "inputs": []}, 422, "inputs is empty"),
        ({"run_id": run_id, "inputs": [["a"] * 64]}, 422, "inputs[0][0] is a string"),
        ({"run_id": run_id, "inputs": [[None] * 64]}, 422, "inputs[0][0] is null"),
        ({"run_id": run_id, "inputs": [row[:5] + [True] + row[6:]]}, 422, "inputs[0][5] is a boolean"),
        ({"run_id": run_id, "inputs": [row[:3] + [float("nan")] + row[4:]]}, 422, "inputs[0][3] is nan"),
        ({"run_id": run_id, "inputs": [row[:3] + [1e39] + row[4:]]}, 422, "float32's range"),
        ({"run_id": run_id, "inputs": [row] * (MAX_BATCH + 1)}, 413, f"at most {MAX_BATCH}"),
        (b'{"run_id": "x", "inputs": [' + b"0," * MAX_BODY + b"0]}", 413, f"at most {MAX_BODY}"),
        ({"run_id": "no-such-run", "inputs": [row]}, 404, "no complete checkpoint"),
        ({"run_id": "../etc", "inputs": [row]}, 422, "not a run id"),
    ]
    failures = []
    for body, status, words in cases:
        raw = body if isinstance(body, bytes) else None
        reply = http(served.url + "/predict", "POST", None if raw else body, token=TOKEN, raw=raw)
        if reply.status != status or words not in reply.detail:
            failures.append((str(body)[:80], status, words, reply.status, reply.body))
    assert not failures, "\n".join(map(str, failures))


def test_predict_reloads_when_a_newer_checkpoint_lands(served, digits_run, digits_rows):
    config, result = digits_run
    body = {"run_id": result.run_id, "inputs": digits_rows.tolist()}
    before = http(served.url + "/predict", "POST", body, token=TOKEN).body
    store = CheckpointStore(served.storage, result.run_id)
    assert before["round"] == store.list()[-1].round

    more = before["round"] + 1
    resumed = elasticfl.run(
        config.with_overrides(run={"rounds": more}), run_id=result.run_id, resume=True, storage=served.storage, quiet=True
    )
    assert resumed.round == more
    # a half-written checkpoint (data, no MANIFEST yet) is invisible: never loaded
    half = Path(served.storage) / result.run_id / "checkpoints" / f"round-{more + 1:08d}"
    half.mkdir()
    (half / "arrays.bin").write_bytes(b"\0" * 100)

    deadline = time.monotonic() + 30
    after = before
    while after["round"] == before["round"] and time.monotonic() < deadline:
        time.sleep(RELOAD_S)
        after = http(served.url + "/predict", "POST", body, token=TOKEN).body
    assert after["round"] == more and after["checkpoint"].endswith(f"round-{more:08d}")
    assert after["outputs"] != before["outputs"]
    _, expected = _local_probabilities(served.storage, result.run_id, digits_rows)
    np.testing.assert_allclose(np.array(after["outputs"], dtype=np.float32), expected, rtol=1e-4, atol=1e-6)
    time.sleep(2 * RELOAD_S)
    assert http(served.url + "/predict", "POST", body, token=TOKEN).body["round"] == more


def test_stop_needs_the_token(served):
    handle = elasticfl.submit(noisy_config(rounds=500, sleep_s=0.02), storage=served.storage)
    stop_url = f"{served.url}/runs/{handle.run_id}/stop"
    try:
        next(handle.rounds())  # it is running: round 1 is done
        no_token = http(stop_url, "POST")
        assert no_token.status == 401 and "Bearer" in no_token.detail
        assert no_token.headers.get("WWW-Authenticate", "").startswith("Bearer")
        wrong = http(stop_url, "POST", token=TOKEN[::-1])
        assert wrong.status == 403 and "not this app's token" in wrong.detail
        disabled = http(f"{served.open_url}/runs/{handle.run_id}/stop", "POST", token=TOKEN)
        assert disabled.status == 403 and "ELASTICFL_SERVE_TOKEN" in disabled.detail
        live = http(f"{served.url}/runs/{handle.run_id}")
        assert live.status == 200 and live.body["state"] == "running"
        # NoisyMean has no predict(): the app says so
        reply = http(served.url + "/predict", "POST", {"run_id": handle.run_id, "inputs": [[0.0]]}, token=TOKEN)
        assert reply.status == 501 and "predict" in reply.detail

        stopped = http(stop_url, "POST", token=TOKEN)
        assert stopped.status == 202 and stopped.body["stop_requested"]
        result = handle.wait()
    except BaseException:
        handle.stop()  # never leave a 500-round run behind on the module's Ray
        handle.wait()
        raise
    assert result.state == "stopped" and result.round < 500
    after = http(f"{served.url}/runs/{handle.run_id}")
    assert after.body["state"] == "stopped" and after.body["round"] == result.round
    again = http(stop_url, "POST", token=TOKEN)
    assert again.status == 409 and "stopped" in again.detail
    assert http(f"{served.url}/runs/no-such-run/stop", "POST", token=TOKEN).status == 404


def test_a_second_deploy_on_another_port_is_refused(served):
    with pytest.raises(elasticfl.ConfigError, match=f"listening on 127.0.0.1:{served.port}"):
        elasticfl.serve(storage=served.storage, port=served.port + 1, name="elasticfl-other")


def test_the_cli_deploys_prints_the_url_and_deletes_the_app_on_ctrl_c(served):
    import os
    import signal
    import subprocess
    import sys

    import ray

    env = {**os.environ, "CLI_TOKEN": TOKEN, "RAY_AUTH_MODE": "token"}
    command = [
        sys.executable, "-m", "elasticfl_cli.main", "serve", "--address", ray.get_runtime_context().gcs_address,
        "--storage", served.storage, "--port", str(served.port), "--token-env", "CLI_TOKEN",
        "--name", "elasticfl-cli", "--route-prefix", "/cli",
    ]  # fmt: skip
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        lines = []
        for line in cli.stdout:
            lines.append(line)
            if "Ctrl-C deletes the app" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{served.port}/cli/runs/{{run_id}}/stop" in text, text
        assert "Bearer $CLI_TOKEN" in text
        assert http(f"{served.url}/cli/healthz").body == {"ok": True}
        cli.send_signal(signal.SIGINT)
        rest, _ = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, text + rest
    from ray import serve as ray_serve

    assert "elasticfl-cli" not in ray_serve.status().applications  # Ctrl-C deleted the app...
    assert http(f"{served.url}/cli/healthz").status == 404
    assert http(f"{served.url}/healthz").status == 200  # ...and only that one
