"""Run metrics: the record -> update rules (no Ray), the Grafana dashboard's queries, and the
metrics on a local Ray's Prometheus endpoint (one Ray for the module, exporting every second)."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path

import pytest

import elasticfl
from elasticfl.runtime._metrics import COUNTER, GAUGE, HISTOGRAM, METRICS, RoundMetrics, exported_names
from tests.conftest import noisy_config

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "clusters" / "grafana" / "elasticfl.json"


def _record(round: int, *, lost: int = 0, preempted: int = 0, **extra) -> dict:
    return {
        "round": round,
        "duration_s": 1.5,
        "phases_s": {"train": 1.0, "aggregate": 0.2, "evaluate": 0.3},
        "metrics": {"loss": 0.5, "accuracy": 0.9, "train_loss": 0.6, "norm": 2.0},
        "clients_ok": 5,
        "clients_failed": 1,
        "clients_late": 0,
        "unit_retries": 2,
        "bytes_broadcast": 1000,
        "executors": {"ready": 2, "starting": 1, "lost": lost, "preempted": preempted,
                      "pools": {"hpc": {"ready": 2, "starting": 0}, "cloud": {"ready": 0, "starting": 1}}},
        **extra,
    }


def _counted(updates) -> dict:
    totals: dict = {}
    for u in updates:
        if u.kind == COUNTER:
            key = (u.name, tuple(sorted(u.tags.items())))
            totals[key] = totals.get(key, 0) + u.value
    return totals


# -- the rules, without Ray -------------------------------------------------------------------

def test_a_round_record_becomes_counters_gauges_and_a_duration():
    updates = RoundMetrics("r1", rounds=10).round(_record(1, lost=1, preempted=1))
    assert {u.name for u in updates} <= set(METRICS) and all(u.tags["run_id"] == "r1" for u in updates)
    assert all(set(u.tags) == set(METRICS[u.name].tags) for u in updates)  # every tag a metric declares, no other
    assert all(u.kind == METRICS[u.name].kind for u in updates)
    counted = _counted(updates)
    assert counted[("elasticfl_rounds_completed", (("run_id", "r1"),))] == 1
    assert counted[("elasticfl_client_results", (("run_id", "r1"), ("state", "ok")))] == 5
    assert counted[("elasticfl_client_results", (("run_id", "r1"), ("state", "failed")))] == 1
    assert ("elasticfl_client_results", (("run_id", "r1"), ("state", "late"))) not in counted  # no zero increments
    assert counted[("elasticfl_executor_preemptions", (("run_id", "r1"),))] == 1
    assert ("elasticfl_executors_lost", (("run_id", "r1"),)) not in counted  # the loss was the preemption
    gauges = {(u.name, tuple(sorted(u.tags.items()))): u.value for u in updates if u.kind == GAUGE}
    assert gauges[("elasticfl_executors", (("pool", "cloud"), ("run_id", "r1"), ("state", "starting")))] == 1
    assert gauges[("elasticfl_accuracy", (("run_id", "r1"),))] == 0.9
    assert gauges[("elasticfl_eval_metric", (("metric", "norm"), ("run_id", "r1")))] == 2.0
    assert gauges[("elasticfl_rounds_target", (("run_id", "r1"),))] == 10
    assert [u.value for u in updates if u.kind == HISTOGRAM] == [1.5]


def test_pool_totals_count_their_increase_and_a_resumed_controller_counts_no_reloaded_round():
    first = RoundMetrics("r1")
    c1, c2 = _counted(first.round(_record(1, lost=2, preempted=1))), _counted(first.round(_record(2, lost=5, preempted=1)))
    lost = ("elasticfl_executors_lost", (("run_id", "r1"),))
    assert c1[lost] == 1 and c2[lost] == 3  # the running totals 2, 5 (one a preemption) add 1, then 3

    restarted = RoundMetrics("r1")  # a new controller: reloads rounds 1-2, its pool starts at zero
    reloaded = restarted.resumed([_record(1, lost=2), _record(2, lost=5, preempted=1)])
    assert _counted(reloaded) == {} and any(u.name == "elasticfl_round" and u.value == 2 for u in reloaded)
    c3 = _counted(restarted.round(_record(3, lost=1)))
    assert c3[lost] == 1 and c3[("elasticfl_rounds_completed", (("run_id", "r1"),))] == 1


def test_the_grafana_dashboard_queries_only_metrics_the_code_emits():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "run_id" in variables and "ray_elasticfl_" in variables["run_id"]["definition"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 8 and all('run_id=~"$run_id"' in e for e in exprs)
    queried = {name for e in exprs for name in re.findall(r"\bray_elasticfl_\w+", e)}
    assert queried <= exported_names(), queried - exported_names()
    shown = {n for spec in METRICS.values() for n in spec.exported if n in queried}
    missing = [name for name, spec in METRICS.items() if not set(spec.exported) & shown]
    assert not missing, f"metrics with no panel: {missing}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# -- on Ray: the metrics endpoint -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_port():
    """A local Ray of the module's own whose metrics agent serves Prometheus text on a known
    port and takes the workers' metrics every second (the default is every 10 s)."""
    import ray

    ray.shutdown()  # the shared Ray, if a test before started it: this one needs other settings
    port = _free_port()
    ray.init(
        address="local",
        num_cpus=2,
        namespace="elasticfl",
        include_dashboard=False,  # the metrics agent runs without the dashboard
        log_to_driver=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},
    )
    yield port
    ray.shutdown()


def _samples(port: int, run_id: str) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("ray_elasticfl_") and s.labels.get("run_id") == run_id
    ]


def _scrape_until(port: int, run_id: str, done, timeout_s: float = 60.0) -> list:
    deadline, samples = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        samples = _samples(port, run_id)
        if done(samples):
            return samples
        time.sleep(0.5)
    pytest.fail(f"the metrics endpoint did not show the run's metrics in {timeout_s:.0f}s; it shows: "
                f"{sorted({(s.name, tuple(sorted(s.labels.items()))[-3:], s.value) for s in samples})}")


def _value(samples, name: str, **labels) -> float:
    """Summed over the series that match (a restarted controller is a new worker, a new series)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _has(samples, name: str, value: float, **labels) -> bool:
    return any(s.name == name for s in samples) and _value(samples, name, **labels) == value


def _series(samples, name: str) -> list[float]:
    return sorted(s.value for s in samples if s.name == name)


def test_a_runs_metrics_show_on_the_ray_metrics_endpoint(metrics_port, tmp_path):
    run_id = "metrics-run"
    config = noisy_config(rounds=3)
    handle = elasticfl.submit(config, run_id=run_id, storage=str(tmp_path), quiet=True)
    result = handle.wait(release=False)  # keep the controller: its gauges live as long as it does
    assert result.ok

    samples = _scrape_until(
        metrics_port, run_id,
        lambda s: _has(s, "ray_elasticfl_rounds_completed_total", 3) and _has(s, "ray_elasticfl_round", 3)
        and _has(s, "ray_elasticfl_round_duration_seconds_count", 3),
    )  # fmt: skip
    last = result.history[-1]
    assert _value(samples, "ray_elasticfl_rounds_target") == 3
    ok = sum(r["clients_ok"] for r in result.history)
    assert _value(samples, "ray_elasticfl_client_results_total", state="ok") == ok
    assert _value(samples, "ray_elasticfl_clients", state="ok") == last["clients_ok"]
    assert _value(samples, "ray_elasticfl_bytes_broadcast_total") == sum(r["bytes_broadcast"] for r in result.history)
    assert _value(samples, "ray_elasticfl_eval_metric", metric="norm") == pytest.approx(last["metrics"]["norm"])
    assert _value(samples, "ray_elasticfl_train_loss") == pytest.approx(last["metrics"]["train_loss"])
    pools = last["executors"]["pools"]
    assert _value(samples, "ray_elasticfl_executors", pool="default", state="ready") == pools["default"]["ready"] > 0
    phases = {s.labels["phase"] for s in samples if s.name == "ray_elasticfl_round_phase_seconds"}
    assert phases == {"train", "aggregate", "evaluate"}
    names = {s.name for s in samples}
    assert names <= exported_names()

    # Resumed for 2 more rounds, the new controller reloads rounds 1-3 and counts only 4 and 5.
    more = elasticfl.submit(config.with_overrides(run={"rounds": 5}), run_id=run_id, resume=True,
                            storage=str(tmp_path), quiet=True)  # fmt: skip
    assert more.wait(release=False).round == 5
    # Each controller is a worker of its own, a series of its own: the first one's series stays
    # (counters) or ages out (gauges, ~20 s); summed, the counter must say 5 rounds, not 3 + 5.
    samples = _scrape_until(
        metrics_port, run_id,
        lambda s: 5.0 in _series(s, "ray_elasticfl_round") and 2.0 in _series(s, "ray_elasticfl_rounds_completed_total"),
    )  # fmt: skip
    assert _series(samples, "ray_elasticfl_rounds_completed_total") in ([2.0], [2.0, 3.0])
    more._actor.release.remote()
