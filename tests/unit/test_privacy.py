"""Central DP (DP-FedAvg): clipping, seeded noise, the RDP accountant, and a controller run."""

import math
import warnings

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl import privacy as dp
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.strategies import WeightedSum
from elasticfl.worker import InProcessPool

# (q, z, steps) -> ε at δ = 1e-5, computed with Opacus 1.6.0's RDPAccountant (its default orders):
#   a = RDPAccountant(); a.history = [(z, q, steps)]; a.get_epsilon(1e-5)
OPACUS_EPSILON = {
    (0.01, 1.1, 1000): 1.7117700912203435,
    (0.1, 1.0, 100): 7.899255002434629,
    (0.05, 0.8, 50): 5.293225258936686,
    (1.0, 2.0, 10): 8.079406222420491,
    (0.2, 1.5, 30): 4.578505405773803,
    (0.001, 0.5, 10000): 6.418367323134741,
    (0.5, 5.0, 200): 7.230994548010104,
}


@pytest.mark.parametrize("q,z,steps", sorted(OPACUS_EPSILON))
def test_epsilon_matches_opacus_reference_values(q, z, steps):
    assert dp.epsilon(q, z, steps, 1e-5) == pytest.approx(OPACUS_EPSILON[(q, z, steps)], rel=1e-9)


@pytest.mark.parametrize("q,z,steps,delta", [(0.02, 1.0, 300, 1e-5), (0.3, 2.5, 40, 1e-6), (0.07, 0.7, 123, 1e-3)])
def test_epsilon_matches_a_live_opacus_accountant(q, z, steps, delta):
    accountants = pytest.importorskip("opacus.accountants")
    acc = accountants.RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = acc.get_epsilon(delta)
    assert dp.epsilon(q, z, steps, delta) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("alpha", [2, 3, 5, 8])
@pytest.mark.parametrize("q,sigma", [(0.05, 1.0), (0.3, 2.0), (0.01, 0.7)])
def test_rdp_matches_numerical_integration_of_the_renyi_divergence(alpha, q, sigma):
    # Independent of the series: A_α = ∫ μ0 (μ/μ0)^α with μ0 = N(0,σ²), μ = (1−q)μ0 + q N(1,σ²).
    from scipy import integrate, stats

    def f(x):
        m0 = stats.norm.pdf(x, 0, sigma)
        m1 = stats.norm.pdf(x, 1, sigma)
        return m0 * ((1 - q) + q * m1 / m0) ** alpha if m0 > 0 else 0.0

    a, _ = integrate.quad(f, -40 * sigma, 40 * sigma + alpha, limit=500, epsabs=0, epsrel=1e-12)
    want = math.log(a) / (alpha - 1)
    assert dp.compute_rdp(q, sigma, 1, [float(alpha)])[0] == pytest.approx(want, rel=1e-7)


def test_fractional_orders_sit_between_their_integer_neighbours():
    r = dp.compute_rdp(0.05, 1.0, 1, [2.0, 2.5, 3.0])
    assert r[0] < r[1] < r[2]  # RDP grows with the order


def test_accountant_edge_cases():
    assert dp.epsilon(0.1, 1.0, 0, 1e-5) == 0.0
    assert math.isinf(dp.epsilon(0.1, 0.0, 5, 1e-5))  # no noise: no guarantee
    assert dp.compute_rdp(1.0, 2.0, 3, [4.0])[0] == pytest.approx(3 * 4 / (2 * 4.0))  # plain Gaussian: α/(2σ²)
    eps = [dp.epsilon(0.1, 1.2, t, 1e-5) for t in (1, 10, 100)]
    assert eps == sorted(eps) and eps[0] > 0


# -- clipping and noise -------------------------------------------------------------------

def _weights(rng, scale=1.0):
    return [(rng.standard_normal(10) * scale).astype(np.float32), (rng.standard_normal((3, 3)) * scale).astype(np.float32)]


def test_clipping_bounds_every_clients_contribution():
    rng = np.random.default_rng(0)
    g = _weights(rng)
    for scale in (0.01, 1.0, 100.0):
        u = [a + b for a, b in zip(g, _weights(rng, scale))]
        delta, norm, clipped = dp.clip_update(u, g, 0.5)
        got = math.sqrt(sum(float((d**2).sum()) for d in delta))
        assert got <= 0.5 * (1 + 1e-12)
        assert clipped == (norm > 0.5)
        if not clipped:  # untouched below the bound
            assert all(np.array_equal(d, np.subtract(a, b, dtype=np.float64)) for d, a, b in zip(delta, u, g))


def _summed_deltas(rng, g, k, clip):
    s = WeightedSum()
    for _ in range(k):
        s.add(dp.clip_update([a + b for a, b in zip(g, _weights(rng))], g, clip)[0], 1)
    return s


def test_noise_is_seeded_by_run_seed_and_round():
    g = _weights(np.random.default_rng(1))
    kw = dict(clip_norm=1.0, noise_multiplier=1.3, denominator=4)
    out = lambda seed, r: dp.privatize(_summed_deltas(np.random.default_rng(2), g, 4, 1.0), g, run_seed=seed, round=r, **kw).mean()
    a, b = out(7, 3), out(7, 3)
    assert all(np.array_equal(x, y) and x.dtype == np.float32 for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, out(7, 4)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, out(8, 3)))


def test_noise_has_the_configured_scale():
    g = [np.zeros(200_000, np.float32)]
    mean = dp.privatize(WeightedSum(), g, clip_norm=0.5, noise_multiplier=2.0, denominator=1, run_seed=0, round=1).mean()
    assert float(np.std(mean[0])) == pytest.approx(1.0, rel=0.01)  # z·C / denominator


def test_huge_clip_and_no_noise_is_uniform_fedavg():
    rng = np.random.default_rng(3)
    g = _weights(rng)
    clients = [[a + b for a, b in zip(g, _weights(rng, 0.3))] for _ in range(5)]
    s = WeightedSum()
    for c in clients:
        s.add(dp.clip_update(c, g, 1e9)[0], 1)
    got = dp.privatize(s, g, clip_norm=1e9, noise_multiplier=0.0, denominator=5, run_seed=0, round=1).mean()
    plain = WeightedSum()
    for c in clients:
        plain.add(c, 1)
    want = plain.mean()
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6)


# -- config and the controller ------------------------------------------------------------

def test_privacy_config_defaults_off_and_validates():
    assert RunConfig().privacy.enabled is False
    with pytest.raises(ConfigError, match="privacy.clip_norm"):
        RunConfig.from_dict({"privacy": {"clip_norm": 0}})
    with pytest.raises(ConfigError, match="privacy.delta"):
        RunConfig.from_dict({"privacy": {"delta": 1.5}})


def dp_config(rounds=4, clip=0.2, z=1.0, over_select=0.0):
    return RunConfig.from_dict(
        {
            "run": {"name": "t", "seed": 3, "rounds": rounds},
            "task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"},
            "data": {"dataset": "none", "num_clients": 12},
            "cohort": {"clients_per_round": 5, "over_select": over_select},
            "executors": {"unit_size": 2},
            "privacy": {"enabled": True, "clip_norm": clip, "noise_multiplier": z, "delta": 1e-5},
        }
    )


def make(cfg, tmp_path, run_id="r", resume=False):
    return Controller(cfg, run_id, InProcessPool(cfg), CheckpointStore(str(tmp_path), run_id), resume=resume)


def test_a_private_run_reports_growing_epsilon(tmp_path):
    c = make(dp_config(), tmp_path)
    assert c.run() is RunState.COMPLETED
    recs = [h["privacy"] for h in c.history]
    eps = [p["epsilon"] for p in recs]
    assert all(a < b for a, b in zip(eps, eps[1:]))
    assert eps[-1] == pytest.approx(dp.epsilon(5 / 12, 1.0, 4, 1e-5))
    assert recs[0]["sampling_rate"] == pytest.approx(5 / 12) and recs[0]["clip_norm"] == 0.2
    assert 0 < recs[0]["clipped_fraction"] <= 1  # NoisyMean's updates have norm ~0.35 > 0.2
    assert c.status()["privacy"] == {"epsilon": eps[-1], "delta": 1e-5}
    ok = [cl for cl in c.history[0]["clients"] if cl["status"] == "ok"]
    assert recs[0]["clipped_fraction"] == pytest.approx(np.mean([cl["metrics"][dp.CLIPPED_METRIC] for cl in ok]))


def test_private_run_matches_a_hand_written_dp_fedavg(tmp_path):
    cfg = dp_config(rounds=2, clip=0.2, z=0.7)
    c = make(cfg, tmp_path)
    c.run()
    w = [np.zeros(8, np.float32), np.zeros((2, 2), np.float32)]
    sel_rng = np.random.default_rng(3)
    for r in (1, 2):
        cohort = np.sort(sel_rng.choice(12, 5, replace=False))
        total = [np.zeros(a.shape) for a in w]
        for cid in cohort:
            rng = np.random.default_rng([3, r, int(cid)])
            new = [a + rng.standard_normal(a.shape).astype(np.float32) * 0.1 for a in w]
            delta = [n.astype(np.float64) - a.astype(np.float64) for n, a in zip(new, w)]
            norm = math.sqrt(sum(float((d**2).sum()) for d in delta))
            for t, d in zip(total, delta):
                t += d * min(1.0, 0.2 / norm)
        noise = dp.noise_rng(3, r)
        w = [(a + (t + noise.standard_normal(a.shape) * 0.7 * 0.2) / 5).astype(np.float32) for a, t in zip(w, total)]
    for x, y in zip(c.weights, w):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_private_run_resumes_bit_identically(tmp_path):
    whole = make(dp_config(rounds=4), tmp_path / "a")
    whole.run()
    first = make(dp_config(rounds=2), tmp_path / "b")  # "killed" after round 2
    first.run()
    resumed = make(dp_config(rounds=4), tmp_path / "b", resume=True)
    assert resumed.run() is RunState.COMPLETED
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    assert [h["privacy"] for h in resumed.history] == [h["privacy"] for h in whole.history]


def test_resume_with_other_privacy_settings_is_refused(tmp_path):
    make(dp_config(rounds=1), tmp_path).run()
    with pytest.raises(ConfigError, match="privacy"):
        make(dp_config(rounds=2, z=2.0), tmp_path, resume=True).start()


def test_over_selection_counts_in_the_sampling_rate(tmp_path):
    c = make(dp_config(rounds=1, over_select=0.4), tmp_path)
    c.run()
    assert c.history[0]["privacy"]["sampling_rate"] == pytest.approx(7 / 12)


def test_privacy_refuses_selectors_the_accountant_does_not_cover():
    from elasticfl import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="privacy.enabled needs cohort.selection.name 'uniform'"):
        RunConfig.from_dict({"privacy": {"enabled": True}, "cohort": {"selection": {"name": "oort"}}})
    RunConfig.from_dict({"privacy": {"enabled": True}, "cohort": {"selection": {"name": "uniform"}}})


# -- adaptive clipping (Andrew et al. 2021) through the controller --------------------------------

def adaptive_config(rounds=4, clip=5.0, z=0.1, **adaptive):
    cfg = dp_config(rounds=rounds, clip=clip, z=z).to_dict()
    cfg["privacy"]["adaptive_clipping"] = {"target_quantile": 0.5, "learning_rate": 0.5, **adaptive}
    return RunConfig.from_dict(cfg)


def test_adaptive_clipping_moves_the_clip_norm_towards_the_update_norms(tmp_path):
    from elasticfl import adaptive_clip

    c = make(adaptive_config(rounds=12), tmp_path)
    assert c.run() is RunState.COMPLETED
    recs = [h["privacy"] for h in c.history]
    # NoisyMean's update norms are ~0.35: a clip norm of 5 clips nobody, so it shrinks every round
    assert recs[0]["clip_norm"] == 5.0 and recs[0]["clipped_fraction"] == 0.0
    assert all(b["clip_norm"] == a["next_clip_norm"] for a, b in zip(recs, recs[1:]))
    assert recs[-1]["clip_norm"] < 1.0
    # each step is the geometric update on the noisy count, drawn from (seed, round)
    z_delta, sigma_b = adaptive_clip.adaptive_noise_params(0.1, 5)
    for r, rec in enumerate(recs, start=1):
        ok = [cl for cl in c.history[r - 1]["clients"] if cl["status"] == "ok"]
        unclipped = sum(1 for cl in ok if not cl["metrics"][dp.CLIPPED_METRIC])
        expected = adaptive_clip.next_clip_norm(
            rec["clip_norm"], unclipped, 5, target_quantile=0.5, learning_rate=0.5, count_noise_std=sigma_b,
            rng=adaptive_clip.count_noise_rng(3, r), reported_clients=len(ok),
        )
        assert (rec["next_clip_norm"], rec["noisy_unclipped_fraction"]) == expected
        assert rec["update_noise_multiplier"] == z_delta > 0.1  # the update noise pays for the count's


def test_adaptive_clipping_resumes_with_its_clip_norm(tmp_path):
    whole = make(adaptive_config(rounds=5), tmp_path / "a")
    whole.run()
    make(adaptive_config(rounds=2), tmp_path / "b").run()
    resumed = make(adaptive_config(rounds=5), tmp_path / "b", resume=True)
    resumed.run()
    assert resumed.status()["weights_sha256"] == whole.status()["weights_sha256"]
    assert [h["privacy"] for h in resumed.history] == [h["privacy"] for h in whole.history]


def test_adaptive_clipping_refuses_noise_it_cannot_split():
    # cohort 5: σ_b defaults to 5/20 = 0.25, and z must stay below 2σ_b = 0.5
    with pytest.raises(ConfigError, match="privacy.noise_multiplier"):
        adaptive_config(z=1.0)
    adaptive_config(z=1.0, count_noise_std=1.0)  # a larger count noise makes room
