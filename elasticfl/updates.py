"""What happens to one client's trained weights between its training and the round's sum.

In the order a deployment does it: the strategy's client half (FedNova's
normalisation, SCAFFOLD's control variate), the uplink codec (compression with
error feedback), then the server's checks on receipt (norm bounding, DP
clipping). The executor runs it for every client of a unit.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import compression
from .config import RunConfig
from .privacy import CLIP_NORM, CLIPPED_METRIC, clip_update
from .strategies import ClientUpdate, Strategy
from .strategies.robust import bound_norm
from .weights import Weights

__all__ = ["UpdatePipeline", "NORM_METRIC", "UPLINK_METRIC", "RESIDUAL"]

# The client metric holding the L2 norm of its change, where norm bounding is on.
NORM_METRIC = "update_norm"
# The client metric holding the bytes its encoded update took, where compression is on.
UPLINK_METRIC = "uplink_bytes"
# The client state key of its error-feedback residual.
RESIDUAL = "residual"
_CODEC_KEY = 0xC0DEC  # keeps the codec's stochastic rounding apart from training's stream


class UpdatePipeline:
    def __init__(self, config: RunConfig, strategy: Strategy) -> None:
        self.config = config
        self.strategy = strategy
        self._prepare = getattr(strategy, "prepare", None)
        self._correction = getattr(strategy, "correction", None)

    def correction(self, state: Mapping[str, Any], shared: Mapping[str, Any]) -> Weights | None:
        """The gradient correction the strategy wants local training to apply (SCAFFOLD)."""
        return None if self._correction is None or not shared else self._correction(state, shared)

    def process(
        self,
        round: int,
        client_id: int,
        trained: Weights,
        global_weights: Weights,
        num_examples: int,
        metrics: dict[str, float],
        state: Mapping[str, Any],
        shared: Mapping[str, Any],
    ) -> tuple[ClientUpdate, dict[str, float]]:
        """The update to aggregate (with its weight, side sums and new client state), and
        the metrics to report for the client (the task's, plus what happened here)."""
        steps = metrics.get("local_steps")
        update = ClientUpdate(client_id, trained, float(num_examples), None if steps is None else int(steps), dict(state))
        metrics = dict(metrics)
        if self._prepare is not None:
            self._prepare(update, global_weights, shared)
        codec = self.config.compression
        if codec.codec != "none":
            self._compress(update, global_weights, round, metrics)
        bound = self.config.strategy.norm_bound
        if bound is not None:  # the server scales down a change too large to be honest (Sun et al., 2019)
            update.weights, metrics[NORM_METRIC] = bound_norm(update.weights, global_weights, bound)
        dp = self.config.privacy
        if dp.enabled:  # DP-FedAvg: clipped deltas, uniformly weighted; the controller adds the noise
            delta, _, clipped = clip_update(update.weights, global_weights, shared.get(CLIP_NORM, dp.clip_norm))
            update.weights, update.weight = delta, 1.0
            metrics[CLIPPED_METRIC] = float(clipped)
        return update, metrics

    def _compress(self, update: ClientUpdate, global_weights: Weights, round: int, metrics: dict[str, float]) -> None:
        """The change as the server decodes it; the residual stays with the client."""
        codec = self.config.compression
        rng = np.random.default_rng([self.config.run.seed, round, update.client_id, _CODEC_KEY])
        delta = [w - g for w, g in zip(update.weights, global_weights)]
        decoded, residual, nbytes = compression.compress(
            delta, update.state.get(RESIDUAL), codec.codec, rng=rng,
            topk_fraction=codec.topk_fraction, error_feedback=codec.error_feedback,
        )
        update.weights = [(g + d).astype(w.dtype) for g, d, w in zip(global_weights, decoded, update.weights)]
        if residual is not None:
            update.state[RESIDUAL] = residual
        metrics[UPLINK_METRIC] = float(nbytes)
