"""Which clients train in a round, and how a cohort is cut into work units.

Every choice derives from the run seed, the round and the run's history, so a
resumed run picks the same cohorts. A selector gets the history records of the
rounds before (the controller checkpoints and reloads them on resume) and
derives its per-client statistics from them; its randomness comes from a
generator seeded by (run seed, round). No selector state needs saving.

The uniform sampler keeps its original stream (one generator seeded by the run
seed, drawn once per round in order; benchmark W3 relies on it): it replays the
draws of earlier rounds when asked for a round out of sequence (after a resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from .config import RunConfig

__all__ = [
    "Selector",
    "UniformSelector",
    "SpeedSelector",
    "OortSelector",
    "PowerOfChoiceSelector",
    "ClientStats",
    "build_selector",
    "WorkUnit",
    "make_units",
    "client_seed",
]

History = Sequence[Mapping[str, Any]]
# Keeps selection's generators apart from the clients' ([seed, round, client id]).
_SELECTION_KEY = 0x5E1EC7


class Selector(Protocol):
    """Picks a round's cohort from the run seed, the round and the history before it."""

    name: str
    num_clients: int
    cohort_size: int
    info: dict[str, Any]  # what the last cohort() call did, for the round's history record

    def cohort(self, round: int, history: History = ()) -> np.ndarray:
        """Sorted distinct int64 client ids for ``round`` (rounds count from 1)."""
        ...


class ClientStats:
    """Per-client statistics folded from history records (arrays indexed by client id).

    Folding is incremental: when the history passed next extends the one folded
    (the same rounds, then more), only the new records are read.
    """

    def __init__(self, num_clients: int) -> None:
        self.num_clients = num_clients
        self.reset()

    def reset(self) -> None:
        n = self.num_clients
        self.reports = np.zeros(n, np.int64)  # reports of any status
        self.ok = np.zeros(n, np.int64)
        self.failed = np.zeros(n, np.int64)  # failed or rejected
        self.late = np.zeros(n, np.int64)  # not waited for
        self.last_selected = np.zeros(n, np.int64)  # the last round it was in a cohort; 0: never
        self.last_loss = np.full(n, np.nan)  # its last reported train_loss
        self.last_examples = np.zeros(n, np.int64)  # num_examples with that loss
        self.last_duration = np.full(n, np.nan)  # its last successful training's seconds
        self._examples = np.zeros(n, np.float64)  # sums over timed successful reports
        self._seconds = np.zeros(n, np.float64)
        self._folded: list[int] = []  # round numbers of the records folded, in order

    def update(self, history: History) -> "ClientStats":
        done = len(self._folded)
        if len(history) < done or [int(h.get("round", -1)) for h in history[:done]] != self._folded:
            self.reset()  # another history (a resume, or rounds going back): fold it anew
            done = 0
        for record in history[done:]:
            self._fold(record)
        return self

    def _fold(self, record: Mapping[str, Any]) -> None:
        n = self.num_clients
        r = int(record.get("round", -1))
        self._folded.append(r)
        for cid in record.get("cohort", ()):
            if 0 <= int(cid) < n:
                self.last_selected[int(cid)] = max(int(self.last_selected[int(cid)]), r)
        for report in record.get("clients", ()):
            cid = int(report.get("client_id", -1))
            if not 0 <= cid < n:
                continue
            self.reports[cid] += 1
            status = report.get("status")
            if status == "ok":
                self.ok[cid] += 1
                examples = int(report.get("num_examples") or 0)
                seconds = float(report.get("duration_s") or 0.0)
                if seconds > 0 and examples > 0:
                    self._examples[cid] += examples
                    self._seconds[cid] += seconds
                    self.last_duration[cid] = seconds
                loss = (report.get("metrics") or {}).get("train_loss")
                if isinstance(loss, (int, float)) and math.isfinite(loss):
                    self.last_loss[cid] = float(loss)
                    self.last_examples[cid] = examples
            elif status == "late":
                self.late[cid] += 1
            else:  # failed, rejected
                self.failed[cid] += 1

    @property
    def seen(self) -> np.ndarray:
        """Clients that reported at least once (ok, failed, rejected or late)."""
        return self.reports > 0

    @property
    def throughput(self) -> np.ndarray:
        """Examples per second over its successful rounds; NaN where never measured."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self._seconds > 0, self._examples / np.where(self._seconds > 0, self._seconds, 1), np.nan)

    @property
    def reliability(self) -> np.ndarray:
        """(ok + 1) / (reports + 1): 1 for an unseen client, falling with each failure or late report."""
        return (self.ok + 1) / (self.reports + 1)


def _check_size(num_clients: int, cohort_size: int) -> None:
    if not 1 <= cohort_size <= num_clients:
        raise ValueError(f"cohort size {cohort_size} must be in 1..{num_clients}")


def _check_round(round: int) -> None:
    if round < 1:
        raise ValueError("rounds count from 1")


def _weighted_sample(rng: np.random.Generator, ids: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """k distinct ids, drawn one after another with probability ∝ weight (Efraimidis–Spirakis keys)."""
    if k <= 0:
        return np.empty(0, np.int64)
    u = rng.random(len(ids))
    w = np.maximum(np.asarray(weights, np.float64), 1e-12)
    with np.errstate(divide="ignore"):
        keys = np.log(u) / w  # the k largest of u**(1/w)
    return ids[np.argsort(-keys, kind="stable")[:k]]


class _SelectorBase:
    """What every selector holds: the population, the cohort size, the run seed, and what
    it did in the last round (``info``, for the history)."""

    name = ""

    def __init__(self, num_clients: int, cohort_size: int, seed: int) -> None:
        _check_size(num_clients, cohort_size)
        self.num_clients = num_clients
        self.cohort_size = cohort_size
        self.seed = seed
        self.info: dict[str, Any] = {}


class UniformSelector(_SelectorBase):
    """Uniform sampling without replacement; the whole population when the cohort is everyone."""

    name = "uniform"

    def __init__(self, num_clients: int, cohort_size: int, seed: int) -> None:
        super().__init__(num_clients, cohort_size, seed)
        self._rng: np.random.Generator | None = None
        self._next_round = 1

    def cohort(self, round: int, history: History = ()) -> np.ndarray:
        """Sorted int64 client ids for ``round`` (rounds count from 1); the history is not needed."""
        _check_round(round)
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


class _HistorySelector(_SelectorBase):
    """What the history-driven selectors share: stats from the history, a (seed, round) generator."""

    def __init__(self, num_clients: int, cohort_size: int, seed: int) -> None:
        super().__init__(num_clients, cohort_size, seed)
        self.stats = ClientStats(num_clients)

    def cohort(self, round: int, history: History = ()) -> np.ndarray:
        _check_round(round)
        self.info = {}
        if self.cohort_size == self.num_clients:
            return np.arange(self.num_clients, dtype=np.int64)
        chosen = self._choose(round, self.stats.update(history), self.rng(round))
        assert len(chosen) == self.cohort_size and len(set(chosen.tolist())) == self.cohort_size
        return np.sort(chosen).astype(np.int64)

    def rng(self, round: int) -> np.random.Generator:
        """A round's selection randomness: seeded by (run seed, round), apart from the clients' seeds."""
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(round)], spawn_key=(_SELECTION_KEY,)))

    def _choose(self, round: int, stats: ClientStats, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class SpeedSelector(_HistorySelector):
    """Availability- and speed-aware: sampled ∝ max(relative throughput × reliability, floor).

    Relative throughput is examples/second over the median measured client (1 for a
    client never measured); reliability is (ok + 1) / (reports + 1), so failures and
    late reports lower a client's weight and later successes restore it. The floor
    keeps slow or flaky clients in the draw.
    """

    name = "speed"

    def __init__(self, num_clients: int, cohort_size: int, seed: int, floor: float = 0.1) -> None:
        super().__init__(num_clients, cohort_size, seed)
        if not 0 < floor <= 1:
            raise ValueError("floor must be in (0, 1]")
        self.floor = floor

    def weights(self, stats: ClientStats) -> np.ndarray:
        speed = stats.throughput
        known = np.isfinite(speed)
        relative = np.ones(self.num_clients)
        if known.any():
            relative[known] = speed[known] / float(np.median(speed[known]))
        return np.maximum(relative * stats.reliability, self.floor)

    def _choose(self, round: int, stats: ClientStats, rng: np.random.Generator) -> np.ndarray:
        ids = np.arange(self.num_clients, dtype=np.int64)
        self.info = {"measured": int(np.isfinite(stats.throughput).sum())}
        return _weighted_sample(rng, ids, self.weights(stats), self.cohort_size)


class OortSelector(_HistorySelector):
    """Oort (Lai et al., OSDI'21): exploit high utility, explore clients never seen.

    A seen client's score is its statistical utility num_examples × train_loss (the
    proxy for |B_i|·sqrt(mean loss²)), normalised to [0, 1] over the seen clients,
    plus a staleness bonus sqrt(staleness_weight · ln(round) / last round picked),
    times (T / t_i)^round_penalty when its last training took t_i > T seconds
    (T: preferred_duration_s, default the median measured duration). A fraction
    max(exploration_min, exploration_factor · exploration_decay^(round-1)) of the
    cohort goes to unseen clients (uniformly); the rest is drawn ∝ score among the
    seen clients scoring at least cut_off × the k-th best.
    """

    name = "oort"

    def __init__(
        self,
        num_clients: int,
        cohort_size: int,
        seed: int,
        exploration_factor: float = 0.9,
        exploration_decay: float = 0.98,
        exploration_min: float = 0.3,
        round_penalty: float = 2.0,
        preferred_duration_s: float | None = None,
        staleness_weight: float = 0.1,
        cut_off: float = 0.95,
    ) -> None:
        super().__init__(num_clients, cohort_size, seed)
        self.exploration_factor = exploration_factor
        self.exploration_decay = exploration_decay
        self.exploration_min = exploration_min
        self.round_penalty = round_penalty
        self.preferred_duration_s = preferred_duration_s
        self.staleness_weight = staleness_weight
        self.cut_off = cut_off

    def exploration(self, round: int) -> float:
        return max(self.exploration_min, self.exploration_factor * self.exploration_decay ** (round - 1))

    def scores(self, round: int, stats: ClientStats) -> np.ndarray:
        """Every client's score (meaningful for seen clients only)."""
        utility = stats.last_examples * stats.last_loss  # NaN: no loss reported yet
        has = np.isfinite(utility)
        score = np.zeros(self.num_clients)
        if has.any():
            lo, hi = float(utility[has].min()), float(utility[has].max())
            score[has] = (utility[has] - lo) / (hi - lo) if hi > lo else 1.0
        last = np.maximum(stats.last_selected, 1)
        score += np.sqrt(self.staleness_weight * math.log(max(round, 1)) / last)
        duration = stats.last_duration.copy()
        timed = np.isfinite(duration)
        if timed.any():
            preferred = self.preferred_duration_s or float(np.median(duration[timed]))
            slowest = float(duration[timed].max())
            duration[~timed & (stats.late > 0)] = max(slowest, preferred)  # only ever late: as slow as the slowest
            slow = np.isfinite(duration) & (duration > preferred)
            score[slow] *= (preferred / duration[slow]) ** self.round_penalty
        return score

    def _choose(self, round: int, stats: ClientStats, rng: np.random.Generator) -> np.ndarray:
        k = self.cohort_size
        seen = np.flatnonzero(stats.seen).astype(np.int64)
        unseen = np.flatnonzero(~stats.seen).astype(np.int64)
        explore = min(len(unseen), _round_half_up(k * self.exploration(round)))
        exploit = min(k - explore, len(seen))
        explore = k - exploit
        chosen = rng.choice(unseen, explore, replace=False) if explore else np.empty(0, np.int64)
        if exploit:
            score = self.scores(round, stats)[seen]
            kth = float(np.sort(score)[::-1][exploit - 1])
            pool = score >= kth * self.cut_off
            chosen = np.concatenate([chosen, _weighted_sample(rng, seen[pool], score[pool], exploit)])
        self.info = {"explored": int(explore), "exploited": int(exploit)}
        return chosen.astype(np.int64)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


class PowerOfChoiceSelector(_HistorySelector):
    """Power-of-choice (Cho et al., 2020): d candidates drawn uniformly, the highest last losses win.

    A client never tried counts as loss +inf (so new clients get tried); one tried
    that never reported a loss (failed, late, or a task without train_loss) goes last.
    Ties (e.g. all unknown) fall to the candidates' random order.
    """

    name = "power_of_choice"

    def __init__(self, num_clients: int, cohort_size: int, seed: int, candidates: int | None = None) -> None:
        super().__init__(num_clients, cohort_size, seed)
        self.candidates = min(num_clients, max(cohort_size, candidates or 2 * cohort_size))

    def _choose(self, round: int, stats: ClientStats, rng: np.random.Generator) -> np.ndarray:
        drawn = rng.choice(self.num_clients, self.candidates, replace=False).astype(np.int64)
        loss = stats.last_loss[drawn].copy()
        unknown = ~np.isfinite(loss)
        loss[unknown & stats.seen[drawn]] = -np.inf
        loss[unknown & ~stats.seen[drawn]] = np.inf
        self.info = {"candidates": int(self.candidates), "untried": int((unknown & ~stats.seen[drawn]).sum())}
        return drawn[np.argsort(-loss, kind="stable")[: self.cohort_size]]


def build_selector(config: "RunConfig") -> Selector:
    """The selector ``config.cohort.selection`` names, sized by the cohort and seeded by the run."""
    n = config.data.num_clients
    k = config.cohort.selected(n)
    seed = config.run.seed
    params = config.cohort.selection.model_dump()
    name = params.pop("name")
    classes: dict[str, Any] = {
        "uniform": UniformSelector,
        "speed": SpeedSelector,
        "oort": OortSelector,
        "power_of_choice": PowerOfChoiceSelector,
    }
    if name not in classes:
        raise ValueError(f"unknown cohort.selection.name {name!r}; use one of {sorted(classes)}")
    return classes[name](n, k, seed, **params)


@dataclass(frozen=True)
class WorkUnit:
    """A run of client ids that one executor trains and pre-aggregates in one call."""

    unit_id: int
    client_ids: tuple[int, ...]
    pools: tuple[str, ...] = ()  # where it may run, in order of preference; () means any pool
    part: int = 0  # 1.. for the one-client pieces of a unit split after repeated failures
    # What the strategy sends along (see Strategy.shared) and its clients' carried state
    # (SCAFFOLD's c_i, compression residuals): filled in by the controller at dispatch.
    shared: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    state: Mapping[int, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def order(self) -> tuple[int, int]:
        """Units are summed in this order, so the result never depends on who ran what."""
        return (self.unit_id, self.part)

    def split(self) -> list["WorkUnit"]:
        return [
            WorkUnit(self.unit_id, (cid,), self.pools, i + 1, self.shared, {cid: self.state[cid]} if cid in self.state else {})
            for i, cid in enumerate(self.client_ids)
        ]


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
