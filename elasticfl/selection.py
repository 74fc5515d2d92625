"""Which clients train in a round, and how a cohort is cut into work units.

Every choice derives from the run seed and the round, so a resumed run picks
the same cohorts. The sampler draws from one generator seeded by the run seed,
once per round in order; it replays the draws of earlier rounds when asked for
a round out of sequence (after a resume), so no generator state needs saving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

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
    pools: tuple[str, ...] = ()  # where it may run, in order of preference; () means any pool
    part: int = 0  # 1.. for the one-client pieces of a unit split after repeated failures

    @property
    def order(self) -> tuple[int, int]:
        """Units are summed in this order, so the result never depends on who ran what."""
        return (self.unit_id, self.part)

    def split(self) -> list["WorkUnit"]:
        return [WorkUnit(self.unit_id, (cid,), self.pools, i + 1) for i, cid in enumerate(self.client_ids)]


# Partial sums in flight per round stay under this many bytes (counted at 8 bytes a value).
PARTIAL_SUM_BUDGET = 512 * 2**20
# Clients per unit by default: each executor call costs ~2 ms here, so a unit should
# carry enough client work to hide that, and a round still splits into several units.
DEFAULT_CLIENTS_PER_UNIT = 25


def default_unit_size(cohort_size: int, model_params: int = 0) -> int:
    """About 25 clients per unit, at least two units per round (so two executors share
    a round), and fewer units for a model so large that the round's partial sums would
    pass PARTIAL_SUM_BUDGET. Heavy clients (GPU training) want ``executors.unit_size: 1``.

    Depends on the cohort and the model alone, never on the cluster, so the unit
    boundaries (and the bits of the sums) are the same on every run and resume.
    """
    units = max(2, -(-cohort_size // DEFAULT_CLIENTS_PER_UNIT))
    if model_params:
        units = min(units, max(2, PARTIAL_SUM_BUDGET // (8 * model_params)))
    return max(1, -(-cohort_size // units))


def make_units(
    cohort: np.ndarray,
    unit_size: int | None = None,
    model_params: int = 0,
    placement: Mapping[int, tuple[str, ...]] | None = None,
) -> list[WorkUnit]:
    """Cut a cohort into units; clients with different pool preferences never share one.

    ``placement`` maps a client id to its pools in order of preference (clients it
    does not name may run anywhere). Units follow client-id order within each
    placement group, groups in order of their lowest client id.
    """
    size = unit_size or default_unit_size(len(cohort), model_params)
    groups: dict[tuple[str, ...], list[int]] = {}
    for cid in (int(c) for c in cohort):
        groups.setdefault(placement.get(cid, ()) if placement else (), []).append(cid)
    units: list[WorkUnit] = []
    for pools, ids in groups.items():
        for start in range(0, len(ids), size):
            units.append(WorkUnit(len(units), tuple(ids[start : start + size]), pools))
    return units


def client_seed(run_seed: int, round: int, client_id: int) -> list[int]:
    """The entropy for a client's randomness in a round: ``default_rng(client_seed(...))``."""
    return [int(run_seed), int(round), int(client_id)]
