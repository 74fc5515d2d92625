"""Adaptive clipping for DP-FedAvg: the clip norm follows a quantile of the update norms.

Andrew, Thakkar, McMahan & Ramaswamy, "Differentially Private Learning with Adaptive
Clipping" (NeurIPS 2021, arXiv:1905.03871). With a fixed clip norm C, a C far above the
typical update norm wastes noise (the noise std is z·C), and one far below it throws the
updates' magnitude away. Adaptive clipping instead tracks the γ-quantile of the norms of
the clients' updates, online and with differential privacy:

* Each client i of round t reports, besides its clipped update, one bit

      b_i = 1  if ‖Δ_i‖ ≤ C_t  (its update was *not* clipped),  else 0.

* The server releases a noisy estimate of the unclipped fraction over a fixed
  denominator m (the expected cohort size, the same fixed denominator DP-FedAvg uses)::

      b̄_t = 1/2 + ( Σ_i (b_i − 1/2) + N(0, σ_b²) ) / m

  and clamps it to [0, 1]. When all m expected clients report, this is the paper's
  b̄_t = ( Σ_i b_i + N(0, σ_b²) ) / m exactly.

* It takes one step of online gradient descent on the quantile loss, geometrically::

      C_{t+1} = C_t · exp( −η_C · (b̄_t − γ) )

  Too many unclipped updates (b̄ > γ) shrink C, too few grow it; the fixed point is
  P(‖Δ‖ ≤ C) = γ. One step changes C by a factor of at most exp(η_C·max(γ, 1 − γ)).

Why the count needs noise: b_i depends on client i's data (through ‖Δ_i‖), so Σ b_i is a
query on private data like the update sum is, and the clip norms C_1, C_2, ... that every
later round releases (through the noise scale and the model) are functions of it. Released
without noise it would leak, e.g., whether one particular client's update is large.

Why the bits are centred (b_i − 1/2, as TF-Privacy's QuantileEstimatorQuery does): under
the add/remove-one-client neighbouring relation that DP-FedAvg's accountant uses, adding or
removing a client changes Σ (b_i − 1/2) by exactly 1/2, whereas it would change Σ b_i by
up to 1. Sensitivity 1/2 with noise std σ_b is a Gaussian mechanism of noise multiplier
2σ_b, which is where the paper's 2σ_b comes from. The centring needs the number of reports
n (``reported_clients``); the m − n missing reports are counted as 1/2 each, so they pull
the estimate neither way.

The privacy budget (the paper's joint analysis with DP-FedAvg): one round releases the noisy update sum
(sensitivity C, noise multiplier z_Δ) and the noisy count (noise multiplier 2σ_b) of the
same sampled cohort. Two Gaussian mechanisms on the same sample compose into one Gaussian
mechanism whose noise multiplier z satisfies

    z^(−2) = z_Δ^(−2) + (2σ_b)^(−2),

so to keep the configured noise multiplier z (and with it the accountant in
:mod:`elasticfl.privacy`, unchanged: ``compute_rdp(q, z, steps)``), the update sum's noise
multiplier is raised to

    z_Δ = ( z^(−2) − (2σ_b)^(−2) )^(−1/2),

which is real only when 2σ_b > z. The paper recommends σ_b = m/20; then z_Δ ≈ z when m
is large (m = 100, z = 1: σ_b = 5, z_Δ = 1.005), but m = 10 allows only z < 1.

z = 0 means no noise and no privacy: z_Δ = 0 and the count gets no noise either (unless
a σ_b is given explicitly), as TFF and Flower do.

Order of a round: clip to C_t, noise the update sum with std z_Δ·C_t (the clip norm the
updates were clipped to, not C_{t+1}), then compute C_{t+1} for the next round.

Pure numpy; no Ray, torch or I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AdaptiveClipping",
    "adaptive_noise_params",
    "count_noise_rng",
    "next_clip_norm",
    "update_noise_multiplier",
]

# The paper's recommendation for σ_b: expected cohort size / 20.
COUNT_NOISE_PER_CLIENT = 1 / 20
# Keeps the count's noise stream apart from the update noise (privacy._NOISE_KEY = 0xD9F0)
# and the clients' streams.
_COUNT_NOISE_KEY = 0xAC11
_FIELD = "privacy.adaptive_clipping"


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class AdaptiveClipping:
    """Settings of adaptive clipping (Andrew et al. 2021).

    target_quantile: γ, the fraction of updates to leave unclipped (0.5: clip to the median norm).
    learning_rate: η_C of the geometric update C ← C·exp(−η_C (b̄ − γ)); the paper uses 0.2.
    count_noise_std: σ_b, the std of the Gaussian noise on the count of unclipped updates;
        None takes the paper's recommendation, expected cohort size / 20.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None  # σ_b; None = expected cohort size / 20 as the paper recommends

    def __post_init__(self) -> None:
        q = self.target_quantile
        if not _is_number(q) or not 0.0 < float(q) < 1.0:
            raise ValueError(
                f"{_FIELD}.target_quantile must be strictly between 0 and 1 (the fraction of client updates "
                f"to leave unclipped; 0.5 clips to the median norm), got {q!r}: at 0 the clip norm only ever "
                "shrinks, at 1 it only ever grows"
            )
        lr = self.learning_rate
        if not _is_number(lr) or not (math.isfinite(float(lr)) and float(lr) > 0.0):
            raise ValueError(
                f"{_FIELD}.learning_rate must be a positive finite number (the paper uses 0.2: the clip norm "
                f"changes by at most a factor exp(0.2) a round), got {lr!r}"
            )
        s = self.count_noise_std
        if s is not None and (not _is_number(s) or not (math.isfinite(float(s)) and float(s) >= 0.0)):
            raise ValueError(
                f"{_FIELD}.count_noise_std must be a non-negative finite number, or left unset for the paper's "
                f"expected cohort size / 20, got {s!r}"
            )

    def resolved_count_noise_std(self, expected_clients: int) -> float:
        """σ_b: the configured value, or expected_clients / 20 when unset."""
        _check_expected(expected_clients)
        if self.count_noise_std is None:
            return float(expected_clients) * COUNT_NOISE_PER_CLIENT
        return float(self.count_noise_std)

    def noise_params(self, noise_multiplier: float, expected_clients: int) -> tuple[float, float]:
        """(z_Δ, σ_b) for a configured noise multiplier z: see :func:`adaptive_noise_params`."""
        return adaptive_noise_params(noise_multiplier, expected_clients, self.count_noise_std)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_expected(expected_clients: int) -> None:
    if not _is_int(expected_clients) or expected_clients < 1:
        raise ValueError(f"the expected cohort size must be a positive integer, got {expected_clients!r}")


def _check_noise_multiplier(z: float) -> float:
    if not _is_number(z) or not (math.isfinite(float(z)) and float(z) >= 0.0):
        raise ValueError(f"privacy.noise_multiplier must be a non-negative finite number, got {z!r}")
    return float(z)


def _check_count_noise_std(s: float) -> float:
    if not _is_number(s) or not (math.isfinite(float(s)) and float(s) >= 0.0):
        raise ValueError(f"{_FIELD}.count_noise_std must be a non-negative finite number, got {s!r}")
    return float(s)


def update_noise_multiplier(z: float, count_noise_std: float) -> float:
    """z_Δ = (z^(−2) − (2σ_b)^(−2))^(−1/2): the update sum's noise multiplier that, together
    with noise σ_b on the count of unclipped updates, spends exactly the privacy of one
    Gaussian mechanism with noise multiplier z (Andrew et al. 2021, joint analysis).

    The count's bits are centred (sensitivity 1/2), so its noise multiplier is 2σ_b and
    z^(−2) = z_Δ^(−2) + (2σ_b)^(−2). z_Δ is real only when 2σ_b > z; otherwise the count
    alone would use more than the whole budget z^(−2), and this raises ValueError.
    z = 0 (no noise, no privacy) returns 0.
    """
    z = _check_noise_multiplier(z)
    s = _check_count_noise_std(count_noise_std)
    if z == 0.0:
        return 0.0
    if not 2.0 * s > z:
        raise ValueError(
            f"privacy.noise_multiplier ({z:g}) must be below 2 × {_FIELD}.count_noise_std "
            f"(2 × {s:g} = {2 * s:g}) for adaptive clipping: the noisy count of unclipped updates "
            f"alone would spend more than the whole privacy budget z^-2. Raise {_FIELD}.count_noise_std "
            f"above {z / 2:g} (a larger cohort also raises its default, cohort size / 20), or lower "
            f"privacy.noise_multiplier below {2 * s:g}"
        )
    # The paper's expression, evaluated as TFF and Flower do.
    return (z ** (-2) - (2.0 * s) ** (-2)) ** -0.5


def adaptive_noise_params(
    noise_multiplier: float, expected_clients: int, count_noise_std: float | None = None
) -> tuple[float, float]:
    """(z_Δ, σ_b) for a configured noise multiplier z and expected cohort size m.

    σ_b defaults to m / 20 (the paper's recommendation). z = 0 (no privacy) gives z_Δ = 0
    and σ_b = 0 unless σ_b is given. Raises ValueError when 2σ_b ≤ z (see
    :func:`update_noise_multiplier`). Flower's ``compute_adaptive_noise_params`` computes the
    same pair, returned in the other order (σ_b, z_Δ).
    """
    z = _check_noise_multiplier(noise_multiplier)
    _check_expected(expected_clients)
    if count_noise_std is not None:
        sigma_b = _check_count_noise_std(count_noise_std)
    elif z > 0.0:
        sigma_b = float(expected_clients) * COUNT_NOISE_PER_CLIENT
    else:
        sigma_b = 0.0
    return update_noise_multiplier(z, sigma_b), sigma_b


def count_noise_rng(run_seed: int, round: int) -> np.random.Generator:
    """The generator of round ``round``'s count noise: the same on every run and resume, and
    a stream apart from the update noise's (:func:`elasticfl.privacy.noise_rng`)."""
    return np.random.default_rng(np.random.SeedSequence([int(run_seed), int(round)], spawn_key=(_COUNT_NOISE_KEY,)))


def next_clip_norm(
    clip_norm: float,
    unclipped_count: int,
    expected_clients: int,
    *,
    target_quantile: float,
    learning_rate: float,
    count_noise_std: float,
    rng: np.random.Generator,
    reported_clients: int | None = None,
) -> tuple[float, float]:
    """One step of adaptive clipping: (C_{t+1}, b̄_t).

    b̄_t = clamp( ( U + (m − n)/2 + N(0, σ_b²) ) / m, 0, 1 )
        = clamp( 1/2 + ( Σ_i (b_i − 1/2) + N(0, σ_b²) ) / m, 0, 1 )
    C_{t+1} = C_t · exp( −η_C · (b̄_t − γ) )

    where U = ``unclipped_count`` = Σ_i b_i (b_i = 1 when ‖Δ_i‖ ≤ C_t), n =
    ``reported_clients`` (how many clients' bits U counts; default m), m =
    ``expected_clients`` (the expected cohort size, the fixed denominator) and σ_b =
    ``count_noise_std``. With n = m, b̄_t = (U + N(0, σ_b²)) / m, the paper's estimator.

    The bits must be those of exactly the clients whose clipped updates enter the round's
    noisy sum (a client counted in one and not the other is not what the joint analysis
    covers), and n must be their number: leaving n at m when fewer or more reported turns
    the centred count (sensitivity 1/2, the 2σ_b of :func:`update_noise_multiplier`) into
    a plain count (sensitivity 1), which spends more privacy than accounted.

    The clamp to [0, 1] (TF-Privacy's) is post-processing and costs no privacy. One
    standard normal is drawn from ``rng`` whatever σ_b is, so the result is a deterministic
    function of the arguments and the generator's state.
    """
    if not _is_number(clip_norm) or not (math.isfinite(float(clip_norm)) and float(clip_norm) > 0.0):
        raise ValueError(f"the clip norm must be a positive finite number, got {clip_norm!r}")
    _check_expected(expected_clients)
    n = expected_clients if reported_clients is None else reported_clients
    if not _is_int(n) or n < 0:
        raise ValueError(f"reported_clients must be a non-negative integer, got {reported_clients!r}")
    if not _is_int(unclipped_count) or not 0 <= unclipped_count <= n:
        raise ValueError(
            f"unclipped_count must be an integer between 0 and the {n} reporting clients, got {unclipped_count!r}"
        )
    # Validates γ and η (with the config's field names) the same way the config does.
    AdaptiveClipping(target_quantile=target_quantile, learning_rate=learning_rate, count_noise_std=0.0)
    sigma_b = _check_count_noise_std(count_noise_std)

    noise = float(rng.standard_normal()) * sigma_b
    # U + (m − n)/2 = Σ (b_i − 1/2) + m/2: exact in floating point, and exactly U when n = m.
    fraction = (float(unclipped_count) + (int(expected_clients) - int(n)) / 2 + noise) / float(expected_clients)
    fraction = min(1.0, max(0.0, fraction))
    new_clip = float(clip_norm) * math.exp(-float(learning_rate) * (fraction - float(target_quantile)))
    return new_clip, fraction
