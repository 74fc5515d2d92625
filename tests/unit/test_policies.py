"""Failure and round-closing policies: plain values in, decisions out (no Ray)."""

from elasticfl.policies import (
    Action,
    FailureKind,
    FailurePolicy,
    RoundClosePolicy,
    RoundProgress,
    UnitFailure,
)

CLIENTS = tuple(range(25, 50))


def lost(failures, clients=CLIENTS, preemptions=0):
    return UnitFailure(3, 1, clients, failures, preemptions, FailureKind.EXECUTOR_LOST)


def preempted(preemptions, failures=0):
    return UnitFailure(3, 1, CLIENTS, failures, preemptions, FailureKind.PREEMPTED)


def test_a_lost_executor_is_retried_within_the_failure_budget():
    policy = FailurePolicy(max_unit_retries=2, max_preemptions=5)
    assert policy.decide(lost(1)).action is Action.RETRY
    assert policy.decide(lost(2)).action is Action.RETRY


def test_past_the_budget_a_unit_is_split_to_find_the_bad_client():
    decision = FailurePolicy(max_unit_retries=2, max_preemptions=5).decide(lost(3))
    assert decision.action is Action.SPLIT and "clients 25..49" in decision.reason


def test_a_single_client_past_the_budget_is_dropped_with_the_setting_named():
    decision = FailurePolicy(max_unit_retries=0, max_preemptions=5).decide(lost(1, clients=(7,)))
    assert decision.action is Action.DROP and "executors.max_unit_retries" in decision.reason


def test_preemptions_have_their_own_budget():
    policy = FailurePolicy(max_unit_retries=0, max_preemptions=3)
    # preemptions do not use up the failure budget, and failures do not use up theirs
    assert policy.decide(preempted(3, failures=0)).action is Action.RETRY
    assert policy.decide(preempted(1, failures=5)).action is Action.RETRY
    decision = policy.decide(preempted(4))
    assert decision.action is Action.DROP and "executors.max_preemptions" in decision.reason


def test_a_round_closes_at_its_target_only_with_over_selection():
    over = RoundClosePolicy(target=10, min_clients=5, deadline_s=None, over_selected=True)
    plain = RoundClosePolicy(target=10, min_clients=5, deadline_s=None, over_selected=False)
    progress = RoundProgress(elapsed_s=1.0, ok_clients=10, outstanding_units=2)
    assert "target" in over.close_reason(progress)
    assert plain.close_reason(progress) is None
    assert over.close_reason(RoundProgress(1.0, 9, 2)) is None


def test_a_deadline_closes_a_round_only_with_a_quorum():
    policy = RoundClosePolicy(target=10, min_clients=5, deadline_s=30, over_selected=False)
    assert policy.close_reason(RoundProgress(29.9, 9, 1)) is None  # before the deadline: wait
    assert policy.close_reason(RoundProgress(31, 4, 1)) is None  # past it, but short of the quorum: wait on
    assert "deadline" in policy.close_reason(RoundProgress(31, 5, 1))


def test_nothing_outstanding_means_nothing_to_close():
    policy = RoundClosePolicy(target=1, min_clients=1, deadline_s=0.1, over_selected=True)
    assert policy.close_reason(RoundProgress(99, 50, 0)) is None
