from elasticfl.policies import Action, FailureKind, FailurePolicy, UnitFailure


def failure(attempts):
    return UnitFailure(round=3, unit_id=1, first_client=25, last_client=49, attempts=attempts, kind=FailureKind.EXECUTOR_LOST)


def test_a_lost_executor_is_retried_within_budget():
    policy = FailurePolicy(max_unit_retries=2)
    assert policy.decide(failure(1)).action is Action.RETRY
    assert policy.decide(failure(2)).action is Action.RETRY


def test_past_the_budget_the_run_fails_naming_the_setting():
    decision = FailurePolicy(max_unit_retries=2).decide(failure(3))
    assert decision.action is Action.FAIL_RUN
    assert "executors.max_unit_retries" in decision.reason and "clients 25..49" in decision.reason


def test_zero_retries_fails_at_once():
    assert FailurePolicy(max_unit_retries=0).decide(failure(1)).action is Action.FAIL_RUN
