"""elasticfl's adaptive clipping (Andrew et al. 2021) against Flower 1.42's.

    benchmarks/.venv-flower/bin/python benchmarks/adaptive_clip_vs_flower.py

Flower pins another Ray and protobuf, so it lives in its own venv; this script loads
``elasticfl/adaptive_clip.py`` by file path (pure numpy: elasticfl's package ``__init__``,
with pydantic and Ray, is never imported) and compares, printing one JSON line per check:

noise_multiplier
    z_Δ = (z^-2 − (2σ_b)^-2)^-1/2 and the default σ_b = m/20 for a grid of (z, σ_b, m)
    against ``flwr.supercore.differential_privacy.compute_adaptive_noise_params``, which
    returns (σ_b, z_Δ) where elasticfl's ``adaptive_noise_params`` returns (z_Δ, σ_b).
    Both parametrise σ_b the same way (the std of the noise on the *count*, not on the
    fraction), so no conversion is needed; invalid pairs (2σ_b ≤ z) must fail in both.

clip_norm_sequence
    The clip norms of 25 rounds given the same per-round unclipped counts, with the count
    noise off (Flower allows σ_b = 0 only with noise_multiplier = 0; its
    ``np.random.normal(count, 0.0)`` then returns the count exactly), through Flower's own
    update code (``DifferentialPrivacyClientSideAdaptiveClipping._update_clip_norm`` of the
    strategy API and ``_noisy_fraction`` + ``_geometric_update`` of the Message API). Flower
    is fed the paper's bit, b_i = 1 when the update was NOT clipped (what its deprecated
    ``DPFedAvgNumPyClient`` reports as ``dpfedavg_norm_bit = not clipped``), and the fixed
    denominator m equals the number of results, so the two must agree to rounding.

flower_clipped_bits
    Flower's current adaptive-clipping code (server-side clipping, ``adaptiveclipping_mod``,
    and the Message API) sets the bit when the update WAS clipped
    (``adaptive_clip_inputs_inplace`` returns ``scaling_factor < 1``) and feeds the clipped
    fraction into the paper's update C ← C·exp(−η(fraction − target)). That flips the
    update's sign: given the same counts with Flower's target_clipped_quantile = 1 − γ,
    Flower's C_t is C_0² / C_t (elasticfl's). Checked to rounding, so the difference is
    fully explained; if a future Flower flips its bit, the check expects agreement instead.

closed_loop
    200 rounds with client update norms ~ lognormal(0, 0.5) (median 1), both starting at
    Flower's default initial clip 0.1, each side computing its bits from the norms with
    its own clip norm (Flower's through its own ``adaptive_clip_inputs_inplace``). elasticfl
    must settle at the median; Flower's, by the flipped sign, runs away (reported, not
    failed).

flower_noise_clip_norm (informational)
    Which clip norm Flower's ``aggregate_fit`` scales the update noise with: it updates the
    clip norm first, so the noise std is z_Δ·C_{t+1}/m although the updates were clipped
    to C_t.

design_differences (informational)
    Flower divides the count by the number of results; elasticfl by the expected cohort
    size m, centring the bits so missing reports count as 1/2 (TF-Privacy's estimator).

Exits nonzero when a compared quantity differs by more than 1e-12 (relative) or a check
that should hold does not.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOL = 1e-12


def load_elasticfl_adaptive_clip():
    path = HERE.parent / "elasticfl" / "adaptive_clip.py"
    spec = importlib.util.spec_from_file_location("elasticfl_adaptive_clip", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


class _Inner:
    """A stand-in for the wrapped strategy: returns the parameters it is given."""

    def __init__(self, params):
        self.params = params

    def aggregate_fit(self, server_round, results, failures):
        return self.params, {}


def check_noise_multiplier(ac) -> dict:
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params

    cases = []
    for m in (10, 20, 50, 100, 1000):
        for z in (0.0, 0.1, 0.5, 0.9, 1.0, 1.1, 2.0, 5.0):
            for s in (None, 0.0, 0.3, 0.5, 1.0, 2.5, 5.0, 50.0):
                cases.append((z, s, m))
    max_diff, same_errors, n_valid, n_invalid, mismatches = 0.0, True, 0, 0, []
    for z, s, m in cases:
        try:
            ours = ac.adaptive_noise_params(z, m, s)
        except ValueError:
            ours = None
        try:
            sigma_f, z_f = compute_adaptive_noise_params(z, m, s)
            theirs = (z_f, sigma_f)
        except ValueError:
            theirs = None
        if (ours is None) != (theirs is None):
            same_errors = False
            mismatches.append({"z": z, "sigma_b": s, "m": m, "elasticfl": ours, "flower": theirs})
            continue
        if ours is None:
            n_invalid += 1
            continue
        n_valid += 1
        d = max(rel(ours[0], theirs[0]), rel(ours[1], theirs[1]))
        if d > max_diff:
            max_diff = d
    # The paper's identity, independently of either implementation.
    identity = max(
        rel(ac.update_noise_multiplier(z, s) ** -2 + (2 * s) ** -2, z ** -2)
        for z, s in [(1.0, 5.0), (0.5, 1.0), (2.0, 1.25), (1.1, 50.0)]
    )
    return {
        "check": "noise_multiplier",
        "cases_valid": n_valid,
        "cases_invalid_in_both": n_invalid,
        "same_errors": same_errors,
        "mismatches": mismatches[:5],
        "max_rel_diff": max_diff,
        "composition_identity_max_rel_diff": identity,
        "example": {"z": 1.0, "sigma_b": 5.0, "z_delta": ac.update_noise_multiplier(1.0, 5.0)},
        "ok": same_errors and max_diff <= TOL and identity <= 1e-12,
    }


def _flower_strategy_api(params=None, *, initial, target, lr, m):
    from flwr.server.strategy import DifferentialPrivacyClientSideAdaptiveClipping

    return DifferentialPrivacyClientSideAdaptiveClipping(
        _Inner(params), noise_multiplier=0.0, num_sampled_clients=m, initial_clipping_norm=initial,
        target_clipped_quantile=target, clip_norm_lr=lr, clipped_count_stddev=0.0,
    )


def _flower_message_api(*, initial, target, lr, m):
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideAdaptiveClipping

    return DifferentialPrivacyClientSideAdaptiveClipping(
        object(), noise_multiplier=0.0, num_sampled_clients=m, initial_clipping_norm=initial,
        target_clipped_quantile=target, clip_norm_lr=lr, clipped_count_stddev=0.0,
    )


def _fit_results(bits):
    from flwr.common import Code, FitRes, Parameters, Status

    empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
    return [
        (None, FitRes(status=Status(Code.OK, ""), parameters=empty, num_examples=1, metrics={"norm_bit": bool(b)}))
        for b in bits
    ]


def _our_sequence(ac, counts, m, *, initial, gamma, lr):
    rng = np.random.default_rng(0)
    clip, out = initial, []
    for u in counts:
        clip, _ = ac.next_clip_norm(
            clip, int(u), m, target_quantile=gamma, learning_rate=lr, count_noise_std=0.0, rng=rng
        )
        out.append(clip)
    return out


def _flower_sequences(bit_counts, m, *, initial, target, lr):
    """Flower's clip norms over rounds in which ``bit_counts[t]`` of the m clients set the bit."""
    legacy = _flower_strategy_api(initial=initial, target=target, lr=lr, m=m)
    message = _flower_message_api(initial=initial, target=target, lr=lr, m=m)
    seq_legacy, seq_message = [], []
    for k in bit_counts:
        legacy._update_clip_norm(_fit_results([1] * int(k) + [0] * (m - int(k))))
        seq_legacy.append(legacy.clipping_norm)
        message._geometric_update(message._noisy_fraction(int(k), m))
        seq_message.append(message.clipping_norm)
    return seq_legacy, seq_message


def flower_bit_is_clipped() -> bool:
    from flwr.supercore.differential_privacy import adaptive_clip_inputs_inplace

    return bool(adaptive_clip_inputs_inplace([np.array([3.0, 4.0])], 1.0))  # norm 5 > 1: clipped


def check_sequences(ac) -> list[dict]:
    m, initial, gamma, lr, rounds = 20, 0.1, 0.5, 0.2, 25
    rng = np.random.default_rng(2024)
    counts = rng.integers(0, m + 1, size=rounds)
    counts[:3] = (0, m, m // 2)  # both extremes and the target

    ours = _our_sequence(ac, counts, m, initial=initial, gamma=gamma, lr=lr)
    # (1) Flower fed the paper's bit (unclipped), same γ.
    legacy, message = _flower_sequences(counts, m, initial=initial, target=gamma, lr=lr)
    d1 = max(max(rel(a, b), rel(a, c)) for a, b, c in zip(ours, legacy, message))
    seq = {
        "check": "clip_norm_sequence",
        "rounds": rounds,
        "m": m,
        "unclipped_counts": [int(c) for c in counts],
        "elasticfl_last": ours[-1],
        "flower_last": legacy[-1],
        "max_rel_diff": d1,
        "bitwise_equal": all(a == b == c for a, b, c in zip(ours, legacy, message)),
        "ok": d1 <= TOL,
    }

    # (2) Flower fed its own bit (clipped) with target_clipped_quantile = 1 − γ.
    clipped_bit = flower_bit_is_clipped()
    legacy2, message2 = _flower_sequences([m - c for c in counts], m, initial=initial, target=1 - gamma, lr=lr)
    if clipped_bit:  # the flipped sign: C_F = C_0² / C
        expected = [initial * initial / c for c in ours]
        relation = "flower_clip == initial**2 / elasticfl_clip"
    else:
        expected = ours
        relation = "flower_clip == elasticfl_clip"
    d2 = max(max(rel(e, b), rel(e, c)) for e, b, c in zip(expected, legacy2, message2))
    flipped = {
        "check": "flower_clipped_bits",
        "flower_bit_means_clipped": clipped_bit,
        "relation": relation,
        "elasticfl_last": ours[-1],
        "flower_last": legacy2[-1],
        "max_rel_diff_from_relation": d2,
        "max_rel_diff_from_elasticfl": max(rel(a, b) for a, b in zip(ours, legacy2)),
        "ok": d2 <= 1e-12,
    }
    return [seq, flipped]


def check_closed_loop(ac) -> dict:
    from flwr.supercore.differential_privacy import adaptive_clip_inputs_inplace

    m, rounds, gamma, lr, initial = 100, 200, 0.5, 0.2, 0.1
    norms = np.random.default_rng(7).lognormal(0.0, 0.5, size=(rounds, m))  # median 1
    rng = np.random.default_rng(0)
    ours, theirs = initial, _flower_strategy_api(initial=initial, target=gamma, lr=lr, m=m)
    our_clips, their_clips = [], []
    for t in range(rounds):
        unclipped = int(np.sum(norms[t] <= ours))
        ours, _ = ac.next_clip_norm(
            ours, unclipped, m, target_quantile=gamma, learning_rate=lr, count_noise_std=0.0, rng=rng
        )
        bits = [adaptive_clip_inputs_inplace([np.array([x])], theirs.clipping_norm) for x in norms[t]]
        theirs._update_clip_norm(_fit_results(bits))
        our_clips.append(ours)
        their_clips.append(theirs.clipping_norm)
    settled = float(np.median(our_clips[-50:]))
    return {
        "check": "closed_loop",
        "rounds": rounds,
        "true_median_norm": 1.0,
        "elasticfl_settled": settled,
        "elasticfl_unclipped_fraction_last50": float(
            np.mean([np.mean(norms[t] <= our_clips[t - 1]) for t in range(rounds - 50, rounds)])
        ),
        "flower_last": their_clips[-1],
        "flower_runs_away": not (0.5 < their_clips[-1] < 2.0),
        "ok": abs(settled - 1.0) < 0.1,
    }


def check_noise_clip_norm() -> dict:
    import flwr.server.strategy.dp_adaptive_clipping as flower_dp
    from flwr.common import ndarrays_to_parameters

    seen = {}

    def record(params, noise_multiplier, clipping_norm, num_sampled_clients):
        seen["clipping_norm"] = clipping_norm
        return params

    m, initial = 10, 1.0
    strategy = _flower_strategy_api(ndarrays_to_parameters([np.zeros(3)]), initial=initial, target=0.5, lr=0.2, m=m)
    original = flower_dp.add_gaussian_noise_to_params
    flower_dp.add_gaussian_noise_to_params = record
    try:
        strategy.aggregate_fit(1, _fit_results([1] * m), [])  # every bit set: the clip norm moves
    finally:
        flower_dp.add_gaussian_noise_to_params = original
    return {
        "check": "flower_noise_clip_norm",
        "clip_norm_the_updates_were_clipped_to": initial,
        "clip_norm_flower_scales_the_noise_with": seen.get("clipping_norm"),
        "flower_uses_the_updated_clip_norm": seen.get("clipping_norm") == strategy.clipping_norm != initial,
    }


def design_differences(ac) -> dict:
    m, n, u = 10, 8, 3
    ours = ac.next_clip_norm(1.0, u, m, target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0,
                             rng=np.random.default_rng(0), reported_clients=n)[1]
    return {
        "check": "design_differences",
        "example": {"expected_m": m, "reported_n": n, "unclipped": u},
        "elasticfl_fraction": ours,  # (U + (m − n)/2) / m
        "flower_fraction": u / n,  # U / n, the data-dependent denominator
        "notes": [
            "elasticfl divides by the expected cohort size m and centres the bits (missing reports count 1/2)",
            "elasticfl clamps the noisy fraction to [0, 1] (TF-Privacy); Flower does not",
            "adaptive_noise_params returns (z_delta, sigma_b); "
            "Flower's compute_adaptive_noise_params returns (sigma_b, z_delta)",
        ],
    }


def main() -> int:
    import logging

    import flwr

    logging.getLogger("flwr").setLevel(logging.ERROR)  # its "significant amount of noise" warnings, per case
    ac = load_elasticfl_adaptive_clip()
    reports = [
        check_noise_multiplier(ac), *check_sequences(ac), check_closed_loop(ac),
        check_noise_clip_norm(), design_differences(ac),
    ]
    for r in reports:
        print(json.dumps(r))
    ok = all(r.get("ok", True) for r in reports)
    failed = [r["check"] for r in reports if not r.get("ok", True)]
    print(json.dumps({"check": "summary", "flwr": flwr.__version__, "ok": ok, "failed": failed}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
