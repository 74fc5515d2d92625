"""Shared fixtures. Unit tests start no Ray; integration tests share one local Ray."""

from __future__ import annotations

import pytest

from elasticfl import RunConfig
from elasticfl.testing.faults import drain_for_preemption, lose_machine  # noqa: F401  (for the tests)


@pytest.fixture(scope="session")
def _ray_session():
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """One local Ray shared by the in-process integration tests (ray.init costs ~5 s here);
    started again if a multi-node test module shut it down."""
    ray = _ray_session
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, namespace="elasticfl", include_dashboard=False, log_to_driver=False)
    return ray


def noisy_config(rounds: int = 4, clients: int = 12, per_round: int = 6, unit_size: int = 2, **params) -> RunConfig:
    """A fast numpy task with a known answer (see elasticfl.testing.tasks.NoisyMean)."""
    return RunConfig.from_dict(
        {
            "run": {"name": "noisy", "seed": 5, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean", "params": params},
            "data": {"dataset": "none", "num_clients": clients},
            "cohort": {"clients_per_round": per_round},
            "executors": {"unit_size": unit_size, "count": 2},
        }
    )


def write_user_task(folder, module: str):
    """User code that is not installed anywhere: a task class `Halve` in folder/module.py,
    which only reaches the executors through `cluster.runtime_env`."""
    folder.mkdir()
    (folder / f"{module}.py").write_text(
        "import numpy as np\n"
        "from elasticfl.tasks import TrainResult\n"
        "class Halve:\n"
        "    def init_weights(self, seed, data_shape):\n"
        "        return [np.full(4, 8.0, np.float32)]\n"
        "    def train(self, weights, data, ctx):\n"
        "        return TrainResult([w / 2 for w in weights], 1)\n"
        "    def evaluate(self, weights, data):\n"
        "        return {'value': float(weights[0][0])}\n"
    )
    return folder


def wait_controller_gone(run_id: str, timeout_s: float = 30.0) -> None:
    """Wait until the released controller has left the cluster (its name is freed asynchronously)."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(f"controller/{run_id}", namespace="elasticfl")
        except ValueError:
            return
        time.sleep(0.1)
    raise AssertionError(f"the controller of {run_id} is still there after {timeout_s}s")


def run_in_flower_venv(script: str, *args: str):
    """Run benchmarks/SCRIPT in Flower's own venv (Flower pins another Ray, so it cannot share
    ours); skips the test when that venv is not set up. Returns the CompletedProcess."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    flower_python = root / "benchmarks" / ".venv-flower" / "bin" / "python"
    if not flower_python.exists():
        pytest.skip("Flower's venv is not set up (bash benchmarks/setup_flower.sh)")
    return subprocess.run(
        [str(flower_python), str(root / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=300, cwd=root,
    )
