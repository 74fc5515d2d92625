"""Adaptive clipping (Andrew et al. 2021): z_Δ and the geometric clip-norm update by hand,
convergence to the target quantile, errors, determinism, and agreement with Flower."""

import math

import numpy as np
import pytest

from elasticfl import privacy as dp
from elasticfl.adaptive_clip import (
    AdaptiveClipping,
    adaptive_noise_params,
    count_noise_rng,
    next_clip_norm,
    update_noise_multiplier,
)
from tests.conftest import run_in_flower_venv


# -- z_Δ ---------------------------------------------------------------------------------

def test_update_noise_multiplier_by_hand():
    # z = 1, σ_b = 5: (1 − 1/10²)^(−1/2) = 1/√0.99
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1 / math.sqrt(0.99), rel=1e-15)
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx(1.0050378152592121, rel=1e-15)
    # z = 2, σ_b = 1.25: (1/4 − 1/6.25)^(−1/2) = 0.09^(−1/2) = 10/3
    assert update_noise_multiplier(2.0, 1.25) == pytest.approx(10 / 3, rel=1e-14)


def test_update_noise_multiplier_composes_back_to_z():
    for z, s in [(0.3, 0.2), (1.0, 0.6), (1.1, 5.0), (4.0, 2.5), (0.01, 100.0)]:
        zd = update_noise_multiplier(z, s)
        assert zd > z
        assert zd ** -2 + (2 * s) ** -2 == pytest.approx(z ** -2, rel=1e-12)


def test_no_noise_means_no_update_noise_and_no_count_noise():
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    assert update_noise_multiplier(0.0, 3.0) == 0.0
    assert adaptive_noise_params(0.0, 100) == (0.0, 0.0)
    assert adaptive_noise_params(0.0, 100, 2.0) == (0.0, 2.0)  # an explicit σ_b is kept


def test_adaptive_noise_params_defaults_to_a_twentieth_of_the_cohort():
    zd, s = adaptive_noise_params(1.0, 100)
    assert s == 5.0
    assert zd == update_noise_multiplier(1.0, 5.0)
    assert AdaptiveClipping().noise_params(1.0, 100) == (zd, s)
    assert AdaptiveClipping(count_noise_std=2.0).noise_params(1.0, 100) == (update_noise_multiplier(1.0, 2.0), 2.0)
    assert AdaptiveClipping().resolved_count_noise_std(40) == 2.0


@pytest.mark.parametrize("z,s", [(1.0, 0.5), (1.0, 0.4), (3.0, 1.0), (0.5, 0.0)])
def test_update_noise_multiplier_rejects_2_sigma_b_at_or_below_z(z, s):
    with pytest.raises(ValueError) as e:
        update_noise_multiplier(z, s)
    msg = str(e.value)
    assert "privacy.noise_multiplier" in msg and "privacy.adaptive_clipping.count_noise_std" in msg
    assert f"above {z / 2:g}" in msg  # the value that would make it valid


def test_the_default_count_noise_is_too_small_for_a_small_cohort():
    with pytest.raises(ValueError, match="count_noise_std"):
        adaptive_noise_params(1.0, 10)  # σ_b = 0.5, 2σ_b = 1 = z
    assert adaptive_noise_params(0.9, 10)[0] == pytest.approx((0.9 ** -2 - 1) ** -0.5)


@pytest.mark.parametrize("z,s", [(-1.0, 1.0), (float("nan"), 1.0), (math.inf, 1.0), (1.0, -1.0), (1.0, math.inf)])
def test_update_noise_multiplier_rejects_bad_numbers(z, s):
    with pytest.raises(ValueError):
        update_noise_multiplier(z, s)


# -- the config --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"target_quantile": 0.0}, "target_quantile"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"target_quantile": -0.1}, "target_quantile"),
        ({"target_quantile": True}, "target_quantile"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -0.2}, "learning_rate"),
        ({"learning_rate": math.inf}, "learning_rate"),
        ({"count_noise_std": -1.0}, "count_noise_std"),
        ({"count_noise_std": math.nan}, "count_noise_std"),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"privacy\.adaptive_clipping\.{field}"):
        AdaptiveClipping(**kwargs)


def test_config_defaults_are_the_papers():
    c = AdaptiveClipping()
    assert (c.target_quantile, c.learning_rate, c.count_noise_std) == (0.5, 0.2, None)
    with pytest.raises(Exception):
        c.learning_rate = 0.1  # frozen


# -- the clip-norm update ----------------------------------------------------------------

def _step(clip, unclipped, m, *, gamma=0.5, lr=0.2, sigma=0.0, seed=0, n=None):
    return next_clip_norm(
        clip, unclipped, m, target_quantile=gamma, learning_rate=lr, count_noise_std=sigma,
        rng=np.random.default_rng(seed), reported_clients=n,
    )


def test_geometric_update_by_hand():
    c, frac = _step(1.0, 3, 10)
    assert frac == 0.3
    assert c == pytest.approx(math.exp(-0.2 * (0.3 - 0.5)), rel=1e-15)  # = e^0.04: too many clipped, C grows
    c, frac = _step(2.0, 9, 10, gamma=0.8, lr=0.5)
    assert frac == 0.9
    assert c == pytest.approx(2.0 * math.exp(-0.5 * 0.1), rel=1e-15)  # too few clipped, C shrinks
    c, frac = _step(1.5, 5, 10)
    assert (c, frac) == (1.5, 0.5)  # on target: unchanged


def test_the_count_noise_is_one_standard_normal_times_sigma_b():
    sigma = 2.5
    z = np.random.default_rng(7).standard_normal()
    c, frac = _step(1.0, 40, 100, sigma=sigma, seed=7)
    assert frac == pytest.approx((40 + sigma * z) / 100, rel=1e-15)
    assert c == pytest.approx(math.exp(-0.2 * (frac - 0.5)), rel=1e-15)


def test_missing_reports_count_as_one_half_each():
    # Σ (b_i − 1/2) over n = 8 reports with U = 3 is −1; b̄ = 1/2 + (−1)/10 = 0.4
    assert _step(1.0, 3, 10, n=8)[1] == pytest.approx(0.4, rel=1e-15)
    # more reports than expected (over-selection): U = 6 of n = 12, m = 10: 1/2 + 0/10
    assert _step(1.0, 6, 10, n=12)[1] == 0.5
    # nobody reported: no information, b̄ = 1/2
    assert _step(1.0, 0, 10, n=0)[1] == 0.5


def test_one_client_moves_the_noiseless_count_by_exactly_one_half():
    """The sensitivity the 2σ_b in z_Δ relies on: adding or removing one client changes
    m·b̄ (before noise and clamping) by exactly 1/2, whatever its bit."""
    m = 100  # n ≤ 30 keeps b̄ inside [0.35, 0.65]: no clamping
    for n in range(0, 30):
        for u in range(0, n + 1):
            base = _step(1.0, u, m, n=n)[1]
            # one more client, unclipped (+1/2) or clipped (−1/2)
            assert (_step(1.0, u + 1, m, n=n + 1)[1] - base) * m == pytest.approx(0.5, rel=1e-12)
            assert (_step(1.0, u, m, n=n + 1)[1] - base) * m == pytest.approx(-0.5, rel=1e-12)


def test_the_fraction_is_clamped_to_zero_and_one():
    c, frac = _step(1.0, 0, 10, n=30)  # raw 1/2 − 15/10 = −1
    assert frac == 0.0
    assert c == pytest.approx(math.exp(0.2 * 0.5), rel=1e-15)
    c, frac = _step(1.0, 0, 10, sigma=1e6, seed=1)
    assert frac in (0.0, 1.0)
    assert c in (pytest.approx(math.exp(0.1)), pytest.approx(math.exp(-0.1)))


def test_same_rng_same_result_and_noise_changes_with_the_seed():
    a = [_step(1.0, 37, 100, sigma=5.0, seed=s) for s in (3, 3, 4)]
    assert a[0] == a[1]
    assert a[0] != a[2]
    r1, r2 = count_noise_rng(11, 4), count_noise_rng(11, 4)
    kw = dict(target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0)
    assert next_clip_norm(0.7, 30, 100, rng=r1, **kw) == next_clip_norm(0.7, 30, 100, rng=r2, **kw)
    # the count's stream is not the update noise's stream
    assert count_noise_rng(11, 4).standard_normal() != dp.noise_rng(11, 4).standard_normal()
    assert count_noise_rng(11, 4).standard_normal() != count_noise_rng(11, 5).standard_normal()


def test_sigma_b_zero_still_draws_once():
    rng = np.random.default_rng(5)
    next_clip_norm(1.0, 3, 10, target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0, rng=rng)
    ref = np.random.default_rng(5)
    ref.standard_normal()
    assert rng.standard_normal() == ref.standard_normal()


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((0.0, 3, 10), {}),
        ((-1.0, 3, 10), {}),
        ((math.inf, 3, 10), {}),
        ((1.0, 11, 10), {}),
        ((1.0, -1, 10), {}),
        ((1.0, 3.0, 10), {}),
        ((1.0, 3, 0), {}),
        ((1.0, 9, 10), {"reported_clients": 8}),
        ((1.0, 3, 10), {"reported_clients": -1}),
        ((1.0, 3, 10), {"count_noise_std": -1.0}),
        ((1.0, 3, 10), {"target_quantile": 1.0}),
        ((1.0, 3, 10), {"learning_rate": 0.0}),
    ],
)
def test_next_clip_norm_rejects_bad_arguments(args, kwargs):
    kw = dict(target_quantile=0.5, learning_rate=0.2, count_noise_std=1.0, rng=np.random.default_rng(0))
    kw.update(kwargs)
    with pytest.raises(ValueError):
        next_clip_norm(*args, **kw)


# -- convergence -------------------------------------------------------------------------

def _simulate(start, gamma, *, rounds=200, m=100, sigma_b=None, seed=0, sign=1.0):
    """Clients' update norms ~ lognormal(0, 0.5) each round; returns the clip norms."""
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(seed + 1)
    sigma_b = m / 20 if sigma_b is None else sigma_b
    clip, clips = start, []
    for _ in range(rounds):
        norms = rng.lognormal(0.0, 0.5, size=m)
        unclipped = int(np.sum(norms <= clip))
        new, _ = next_clip_norm(
            clip, unclipped, m, target_quantile=gamma, learning_rate=0.2, count_noise_std=sigma_b, rng=noise
        )
        clip = clip * (new / clip) ** sign  # sign=-1: the update with its sign flipped
        clips.append(clip)
    return np.array(clips)


@pytest.mark.parametrize("gamma", [0.5, 0.8, 0.2])
@pytest.mark.parametrize("start", [0.1, 10.0])
def test_the_clip_norm_converges_to_the_target_quantile(gamma, start):
    from statistics import NormalDist

    true_quantile = math.exp(0.5 * NormalDist().inv_cdf(gamma))  # γ-quantile of lognormal(0, 0.5)
    clips = _simulate(start, gamma)
    settled = float(np.median(clips[-50:]))
    assert settled == pytest.approx(true_quantile, rel=0.1), (settled, true_quantile)
    assert np.all(np.abs(np.log(clips[-50:] / true_quantile)) < 0.35)


def test_a_flipped_sign_would_fail_the_convergence_check():
    clips = _simulate(0.1, 0.5, sign=-1.0)
    assert not float(np.median(clips[-50:])) == pytest.approx(1.0, rel=0.1)


# -- against Flower ----------------------------------------------------------------------

def test_adaptive_clipping_agrees_with_flower():
    """Flower lives in benchmarks/.venv-flower (benchmarks/setup_flower.sh); the script
    loads elasticfl/adaptive_clip.py by path there and compares it with Flower's code."""
    import json
    out = run_in_flower_venv("adaptive_clip_vs_flower.py")
    reports = {r["check"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    expected = {"noise_multiplier", "clip_norm_sequence", "flower_clipped_bits", "closed_loop", "summary"}
    assert expected <= set(reports), (out.stdout[-2000:], out.stderr[-2000:])
    assert reports["noise_multiplier"]["max_rel_diff"] <= 1e-12
    assert reports["noise_multiplier"]["same_errors"]
    assert reports["clip_norm_sequence"]["max_rel_diff"] <= 1e-12
    assert reports["summary"]["ok"], reports
    assert out.returncode == 0, out.stderr[-2000:]
