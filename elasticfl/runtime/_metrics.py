"""A run's metrics for the Ray dashboard and Prometheus/Grafana, from its round history records.

The controller actor hands each round's history record to ``RoundMetrics``, which turns it into
metric updates (pure: no Ray, unit-testable), and a ``RayMetricsSink`` applies them through
``ray.util.metrics``. Ray's metrics agent exports them as ``ray_<name>`` (counters also get
``_total``, the histogram ``_bucket``/``_sum``/``_count``), every series tagged with the run id.

Counting rules:

- Counters add what each round record reports for that round; the executors' losses and
  preemptions, which the pool reports as running totals, add the increase since the previous
  record of the same pool (a restarted controller has a new pool, counting from zero).
- A controller that resumes (restarted by Ray after its node died, or ``--resume``) reloads the
  history up to its checkpoint: those rounds were counted already, by the controller that ran
  them, so they only set the gauges. A round redone after a restart ran twice and counts twice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

__all__ = ["METRICS", "MetricSpec", "MetricUpdate", "RayMetricsSink", "RoundMetrics", "exported_names"]

log = logging.getLogger("elasticfl.metrics")

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
# Round durations: from sub-second numpy rounds to hour-long rounds of big models.
ROUND_DURATION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CLIENT_STATES = ("ok", "failed", "late")
PHASES = ("train", "aggregate", "evaluate")
EXECUTOR_STATES = ("ready", "starting")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    description: str
    tags: tuple[str, ...] = ("run_id",)

    @property
    def exported(self) -> tuple[str, ...]:
        """The series names Ray's Prometheus endpoint shows for it."""
        base = f"ray_{self.name}"
        if self.kind == COUNTER:
            return (f"{base}_total",)
        if self.kind == HISTOGRAM:
            return (f"{base}_bucket", f"{base}_sum", f"{base}_count")
        return (base,)


_PHASE, _STATE = ("run_id", "phase"), ("run_id", "state")
METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("elasticfl_rounds_completed", COUNTER,
                   "Rounds completed (a round redone after a controller restart counts again)."),
        MetricSpec("elasticfl_round", GAUGE, "The last completed round."),
        MetricSpec("elasticfl_rounds_target", GAUGE, "The rounds the run is configured to run (run.rounds)."),
        MetricSpec("elasticfl_round_duration_seconds", HISTOGRAM, "Wall time of each round, in seconds."),
        MetricSpec("elasticfl_round_phase_seconds", GAUGE,
                   "The last round's time per phase (train, aggregate, evaluate).", _PHASE),
        MetricSpec("elasticfl_clients", GAUGE,
                   "Clients of the last round per state: ok, failed (or rejected), late.", _STATE),
        MetricSpec("elasticfl_client_results", COUNTER,
                   "Client results per state (ok, failed, late), over all rounds.", _STATE),
        MetricSpec("elasticfl_unit_retries", COUNTER,
                   "Work units dispatched again after their executor failed or was preempted."),
        MetricSpec("elasticfl_executors_lost", COUNTER,
                   "Executors lost to failures (crashes, dead nodes), preemptions excluded."),
        MetricSpec("elasticfl_executor_preemptions", COUNTER,
                   "Executors lost to preemption (spot reclaim, drained nodes)."),
        MetricSpec("elasticfl_bytes_broadcast", COUNTER,
                   "Bytes of global weights broadcast to the executors, one copy per round."),
        MetricSpec("elasticfl_loss", GAUGE, "The last evaluation's loss."),
        MetricSpec("elasticfl_accuracy", GAUGE, "The last evaluation's accuracy."),
        MetricSpec("elasticfl_train_loss", GAUGE, "The last round's mean client training loss."),
        MetricSpec("elasticfl_eval_metric", GAUGE,
                   "Every numeric metric of the last round that reported it, by name.", ("run_id", "metric")),
        MetricSpec("elasticfl_executors", GAUGE,
                   "Executors per node pool and state (ready, starting).", ("run_id", "pool", "state")),
    )
}  # fmt: skip
_NAMED_METRICS = {"loss": "elasticfl_loss", "accuracy": "elasticfl_accuracy", "train_loss": "elasticfl_train_loss"}


def exported_names() -> set[str]:
    """Every series name the metrics endpoint can show for elasticfl (for dashboards and tests)."""
    return {name for spec in METRICS.values() for name in spec.exported}


class MetricUpdate(NamedTuple):
    kind: str  # counter: add value; gauge: set value; histogram: observe value
    name: str
    value: float
    tags: dict[str, str]


class RoundMetrics:
    """Turns one controller's round records into metric updates (see the module's counting rules)."""

    def __init__(self, run_id: str, rounds: int | None = None) -> None:
        self.run_id = run_id
        self.rounds = rounds
        self._pool_totals = {"lost": 0, "preempted": 0}  # this controller's pool starts from zero

    def resumed(self, history: list[dict[str, Any]]) -> list[MetricUpdate]:
        """A controller that reloaded ``history`` (rounds counted before): gauges only."""
        updates = self._target()
        if history:
            updates += self._gauges(history[-1])
        return updates

    def round(self, record: dict[str, Any]) -> list[MetricUpdate]:
        """A round this controller ran: its counters, the histogram and the gauges."""
        updates = self._target() + self._counters(record)
        duration = float(record["duration_s"])
        updates.append(MetricUpdate(HISTOGRAM, "elasticfl_round_duration_seconds", duration, self._tags()))
        return updates + self._gauges(record)

    # -- pieces ----------------------------------------------------------------------------
    def _tags(self, **extra: str) -> dict[str, str]:
        return {"run_id": self.run_id, **{k: str(v) for k, v in extra.items()}}

    def _target(self) -> list[MetricUpdate]:
        return [MetricUpdate(GAUGE, "elasticfl_rounds_target", float(self.rounds), self._tags())] if self.rounds else []

    def _counters(self, record: dict[str, Any]) -> list[MetricUpdate]:
        counts: list[tuple[str, float, dict[str, str]]] = [
            ("elasticfl_rounds_completed", 1, self._tags()),
            ("elasticfl_unit_retries", record.get("unit_retries", 0), self._tags()),
            ("elasticfl_bytes_broadcast", record.get("bytes_broadcast", 0), self._tags()),
        ]
        for state in CLIENT_STATES:
            counts.append(("elasticfl_client_results", record.get(f"clients_{state}", 0), self._tags(state=state)))
        executors = record.get("executors") or {}
        totals = {key: int(executors.get(key) or 0) for key in ("lost", "preempted")}
        increase = {key: max(0, totals[key] - self._pool_totals[key]) for key in totals}
        self._pool_totals = totals
        preempted = increase["preempted"]
        counts.append(("elasticfl_executor_preemptions", preempted, self._tags()))
        # the pool's "lost" counts its preemptions too
        counts.append(("elasticfl_executors_lost", max(0, increase["lost"] - preempted), self._tags()))
        return [MetricUpdate(COUNTER, name, float(value), tags) for name, value, tags in counts if value > 0]

    def _gauges(self, record: dict[str, Any]) -> list[MetricUpdate]:
        gauges = [MetricUpdate(GAUGE, "elasticfl_round", float(record["round"]), self._tags())]
        for phase, seconds in (record.get("phases_s") or {}).items():
            gauges.append(MetricUpdate(GAUGE, "elasticfl_round_phase_seconds", float(seconds), self._tags(phase=phase)))
        for state in CLIENT_STATES:
            count = float(record.get(f"clients_{state}", 0))
            gauges.append(MetricUpdate(GAUGE, "elasticfl_clients", count, self._tags(state=state)))
        for key, value in (record.get("metrics") or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            gauges.append(MetricUpdate(GAUGE, "elasticfl_eval_metric", float(value), self._tags(metric=key)))
            if key in _NAMED_METRICS:
                gauges.append(MetricUpdate(GAUGE, _NAMED_METRICS[key], float(value), self._tags()))
        for pool, counts in ((record.get("executors") or {}).get("pools") or {}).items():
            for state in EXECUTOR_STATES:
                tags = self._tags(pool=pool, state=state)
                gauges.append(MetricUpdate(GAUGE, "elasticfl_executors", float(counts.get(state, 0)), tags))
        return gauges


class RayMetricsSink:
    """Applies metric updates through ``ray.util.metrics`` (in the controller actor's process).

    Metrics are a report, never a reason to fail a run: the first error is logged and
    the sink turns itself off.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._broken = False

    def apply(self, updates: Iterable[MetricUpdate]) -> None:
        if self._broken:
            return
        try:
            for update in updates:
                metric = self._metric(update.name)
                if update.kind == COUNTER:
                    metric.inc(update.value, tags=update.tags)
                elif update.kind == GAUGE:
                    metric.set(update.value, tags=update.tags)
                else:
                    metric.observe(update.value, tags=update.tags)
        except Exception as exc:
            self._broken = True
            log.error("metrics turned off for this controller: %s: %s", type(exc).__name__, exc)

    def _metric(self, name: str) -> Any:
        if name not in self._metrics:
            from ray.util import metrics

            spec = METRICS[name]
            if spec.kind == COUNTER:
                self._metrics[name] = metrics.Counter(name, spec.description, tag_keys=spec.tags)
            elif spec.kind == GAUGE:
                self._metrics[name] = metrics.Gauge(name, spec.description, tag_keys=spec.tags)
            else:
                self._metrics[name] = metrics.Histogram(
                    name, spec.description, boundaries=list(ROUND_DURATION_BUCKETS_S), tag_keys=spec.tags
                )
        return self._metrics[name]
