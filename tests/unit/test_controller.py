"""The round loop stepped without Ray, through an in-process executor pool."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.worker import InProcessPool
from tests.conftest import noisy_config


def noisy(rounds=4, clients=12, per_round=5, min_clients=None, **params):
    return RunConfig.from_dict(
        {
            "run": {"name": "t", "seed": 3, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean", "params": params},
            "data": {"dataset": "none", "num_clients": clients},
            "cohort": {"clients_per_round": per_round, "min_clients": min_clients},
            "executors": {"unit_size": 2},
        }
    )


def make(cfg, tmp_path, run_id="r", resume=False):
    return Controller(cfg, run_id, InProcessPool(cfg), CheckpointStore(str(tmp_path), run_id), resume=resume)


def test_a_run_completes_and_records_every_round(tmp_path):
    c = make(noisy(), tmp_path)
    assert c.run() is RunState.COMPLETED
    assert [h["round"] for h in c.history] == [1, 2, 3, 4]
    first = c.history[0]
    assert len(first["cohort"]) == 5 and first["clients_ok"] == 5 and first["units"] == 3
    assert {cl["client_id"] for cl in first["clients"]} == set(first["cohort"])
    assert all(cl["num_examples"] == cl["client_id"] + 1 for cl in first["clients"])
    assert c.status()["weights_sha256"] and c.status()["state"] == "completed"
    assert "norm" in c.history[-1]["metrics"]


def test_fedavg_result_matches_a_hand_written_loop(tmp_path):
    cfg = noisy(rounds=3)
    c = make(cfg, tmp_path)
    c.run()
    w = [np.zeros(8, np.float32), np.zeros((2, 2), np.float32)]
    sel_rng = np.random.default_rng(3)
    for r in range(1, 4):
        cohort = np.sort(sel_rng.choice(12, 5, replace=False))
        acc = [np.zeros(a.shape) for a in w]
        total = 0
        for cid in cohort:
            rng = np.random.default_rng([3, r, int(cid)])
            new = [a + rng.standard_normal(a.shape).astype(np.float32) * 0.1 for a in w]
            for s, a in zip(acc, new):
                s += a.astype(np.float64) * (cid + 1)
            total += cid + 1
        w = [(s / total).astype(np.float32) for s in acc]
    assert all((a == b).all() for a, b in zip(c.weights, w))


def test_same_seed_same_bits_and_resume_continues_exactly(tmp_path):
    whole = make(noisy(rounds=6), tmp_path / "a")
    whole.run()
    first = make(noisy(rounds=3), tmp_path / "b")  # "killed" after round 3
    first.run()
    resumed = make(noisy(rounds=6), tmp_path / "b", resume=True)
    resumed.run()
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    assert [h["cohort"] for h in resumed.history] == [h["cohort"] for h in whole.history]


def test_garbage_updates_are_rejected_logged_and_not_averaged(tmp_path, caplog):
    cfg = noisy(rounds=1, clients=6, per_round=6, nan_clients=[1], wrong_shape_clients=[2], raise_clients=[3])
    c = make(cfg, tmp_path)
    assert c.run() is RunState.COMPLETED
    by_id = {cl["client_id"]: cl for cl in c.history[0]["clients"]}
    assert by_id[1]["status"] == "rejected" and "NaN" in by_id[1]["reason"]
    assert by_id[2]["status"] == "rejected" and "shape" in by_id[2]["reason"]
    assert by_id[3]["status"] == "failed" and "crashed on purpose" in by_id[3]["reason"]
    assert c.history[0]["clients_ok"] == 3
    assert all(np.isfinite(a).all() for a in c.weights)
    assert "rejected client 1" in caplog.text
    # the average is over the good clients alone: 0, 4, 5 with weights 1, 5, 6
    expected = np.zeros(8)
    for cid in (0, 4, 5):
        expected += np.random.default_rng([3, 1, cid]).standard_normal(8).astype(np.float32) * 0.1 * (cid + 1)
    np.testing.assert_allclose(c.weights[0], (expected / 12).astype(np.float32), rtol=1e-5)


def test_too_few_usable_updates_fails_the_run_with_the_reason(tmp_path):
    cfg = noisy(rounds=2, clients=4, per_round=4, min_clients=3, nan_clients=[0, 1])
    c = make(cfg, tmp_path)
    assert c.run() is RunState.FAILED
    assert "min_clients=3" in c.status()["error"] and "NaN" in c.status()["error"]


def test_stop_finishes_the_round_and_checkpoints_it(tmp_path):
    c = make(noisy(rounds=50), tmp_path)
    c.start()
    c.step()
    c.request_stop()
    assert c.step() is RunState.STOPPED
    c._finish(RunState.STOPPED)
    assert c.status()["state"] == "stopped"
    assert CheckpointStore(str(tmp_path), "r").latest().round == 2


def test_resume_refuses_a_changed_config(tmp_path):
    make(noisy(rounds=2), tmp_path).run()
    changed = noisy(rounds=4, per_round=6)
    with pytest.raises(ConfigError, match="cohort"):
        make(changed, tmp_path, resume=True).start()


def test_a_new_run_refuses_an_existing_run_id(tmp_path):
    make(noisy(rounds=1), tmp_path).run()
    with pytest.raises(ConfigError, match="--resume"):
        make(noisy(rounds=1), tmp_path).start()


def test_resume_without_checkpoint_says_so(tmp_path):
    from elasticfl import CheckpointNotFoundError

    with pytest.raises(CheckpointNotFoundError, match="no complete checkpoint"):
        make(noisy(), tmp_path, resume=True).start()


def test_fedavgm_state_survives_a_resume(tmp_path):
    def cfg(rounds):
        d = noisy(rounds=rounds).to_dict()
        d["strategy"] = {"name": "fedavgm", "momentum": 0.5}
        return RunConfig.from_dict(d)

    whole = make(cfg(4), tmp_path / "a")
    whole.run()
    make(cfg(2), tmp_path / "b").run()
    resumed = make(cfg(4), tmp_path / "b", resume=True)
    resumed.run()
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]


def test_digits_classifier_learns(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "run": {"rounds": 5},
            "task": {"type": "classification", "epochs": 2, "lr": 0.2},
            "data": {"dataset": "digits", "num_clients": 10, "partition": {"name": "iid"}},
        }
    )
    c = make(cfg, tmp_path)
    assert c.run() is RunState.COMPLETED
    assert c.history[-1]["metrics"]["accuracy"] > 0.85


def test_over_selection_closes_the_round_at_its_target(tmp_path):
    config = noisy_config(rounds=2, clients=12, per_round=4, unit_size=2).with_overrides(cohort={"over_select": 0.5})
    controller = Controller(config, "over", InProcessPool(config), CheckpointStore(str(tmp_path), "over"))
    assert controller.run() is RunState.COMPLETED
    for record in controller.history:
        assert len(record["cohort"]) == 6  # 4 wanted, 50% more selected
        assert record["clients_ok"] == 4 and record["clients_late"] == 2
        late = [c for c in record["clients"] if c["status"] == "late"]
        assert len(late) == 2 and "target" in late[0]["reason"]


def test_a_stop_that_abandons_the_round_keeps_the_last_completed_one(tmp_path):
    config = noisy_config(rounds=6).with_overrides(checkpoint={"every": 5})
    store = CheckpointStore(str(tmp_path), "abandon")
    controller = Controller(config, "abandon", InProcessPool(config), store)
    controller.start()
    controller.step()
    controller.step()  # round 2 is done but, with every=5, not checkpointed
    weights = [w.copy() for w in controller.weights]
    controller.request_stop(abandon=True)
    assert controller.run() is RunState.STOPPED
    assert controller.round == 2 and len(controller.history) == 2
    assert all(np.array_equal(a, b) for a, b in zip(controller.weights, weights))
    assert store.latest().round == 2  # the stop saved the last completed round
