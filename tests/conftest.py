"""Shared fixtures. Unit tests start no Ray; integration tests share one local Ray."""

from __future__ import annotations

import pytest

from elasticfl import RunConfig


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every in-process integration test (ray.init costs ~5 s here)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, namespace="elasticfl", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
