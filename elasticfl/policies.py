"""Failure and round-closing rules as decisions: a snapshot in, what to do out.

Policies read values and return values; only the caller (the executor pool)
acts on a decision. They never call Ray or read the clock, so they are
unit-tested with plain values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "FailureKind",
    "UnitFailure",
    "Action",
    "FailureDecision",
    "FailurePolicy",
    "RoundProgress",
    "RoundClosePolicy",
]


class FailureKind(str, enum.Enum):
    EXECUTOR_LOST = "executor_lost"  # the executor's process or node died: a crash, OOM, a lost machine
    PREEMPTED = "preempted"  # the node was drained or preempted (spot reclaim, batch job end): expected


class Action(str, enum.Enum):
    RETRY = "retry"  # run the unit again elsewhere, with the same seeds
    SPLIT = "split"  # run each of its clients on its own, to find the one that keeps failing
    DROP = "drop"  # give up on these clients for this round; the round's quorum decides the rest


@dataclass(frozen=True)
class UnitFailure:
    round: int
    unit_id: int
    client_ids: tuple[int, ...]
    failures: int  # executor losses of this unit so far that were not preemptions, this one included
    preemptions: int  # preemptions of this unit so far, this one included
    kind: FailureKind


@dataclass(frozen=True)
class FailureDecision:
    action: Action
    reason: str


def _clients(ids: tuple[int, ...]) -> str:
    return f"client {ids[0]}" if len(ids) == 1 else f"clients {ids[0]}..{ids[-1]}"


class FailurePolicy:
    """Separate budgets: preemptions are expected and cheap to absorb; failures are not.

    A unit that keeps failing is split into one-client units so one bad client
    (one that crashes its executor, say) cannot sink the others; a client that
    keeps failing on its own is dropped from the round, with the reason.
    """

    def __init__(self, max_unit_retries: int, max_preemptions: int) -> None:
        self.max_unit_retries = max_unit_retries
        self.max_preemptions = max_preemptions

    def decide(self, failure: UnitFailure) -> FailureDecision:
        who = f"round {failure.round}: unit {failure.unit_id} ({_clients(failure.client_ids)})"
        if failure.kind is FailureKind.PREEMPTED:
            if failure.preemptions <= self.max_preemptions:
                return FailureDecision(Action.RETRY, f"{who} was preempted (time {failure.preemptions}); re-queued")
            return FailureDecision(
                Action.DROP,
                f"preempted {failure.preemptions} times, more than executors.max_preemptions="
                f"{self.max_preemptions}",
            )
        if failure.failures <= self.max_unit_retries:
            return FailureDecision(
                Action.RETRY, f"{who} lost its executor (failure {failure.failures}); re-queued with the same seeds"
            )
        if len(failure.client_ids) > 1:
            return FailureDecision(
                Action.SPLIT,
                f"{who} lost its executor {failure.failures} times; running its clients one by one",
            )
        return FailureDecision(
            Action.DROP,
            f"its executor died {failure.failures} times while it trained, more than "
            f"executors.max_unit_retries={self.max_unit_retries}",
        )


@dataclass(frozen=True)
class RoundProgress:
    elapsed_s: float
    ok_clients: int  # usable updates received so far
    outstanding_units: int  # units not yet reported (queued or in flight)


class RoundClosePolicy:
    """When a round stops waiting: every unit reported, the target reached (over-selection),
    the deadline passed with at least ``min_clients`` usable updates, or a stop that
    abandons the round was asked for."""

    def __init__(self, target: int, min_clients: int, deadline_s: float | None, over_selected: bool) -> None:
        self.target = target
        self.min_clients = min_clients
        self.deadline_s = deadline_s
        self.over_selected = over_selected
        self.abandoned = False  # set by a stop that does not wait for the round in flight

    def abandon(self) -> None:
        self.abandoned = True

    def close_reason(self, p: RoundProgress) -> str | None:
        """Why the round closes now with units outstanding, or None to keep waiting."""
        if p.outstanding_units == 0:
            return None
        if self.abandoned:
            return "the run was stopped and this round abandoned"
        if self.over_selected and p.ok_clients >= self.target:
            return f"target of {self.target} updates reached (over-selection)"
        if self.deadline_s is not None and p.elapsed_s >= self.deadline_s and p.ok_clients >= self.min_clients:
            return f"deadline of {self.deadline_s:g}s passed with {p.ok_clients} updates"
        return None
