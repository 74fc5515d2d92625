"""Failure handling as decisions: a snapshot of what went wrong in, what to do out.

Policies read a value and return a value; only the caller (the executor pool)
acts on the decision. They never call Ray or read the clock, so they are
unit-tested with plain values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FailureKind", "UnitFailure", "Action", "FailureDecision", "FailurePolicy"]


class FailureKind(str, enum.Enum):
    EXECUTOR_LOST = "executor_lost"  # the executor's process or node died under the unit


class Action(str, enum.Enum):
    RETRY = "retry"  # run the unit again elsewhere, with the same seeds
    FAIL_RUN = "fail_run"


@dataclass(frozen=True)
class UnitFailure:
    round: int
    unit_id: int
    first_client: int
    last_client: int
    attempts: int  # runs of this unit so far, the failed one included
    kind: FailureKind


@dataclass(frozen=True)
class FailureDecision:
    action: Action
    reason: str


class FailurePolicy:
    """Retry a unit whose executor died, up to ``max_unit_retries`` times."""

    def __init__(self, max_unit_retries: int) -> None:
        self.max_unit_retries = max_unit_retries

    def decide(self, failure: UnitFailure) -> FailureDecision:
        if failure.attempts <= self.max_unit_retries:
            return FailureDecision(
                Action.RETRY,
                f"round {failure.round}: unit {failure.unit_id} lost its executor "
                f"(attempt {failure.attempts}); re-queued with the same seeds",
            )
        return FailureDecision(
            Action.FAIL_RUN,
            f"round {failure.round}: work unit {failure.unit_id} (clients {failure.first_client}.."
            f"{failure.last_client}) lost its executor {failure.attempts} times; raise "
            "executors.max_unit_retries or check the nodes' health",
        )
