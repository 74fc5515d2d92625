"""The driver killed with SIGKILL mid-run; `--resume` ends bit-identical to an uninterrupted run.

The run goes through the real CLI in a subprocess that starts its own embedded
Ray, exactly as a user would run it, on file:// and on S3 over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller
from elasticfl.worker import InProcessPool
from tests.conftest import noisy_config

CLI = [sys.executable, "-m", "elasticfl_cli.main"]
ROUNDS = 8


def _reference_digest(tmp_path: Path) -> str:
    config = noisy_config(rounds=ROUNDS)
    c = Controller(config, "ref", InProcessPool(config), CheckpointStore(str(tmp_path / "ref"), "ref"))
    c.run()
    return c.status()["weights_sha256"]


def _run_cli(args: list[str], env: dict, kill_after_round: int | None = None, sig: int = signal.SIGKILL) -> list[dict]:
    proc = subprocess.Popen(
        CLI + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, start_new_session=True
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                lines.append(json.loads(line))
                if kill_after_round is not None and lines[-1].get("round") == kill_after_round:
                    os.kill(proc.pid, sig)  # the driver alone, mid-run
                    if sig == signal.SIGKILL:
                        break
        proc.wait(timeout=300)
    finally:
        time.sleep(1)
        try:  # whatever the dead driver left behind (its embedded Ray) goes too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if kill_after_round is None or sig != signal.SIGKILL:
        assert proc.returncode == 0, lines
    else:
        assert proc.returncode == -signal.SIGKILL
    return lines


def _kill_and_resume(tmp_path: Path, storage: str, env: dict) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(noisy_config(rounds=ROUNDS, sleep_s=0.05).to_yaml())
    base = ["run", str(cfg), "--json", "--storage", storage, "--run-id", "killed"]
    first = _run_cli(base, env, kill_after_round=3)
    assert first[-1]["round"] == 3
    resumed = _run_cli(base + ["--resume"], env)
    final = resumed[-1]
    assert final["state"] == "completed" and final["round"] == ROUNDS
    assert 3 <= resumed[0]["round"] <= 5  # continued from a checkpoint, did not start over
    assert final["weights_sha256"] == _reference_digest(tmp_path)


@pytest.mark.slow
def test_sigkill_then_resume_on_file_storage(tmp_path):
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    _kill_and_resume(tmp_path, str(tmp_path / "runs"), env)


@pytest.mark.slow
def test_sigkill_then_resume_on_s3(tmp_path, s3_endpoint):
    endpoint, prefix = s3_endpoint
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    env.pop("RAY_ADDRESS", None)
    _kill_and_resume(tmp_path, f"{prefix}/kill-{int(time.time())}", env)


def test_sigterm_stops_gracefully_and_resume_finishes_the_same(tmp_path):
    """`ray job stop`, Slurm and Kubernetes send the driver SIGTERM: the run stops after the
    round in flight, checkpointed, and `--resume` goes on from there."""
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(noisy_config(rounds=ROUNDS, sleep_s=0.05).to_yaml())
    base = ["run", str(cfg), "--json", "--storage", str(tmp_path / "runs"), "--run-id", "termed"]
    stopped = _run_cli(base, env, kill_after_round=2, sig=signal.SIGTERM)[-1]
    assert stopped["state"] == "stopped" and 2 <= stopped["round"] < ROUNDS
    assert stopped["checkpoint"].endswith(f"round-{stopped['round']:08d}")
    final = _run_cli(base + ["--resume"], env)[-1]
    assert final["state"] == "completed" and final["weights_sha256"] == _reference_digest(tmp_path)
