"""FedAvg / FedAvgM against results computed by hand; the weighted sum's invariants."""

import numpy as np
import pytest

from elasticfl.strategies import FedAvg, FedAvgM, WeightedSum
from tests.conftest import run_in_flower_venv


def _sum(updates):
    s = WeightedSum()
    for weights, n in updates:
        s.add(weights, n)
    return s


def test_fedavg_is_the_example_weighted_mean():
    a = [np.array([1.0, 2.0], np.float32), np.array([[0.0]], np.float32)]
    b = [np.array([4.0, 8.0], np.float32), np.array([[3.0]], np.float32)]
    out = FedAvg().aggregate(a, _sum([(a, 1), (b, 2)]))
    # (1*1 + 2*4)/3 = 3, (1*2 + 2*8)/3 = 6, (0 + 2*3)/3 = 2
    np.testing.assert_array_equal(out[0], np.array([3.0, 6.0], np.float32))
    np.testing.assert_array_equal(out[1], np.array([[2.0]], np.float32))
    assert out[0].dtype == np.float32


def test_fedavg_keeps_the_global_weights_when_no_client_had_data():
    g = [np.ones(3, np.float32)]
    s = _sum([([np.zeros(3, np.float32)], 0)])
    assert FedAvg().aggregate(g, s)[0] is g[0]


def test_merging_units_equals_one_flat_sum_bit_for_bit():
    rng = np.random.default_rng(1)
    updates = [([rng.standard_normal(1000).astype(np.float32)], int(rng.integers(1, 50))) for _ in range(40)]
    flat = FedAvg().aggregate(None, _sum(updates))[0]
    for cut in (1, 3, 7, 40):
        merged = WeightedSum()
        for start in range(0, 40, cut):
            merged.merge(_sum(updates[start : start + cut]))
        assert merged.total_weight == sum(n for _, n in updates)
        assert FedAvg().aggregate(None, merged)[0].tobytes() == flat.tobytes()


def test_merging_an_empty_unit_changes_nothing():
    s = _sum([([np.ones(2, np.float32)], 3)])
    s.merge(WeightedSum())
    assert s.total_weight == 3
    np.testing.assert_array_equal(s.mean()[0], np.ones(2, np.float32))


def test_fedavgm_applies_server_momentum_and_round_trips_its_state():
    g = [np.array([1.0], np.float32)]
    s = _sum([([np.array([0.0], np.float32)], 1)])  # the cohort moved to 0: delta = 1
    strat = FedAvgM(server_lr=0.5, momentum=0.9)
    w1 = strat.aggregate(g, s)
    assert w1[0][0] == pytest.approx(1 - 0.5 * 1.0)
    state = strat.state_dict()
    again = FedAvgM(server_lr=0.5, momentum=0.9)
    again.load_state_dict(state)
    s2 = _sum([([np.array([0.0], np.float32)], 1)])
    w2 = strat.aggregate(w1, s2)
    # velocity = 0.9 * 1 + 0.5 = 1.4; w = 0.5 - 0.5 * 1.4 = -0.2
    assert w2[0][0] == pytest.approx(-0.2)
    assert again.aggregate(w1, _sum([([np.array([0.0], np.float32)], 1)]))[0][0] == w2[0][0]


def test_accumulator_precision_is_chosen_by_model_size():
    from elasticfl.strategies import AUTO_FLOAT64_MAX_PARAMS, resolve_precision

    assert resolve_precision("auto", 4810) == "float64"
    assert resolve_precision("auto", AUTO_FLOAT64_MAX_PARAMS + 1) == "float32"
    assert resolve_precision("float64", 10**9) == "float64"
    s = WeightedSum(precision="float32")
    s.add([np.ones(3, np.float16)], 2)
    assert s.sums[0].dtype == np.float32  # half precision is summed in float32 at least
    s.add([np.ones(3, np.float16)], 1)
    np.testing.assert_array_equal(s.mean()[0], np.ones(3, np.float16))


def test_a_first_update_with_weight_zero_still_starts_the_sums():
    s = _sum([([np.ones(2, np.float32)], 0), ([np.full(2, 3.0, np.float32)], 2)])
    np.testing.assert_array_equal(s.mean()[0], np.full(2, 3.0, np.float32))


# -- server optimisers (Reddi et al. 2021, Algorithm 2), worked out by hand ----------------------

from elasticfl import RunConfig  # noqa: E402
from elasticfl.strategies import FedAdagrad, FedAdam, FedProx, FedYogi, build_strategy  # noqa: E402


def _mean_of(target):
    """A WeightedSum of two clients (weights 1 and 3) whose weighted mean is ``target``:
    (1·4t + 3·0) / 4 = t."""
    t = np.array(target, np.float32)
    return _sum([([4 * t], 1), ([np.zeros_like(t)], 3)])


def test_fedadam_by_hand():
    strat = FedAdam(server_lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    x0 = [np.zeros(3, np.float32)]
    # Δ = mean − x = [1, −1, 0]; m = 0.5·0 + 0.5·Δ = [0.5, −0.5, 0]
    # v starts at τ² = 1: v = 0.75·1 + 0.25·Δ² = [1, 1, 0.75]
    # x = 0 + 1·m / (√v + 1) = [0.5/2, −0.5/2, 0] = [0.25, −0.25, 0]
    x1 = strat.aggregate(x0, _mean_of([1, -1, 0]))
    np.testing.assert_array_equal(x1[0], np.array([0.25, -0.25, 0], np.float32))
    assert x1[0].dtype == np.float32
    np.testing.assert_array_equal(strat.state_dict()["v"][0], [1, 1, 0.75])
    # round 2, Δ = [1, 1, 0]: m = 0.5·[0.5, −0.5, 0] + 0.5·[1, 1, 0] = [0.75, 0.25, 0]
    # v = 0.75·[1, 1, 0.75] + 0.25·[1, 1, 0] = [1, 1, 0.5625]; x += m / 2 = [0.375, 0.125, 0]
    x2 = strat.aggregate(x1, _mean_of([1.25, 0.75, 0]))
    np.testing.assert_array_equal(x2[0], np.array([0.625, -0.125, 0], np.float32))
    np.testing.assert_array_equal(strat.state_dict()["m"][0], [0.75, 0.25, 0])
    np.testing.assert_array_equal(strat.state_dict()["v"][0], [1, 1, 0.5625])


def test_fedyogi_by_hand():
    strat = FedYogi(server_lr=3.0, beta1=0.5, beta2=0.25, tau=1.0)
    x0 = [np.zeros(3, np.float32)]
    # Δ = [2, −2, 0], Δ² = [4, 4, 0]; v₀ = τ² = 1
    # v = v − (1−β2)·Δ²·sign(v − Δ²) = [1 + 0.75·4, 1 + 0.75·4, 1 − 0] = [4, 4, 1]
    # m = 0.5·Δ = [1, −1, 0]; x = 3·m / (√v + 1) = [3/3, −3/3, 0] = [1, −1, 0]
    x1 = strat.aggregate(x0, _mean_of([2, -2, 0]))
    np.testing.assert_array_equal(x1[0], np.array([1, -1, 0], np.float32))
    np.testing.assert_array_equal(strat.state_dict()["v"][0], [4, 4, 1])
    # round 2, Δ = [1, 0, 0]: v − Δ² = [3, 4, 1] > 0, so v shrinks additively by 0.75·Δ²:
    # v = [4 − 0.75, 4, 1] = [3.25, 4, 1] (Adam would give 0.25·4 + 0.75·1 = 1.75 for the first)
    strat.aggregate(x1, _mean_of([2, -1, 0]))
    np.testing.assert_array_equal(strat.state_dict()["v"][0], [3.25, 4, 1])
    np.testing.assert_array_equal(strat.state_dict()["m"][0], [1, -0.5, 0])  # 0.5·[1, −1, 0] + 0.5·[1, 0, 0]


def test_fedadagrad_by_hand():
    strat = FedAdagrad(server_lr=1.0, beta1=0.5, tau=0.75)
    x0 = [np.zeros(3, np.float32)]
    # Δ = [1, −1, 0]; v = τ² + Δ² = [0.5625 + 1, 0.5625 + 1, 0.5625] = [1.5625, 1.5625, 0.5625]
    # √v = [1.25, 1.25, 0.75]; m = 0.5·Δ; x = m / (√v + 0.75) = [0.5/2, −0.5/2, 0]
    x1 = strat.aggregate(x0, _mean_of([1, -1, 0]))
    np.testing.assert_array_equal(x1[0], np.array([0.25, -0.25, 0], np.float32))
    # round 2, Δ = [1, 1, 0]: v only grows, by Δ²: [2.5625, 2.5625, 0.5625]
    strat.aggregate(x1, _mean_of([1.25, 0.75, 0]))
    np.testing.assert_array_equal(strat.state_dict()["v"][0], [2.5625, 2.5625, 0.5625])


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_server_optimiser_state_round_trips_bit_for_bit(cls):
    rng = np.random.default_rng(7)
    x = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]

    def cohort():
        return _sum([([a + rng.standard_normal(a.shape).astype(np.float32) for a in x], int(rng.integers(1, 9))) for _ in range(5)])

    strat = cls(server_lr=0.05)
    assert strat.state_dict() == {}  # nothing before the first round
    for _ in range(3):
        x = strat.aggregate(x, cohort())
    saved = {k: [a.copy() for a in v] for k, v in strat.state_dict().items()}
    again = cls(server_lr=0.05)
    again.load_state_dict(saved)
    one = cohort()
    two = WeightedSum(sums=[s.copy() for s in one.sums], total_weight=one.total_weight, count=one.count, dtypes=list(one.dtypes))
    a, b = strat.aggregate(x, one), again.aggregate(x, two)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(a, b))


def test_server_optimisers_keep_weights_and_state_when_no_client_had_data():
    strat = FedAdam()
    g = [np.ones(2, np.float32)]
    assert strat.aggregate(g, _sum([([np.zeros(2, np.float32)], 0)]))[0] is g[0]
    assert strat.state_dict() == {}


@pytest.mark.parametrize(
    "section, cls",
    [
        ({"name": "fedprox", "mu": 0.1}, FedProx),
        ({"name": "fedadam", "server_lr": 0.01}, FedAdam),
        ({"name": "fedyogi", "beta2": 0.9}, FedYogi),
        ({"name": "fedadagrad", "tau": 1e-2}, FedAdagrad),
    ],
)
def test_strategy_sections_build_their_strategy(section, cls):
    config = RunConfig.from_dict({"strategy": section})
    strat = build_strategy(config.strategy)
    assert type(strat) is cls and strat.name == section["name"]
    for key, value in section.items():
        if key != "name":
            assert getattr(strat, key) == value


def test_server_optimiser_defaults_follow_the_paper():
    s = RunConfig.from_dict({"strategy": {"name": "fedyogi"}}).strategy
    assert (s.server_lr, s.beta1, s.beta2, s.tau) == (0.1, 0.9, 0.99, 1e-3)
    assert "beta2" not in type(RunConfig.from_dict({"strategy": {"name": "fedadagrad"}}).strategy).model_fields


def test_a_misspelt_strategy_names_the_new_ones():
    from elasticfl import ConfigError

    with pytest.raises(ConfigError, match="fedyogi"):
        RunConfig.from_dict({"strategy": {"name": "fedyoga"}})
    with pytest.raises(ConfigError, match=r"strategy\.beta2: unknown field"):
        RunConfig.from_dict({"strategy": {"name": "fedadagrad", "beta2": 0.9}})


# -- through the controller: resume continues bit for bit -------------------------------------

def _noisy(rounds, strategy):
    return RunConfig.from_dict(
        {
            "run": {"name": "t", "seed": 3, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"},
            "data": {"dataset": "none", "num_clients": 12},
            "cohort": {"clients_per_round": 5},
            "executors": {"unit_size": 2},
            "strategy": strategy,
        }
    )


def _controller(cfg, path, resume=False):
    from elasticfl.checkpoint import CheckpointStore
    from elasticfl.controller import Controller
    from elasticfl.worker import InProcessPool

    return Controller(cfg, "r", InProcessPool(cfg), CheckpointStore(str(path), "r"), resume=resume)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimiser_state_survives_a_resume(tmp_path, name):
    strategy = {"name": name, "server_lr": 0.05}
    whole = _controller(_noisy(5, strategy), tmp_path / "a")
    whole.run()
    _controller(_noisy(2, strategy), tmp_path / "b").run()  # "killed" after round 2
    resumed = _controller(_noisy(5, strategy), tmp_path / "b", resume=True)
    resumed.run()
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    fedavg = _controller(_noisy(5, {"name": "fedavg"}), tmp_path / "c")
    fedavg.run()
    assert fedavg.status()["weights_sha256"] != whole.status()["weights_sha256"]


# -- FedProx: the proximal term in the built-in classifier's local SGD ----------------------------

def _digits(strategy, rounds=2):
    return RunConfig.from_dict(
        {
            "run": {"name": "p", "seed": 1, "rounds": rounds},
            "task": {"type": "classification", "epochs": 2, "lr": 0.1},
            "data": {"dataset": "digits", "num_clients": 10, "partition": {"name": "dirichlet", "alpha": 0.1}},
            "cohort": {"clients_per_round": 4},
            "executors": {"unit_size": 2},
            "strategy": strategy,
        }
    )


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(tmp_path):
    avg = _controller(_digits({"name": "fedavg"}), tmp_path / "a")
    avg.run()
    prox = _controller(_digits({"name": "fedprox", "mu": 0.0}), tmp_path / "b")
    prox.run()
    assert prox.status()["weights_sha256"] == avg.status()["weights_sha256"]
    prox1 = _controller(_digits({"name": "fedprox", "mu": 0.5}), tmp_path / "c")
    prox1.run()
    assert prox1.status()["weights_sha256"] != avg.status()["weights_sha256"]


def _client_update(mu, cid=3, epochs=5):
    from elasticfl.tasks import TrainContext
    from elasticfl.worker import ClientWorker

    cfg = _digits({"name": "fedprox", "mu": mu}).with_overrides(task={"epochs": epochs})
    worker = ClientWorker(cfg)
    g = worker.init_weights()
    out = worker.task.train(g, worker.client_data(cid), TrainContext(1, cid, 1, np.random.default_rng(0)))
    return g, out.weights, worker


def test_a_large_mu_keeps_the_client_update_near_the_global_weights():
    norms = {}
    for mu in (0.0, 0.1, 1.0, 10.0):
        g, w, _ = _client_update(mu)
        norms[mu] = float(np.sqrt(sum(((a - b).astype(np.float64) ** 2).sum() for a, b in zip(w, g))))
    assert norms[0.0] > norms[0.1] > norms[1.0] > norms[10.0] > 0
    assert norms[10.0] < 0.5 * norms[0.0]


def test_the_proximal_term_is_the_gradient_of_mu_half_squared_distance():
    import torch

    mu = 0.7
    g, w, worker = _client_update(mu, epochs=1)
    data = worker.client_data(3)
    # the same SGD loop written with the loss FedProx states: CE + (mu/2)·||w − w_global||²
    model = worker.task._factory()(64, 10, [64])
    model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(model.state_dict(), g)})
    anchors = [torch.from_numpy(a.copy()) for a in g]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(data)))
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for start in range(0, len(data), 32):
        idx = order[start : start + 32]
        opt.zero_grad()
        prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
        (torch.nn.functional.cross_entropy(model(x[idx]), y[idx]) + mu / 2 * prox).backward()
        opt.step()
    for ours, ref in zip(w, model.state_dict().values()):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_server_optimisers_agree_with_flower():
    """Flower pins another Ray, so it lives in benchmarks/.venv-flower (benchmarks/setup_flower.sh);
    the comparison runs there, on the same client results, and must report agreement."""
    import json
    out = run_in_flower_venv("strategies.py", "--against-flower")
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["strategy"] for r in reports} == {"fedadam", "fedyogi", "fedadagrad"}, out.stderr[-2000:]
    assert all(r["agrees"] and r["max_abs_diff_m"] == 0 and r["max_abs_diff_v"] == 0 for r in reports), reports
    assert out.returncode == 0
