"""Central differential privacy: DP-FedAvg (McMahan et al. 2018) and its accountant.

Each client's update Δ = client weights − global weights is clipped to an L2 norm
of at most ``clip_norm`` (C) where it is trained (the executor); the controller
adds Gaussian noise N(0, (z·C)² I) once per round to the *sum* of the clipped
updates and divides by a fixed denominator, the round's target cohort size m
(the fixed-denominator estimator of McMahan et al. 2018): clients are weighted
uniformly, because weighting by num_examples would make one client's influence
depend on its (private) data size.

The accountant tracks the Rényi DP of the sampled Gaussian mechanism (Mironov,
Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism"), composes it over rounds and converts it to (ε, δ) with the
conversion of Balle et al. 2020 (the one Opacus uses). The analysis assumes
Poisson sampling with rate q; elasticfl samples a fixed-size cohort uniformly
without replacement, and its rate q = selected / num_clients is used in the
Poisson bound, as McMahan et al. 2018 and TF-Privacy do (an approximation:
see the README).

Noise comes from a generator seeded by (run seed, round), so a resumed run adds
the very same noise. That makes the guarantee hold only against someone who
does not know the run seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import adaptive_clip
from .strategies import WeightedSum
from .weights import Weights

__all__ = [
    "DPFedAvg",
    "CLIP_NORM",
    "DEFAULT_ORDERS",
    "clip_update",
    "privatize",
    "noise_rng",
    "compute_rdp",
    "rdp_to_epsilon",
    "epsilon",
    "sampling_rate",
    "CLIPPED_METRIC",
]

# Rényi orders (the same grid Opacus's RDPAccountant uses).
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])
# The client metric the executor reports clipping in (1.0 clipped, 0.0 not); the
# controller turns it into the round's clipped_fraction.
CLIPPED_METRIC = "dp_clipped"
# The key of the round's clip norm in what the controller sends every client (adaptive clipping).
CLIP_NORM = "dp_clip_norm"
# Keeps the noise stream apart from the clients' streams (which are seeded [seed, round, client]).
_NOISE_KEY = 0xD9F0


# -- clipping and noise ----------------------------------------------------------------

def clip_update(update: Weights, global_weights: Weights, clip_norm: float) -> tuple[list[np.ndarray], float, bool]:
    """The client's update Δ = update − global in float64, scaled down to L2 norm ≤ clip_norm.

    Returns (clipped Δ, Δ's norm before clipping, whether it was scaled).
    """
    delta = [np.subtract(u, g, dtype=np.float64) for u, g in zip(update, global_weights)]
    norm = math.sqrt(sum(float(np.vdot(d, d)) for d in delta))
    if norm > clip_norm:
        scale = clip_norm / norm
        for d in delta:
            d *= scale
        return delta, norm, True
    return delta, norm, False


def noise_rng(run_seed: int, round: int) -> np.random.Generator:
    """The generator of round ``round``'s noise: the same on every run and resume."""
    return np.random.default_rng(np.random.SeedSequence([int(run_seed), int(round)], spawn_key=(_NOISE_KEY,)))


def privatize(
    summed_deltas: WeightedSum,
    global_weights: Weights,
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: int,
    run_seed: int,
    round: int,
) -> WeightedSum:
    """Add N(0, (z·C)²) to Σ clipped Δ (once per round) and return a WeightedSum whose
    mean is global + (Σ Δ + noise) / denominator, for any weighted-mean strategy."""
    if denominator < 1:
        raise ValueError("the DP denominator (target cohort size) must be at least 1")
    std = float(noise_multiplier) * float(clip_norm)
    rng = noise_rng(run_seed, round)
    sums = []
    for i, g in enumerate(global_weights):
        acc = np.multiply(g, float(denominator), dtype=np.float64)  # denominator · global ...
        if summed_deltas.sums is not None:
            acc += summed_deltas.sums[i]  # ... + Σ clipped Δ ...
        if std > 0:  # ... + noise, drawn array by array in weight order
            acc += rng.standard_normal(g.shape) * std
        sums.append(acc)
    return WeightedSum(
        sums=sums,
        total_weight=float(denominator),
        count=summed_deltas.count,
        dtypes=[np.asarray(g).dtype.str for g in global_weights],
        precision="float64",
    )


# -- the accountant: RDP of the sampled Gaussian mechanism -------------------------------

def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) − exp(b)) for a ≥ b."""
    if b == -math.inf:
        return a
    if a < b:
        raise ValueError("log_sub of a larger number")
    if a == b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    if x < 25.0:
        return math.log(math.erfc(x))
    # asymptotic expansion: erfc(x) ≈ exp(−x²)/(x√π)·(1 − 1/(2x²) + 3/(4x⁴) − 15/(8x⁶))
    x2 = x * x
    return -x2 - math.log(x) - 0.5 * math.log(math.pi) + math.log1p(-1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2**3))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """log A_α for integer α (Mironov et al. 2019, Section 3.3): binomial expansion."""
    log_a = -math.inf
    for i in range(alpha + 1):
        log_coef = math.lgamma(alpha + 1) - math.lgamma(i + 1) - math.lgamma(alpha - i + 1)
        term = log_coef + i * math.log(q) + (alpha - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
        log_a = _log_add(log_a, term)
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """log A_α for fractional α (Mironov et al. 2019, Section 3.3): two series split at z0."""
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_coef, sign = 0.0, 1.0  # binom(α, i), kept as sign and log|.|, updated term by term
    i = 0
    while True:
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if sign > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30 or i > 100_000:
            break
        factor = (alpha - (i - 1)) / i  # binom(α, i) = binom(α, i−1) · (α − i + 1) / i
        if factor < 0:
            sign = -sign
        log_coef += math.log(abs(factor)) if factor != 0 else -math.inf
    return _log_add(log_a0, log_a1)


def _rdp_one_step(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0 or math.isinf(alpha):
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, float(alpha))
    return log_a / (alpha - 1)


def compute_rdp(q: float, noise_multiplier: float, steps: int, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    """RDP ε(α) of ``steps`` compositions of the Gaussian mechanism (noise σ = z, sensitivity 1)
    on a Poisson sample of rate q, at each order α."""
    if not 0 <= q <= 1:
        raise ValueError(f"sampling rate must be in [0, 1], got {q}")
    return np.array([_rdp_one_step(q, float(noise_multiplier), a) for a in orders]) * steps


def rdp_to_epsilon(rdp: Sequence[float], delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> tuple[float, float]:
    """(ε, best order) for a target δ, with Balle et al. 2020's conversion (Opacus's too):
    ε = rdp − (log δ + log α)/(α − 1) + log((α − 1)/α), minimised over α."""
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        eps = r - (np.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    if np.isnan(eps).all() or np.isinf(np.nanmin(eps)):
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    return float(max(eps[best], 0.0)), float(a[best])


def epsilon(q: float, noise_multiplier: float, steps: int, delta: float, orders: Sequence[float] = DEFAULT_ORDERS) -> float:
    """ε after ``steps`` rounds of DP-FedAvg with sampling rate q and noise multiplier z, for δ."""
    if steps <= 0:
        return 0.0
    return rdp_to_epsilon(compute_rdp(q, noise_multiplier, steps, orders), delta, orders)[0]


def sampling_rate(selected: int, num_clients: int) -> float:
    """The rate the accountant uses: every selected client may contribute, so over-selected ones count."""
    return min(1.0, selected / num_clients)


# -- one run's DP-FedAvg: what the controller asks of it ----------------------------------

class DPFedAvg:
    """The privacy side of a run's rounds: the clip norm to send, the noise to add, the
    ε spent; with ``privacy.adaptive_clipping`` the clip norm follows a quantile of the
    clients' update norms (Andrew et al. 2021, see elasticfl/adaptive_clip.py).

    ``denominator`` is the fixed denominator, the round's target cohort size m;
    ``selected`` over ``num_clients`` is the sampling rate the accountant uses.
    """

    def __init__(self, config, *, run_seed: int, denominator: int, selected: int, num_clients: int) -> None:
        self.config = config  # the run's privacy section
        self.run_seed = run_seed
        self.denominator = denominator
        self.rate = sampling_rate(selected, num_clients)
        # The accountant composes the configured z; with adaptive clipping the update noise
        # z_Δ and the count noise σ_b together spend exactly that (the paper's Theorem 1).
        self._rdp = compute_rdp(self.rate, config.noise_multiplier, 1)
        self.clip_norm = float(config.clip_norm)  # C_t: adaptive clipping moves it after every round
        self.adaptive = config.adaptive_clipping
        self.update_noise, self.count_noise = (config.noise_multiplier, 0.0)
        if self.adaptive is not None:
            self.update_noise, self.count_noise = adaptive_clip.adaptive_noise_params(
                config.noise_multiplier, denominator, self.adaptive.count_noise_std
            )

    def shared(self) -> dict[str, float]:
        """What every client of the round is sent: the clip norm to clip to."""
        return {CLIP_NORM: self.clip_norm}

    def privatize(self, summed: WeightedSum, global_weights: Weights, round: int, clients: list) -> tuple[WeightedSum, dict]:
        """Noise the round's sum of clipped deltas, move the clip norm; returns the noised
        sum and the round's ``privacy`` history record."""
        ok = [c for c in clients if c.status == "ok"]
        flags = [c.metrics.get(CLIPPED_METRIC, 0.0) for c in ok]
        used = self.clip_norm
        noised = privatize(
            summed, global_weights, clip_norm=used, noise_multiplier=self.update_noise,
            denominator=self.denominator, run_seed=self.run_seed, round=round,
        )
        eps, order = rdp_to_epsilon(self._rdp * round, self.config.delta)
        record = {
            "epsilon": None if not np.isfinite(eps) else eps,  # None: no noise, no guarantee
            "delta": self.config.delta,
            "rdp_order": None if not np.isfinite(order) else order,
            "sampling_rate": self.rate,
            "noise_multiplier": self.config.noise_multiplier,
            "clip_norm": used,
            "clipped_fraction": float(np.mean(flags)) if flags else 0.0,
        }
        if self.adaptive is not None:
            unclipped = int(sum(1 for f in flags if not f))
            self.clip_norm, fraction = adaptive_clip.next_clip_norm(
                used, unclipped, self.denominator, target_quantile=self.adaptive.target_quantile,
                learning_rate=self.adaptive.learning_rate, count_noise_std=self.count_noise,
                rng=adaptive_clip.count_noise_rng(self.run_seed, round), reported_clients=len(ok),
            )
            record.update(
                update_noise_multiplier=self.update_noise, count_noise_std=self.count_noise,
                noisy_unclipped_fraction=fraction, next_clip_norm=self.clip_norm,
            )
        return noised, record

    def state_dict(self) -> dict[str, float]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.clip_norm = float(state.get("clip_norm", self.config.clip_norm))
