"""Which clients train in a round, and how a cohort is cut into work units.

Every choice derives from the run seed and the round, so a resumed run picks
the same cohorts. The sampler draws from one generator seeded by the run seed,
once per round in order; it replays the draws of earlier rounds when asked for
a round out of sequence (after a resume), so no generator state needs saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["UniformSelector", "WorkUnit", "make_units", "client_seed"]


class UniformSelector:
    """Uniform sampling without replacement; the whole population when the cohort is everyone."""

    def __init__(self, num_clients: int, cohort_size: int, seed: int) -> None:
        if not 1 <= cohort_size <= num_clients:
            raise ValueError(f"cohort size {cohort_size} must be in 1..{num_clients}")
        self.num_clients = num_clients
        self.cohort_size = cohort_size
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._next_round = 1

    def cohort(self, round: int) -> np.ndarray:
        """Sorted int64 client ids for ``round`` (rounds count from 1)."""
        if round < 1:
            raise ValueError("rounds count from 1")
        if self.cohort_size == self.num_clients:
            return np.arange(self.num_clients, dtype=np.int64)
        if self._rng is None or round < self._next_round:
            self._rng, self._next_round = np.random.default_rng(self.seed), 1
        while self._next_round < round:  # replay skipped rounds (resume)
            self._draw()
        return self._draw()

    def _draw(self) -> np.ndarray:
        assert self._rng is not None
        self._next_round += 1
        chosen = self._rng.choice(self.num_clients, self.cohort_size, replace=False)
        return np.sort(chosen).astype(np.int64)


@dataclass(frozen=True)
class WorkUnit:
    """A run of client ids that one executor trains and pre-aggregates in one call."""

    unit_id: int
    client_ids: tuple[int, ...]


# Partial sums (float64) in flight per round stay under this many bytes.
PARTIAL_SUM_BUDGET = 512 * 2**20


def default_unit_size(cohort_size: int, model_params: int = 0) -> int:
    """About eight units per round: enough to balance a handful of executors, few
    enough that per-call overhead stays small; fewer for large models, so that the
    float64 partial sums moved per round stay within PARTIAL_SUM_BUDGET.

    Depends on the cohort and the model alone, never on the cluster, so the unit
    boundaries (and the bits of the sums) are the same on every run and resume.
    """
    units = 8
    if model_params:
        units = min(units, max(2, PARTIAL_SUM_BUDGET // (8 * model_params)))
    return max(1, -(-cohort_size // units))


def make_units(cohort: np.ndarray, unit_size: int | None = None, model_params: int = 0) -> list[WorkUnit]:
    size = unit_size or default_unit_size(len(cohort), model_params)
    ids = [int(c) for c in cohort]
    return [WorkUnit(i, tuple(ids[start : start + size])) for i, start in enumerate(range(0, len(ids), size))]


def client_seed(run_seed: int, round: int, client_id: int) -> list[int]:
    """The entropy for a client's randomness in a round: ``default_rng(client_seed(...))``."""
    return [int(run_seed), int(round), int(client_id)]
