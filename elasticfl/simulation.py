"""Simulated system heterogeneity and attackers, for rerunning published experiments.

The FedProx paper (Li et al., 2020, §5.2) makes a share of each round's devices
stragglers that manage only part of their local work: FedAvg drops them, FedProx
aggregates their partial work. Here a client is a straggler in a round with
probability ``simulation.stragglers``, and a straggler does a share of its local
steps drawn uniformly from (0, 1]; both draws come from (run seed, round, client
id) alone, so a retried unit or a resumed run makes the same clients straggle.

Byzantine clients (``simulation.byzantine``) replace their trained weights with
an attack, so that robust aggregation can be seen to work: ``sign_flip`` sends
the change reversed and scaled (x − s·(y − x)), ``gaussian`` sends x plus noise
of standard deviation s (Blanchard et al., 2017; Yin et al., 2018).
"""

from __future__ import annotations

import numpy as np

__all__ = ["straggler_work", "attack"]

_STRAGGLER_KEY = 0x57A6  # keeps these draws apart from the client's training stream
_ATTACK_KEY = 0xBAD


def straggler_work(run_seed: int, round: int, client_id: int, stragglers: float) -> float | None:
    """The share of its local work a client does this round: None for all of it."""
    if stragglers <= 0:
        return None
    rng = np.random.default_rng([int(run_seed), int(round), int(client_id), _STRAGGLER_KEY])
    is_straggler, share = rng.random(2)
    if is_straggler >= stragglers:
        return None
    return float(1.0 - share)  # in (0, 1]: a straggler always does at least its first step


def attack(trained: list[np.ndarray], global_weights: list[np.ndarray], kind: str, scale: float,
           run_seed: int, round: int, client_id: int) -> list[np.ndarray]:
    """What a Byzantine client sends instead of its trained weights."""
    if kind == "sign_flip":
        return [(g - scale * (np.asarray(y, np.float64) - g)).astype(y.dtype) for y, g in zip(trained, global_weights)]
    rng = np.random.default_rng([int(run_seed), int(round), int(client_id), _ATTACK_KEY])
    return [(g + scale * rng.standard_normal(g.shape)).astype(y.dtype) for y, g in zip(trained, global_weights)]
