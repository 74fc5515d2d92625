"""`elasticfl.report` on history records written by hand with CheckpointStore: no Ray."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402 - matplotlib brings pillow

from elasticfl.checkpoint import CheckpointStore  # noqa: E402
from elasticfl.controller import STATUS_FILE  # noqa: E402
from elasticfl.errors import RunNotFoundError  # noqa: E402
from elasticfl.report import build_report  # noqa: E402

RUN = "pooled-20261125-101500-ab12"
SHA = "ab" * 32
T0 = 1_795_600_000.0
FIGURES = ["metrics", "duration", "participation", "executors", "faults"]


def record(r, metrics, clients, pools, lost, preempted, retries, duration=2.0):
    """A history record shaped as Controller.step() writes it."""
    statuses = [status for _, status, _ in clients]
    return {
        "round": r,
        "started_at": T0 + 10 * r,
        "duration_s": duration,
        "phases_s": {"train": duration * 0.7, "aggregate": duration * 0.1, "evaluate": duration * 0.1},
        "metrics": metrics,
        "cohort": [cid for cid, _, _ in clients],
        "units": 2,
        "clients_ok": statuses.count("ok"),
        "clients_failed": statuses.count("failed") + statuses.count("rejected"),
        "clients_late": statuses.count("late"),
        "unit_retries": retries,
        "bytes_broadcast": 48,
        "executors": {
            "executors": sum(a + b for a, b in pools.values()),
            "ready": sum(a for a, _ in pools.values()),
            "starting": sum(b for _, b in pools.values()),
            "lost": lost,
            "preempted": preempted,
            "nodes": [f"node-{i}" for i in range(len(pools))],
            "pools": {name: {"ready": a, "starting": b} for name, (a, b) in pools.items()},
        },
        "clients": [
            {"client_id": cid, "status": status, "num_examples": 10, "duration_s": 0.1, "node_id": "node-0",
             "metrics": {"train_loss": 1.0 + cid / 10} if status == "ok" else {}, "pool": pool,
             **({"reason": "RuntimeError: on purpose"} if status in ("failed", "rejected") else {})}
            for cid, status, pool in clients
        ],
    }


HISTORY = [
    record(1, {"loss": 1.2, "accuracy": 0.5, "train_loss": 1.5},
           [(0, "ok", "hpc"), (1, "ok", "hpc"), (2, "ok", "cloud"), (3, "ok", "cloud")],
           {"hpc": (2, 0), "cloud": (1, 1)}, lost=0, preempted=0, retries=0),
    record(2, {"train_loss": 1.1},  # evaluation every 2 rounds: no central metrics here
           [(0, "ok", "hpc"), (1, "failed", "hpc"), (4, "ok", "cloud"), (5, "late", "cloud")],
           {"hpc": (2, 0), "cloud": (2, 0)}, lost=1, preempted=0, retries=1),
    record(3, {"loss": 0.8, "accuracy": 0.7, "train_loss": 0.9},
           [(1, "ok", "hpc"), (2, "rejected", "cloud"), (3, "ok", "cloud"), (4, "ok", "cloud")],
           {"hpc": (1, 1), "cloud": (2, 0)}, lost=3, preempted=2, retries=2, duration=6.0),
    # resumed from round 3: the new pool's counters start again at 0
    record(4, {"train_loss": 0.7}, [(0, "ok", "hpc"), (5, "ok", "cloud"), (6, "late", "cloud")],
           {"hpc": (2, 0), "cloud": (1, 0)}, lost=1, preempted=1, retries=0),
    record(5, {"loss": 0.6, "accuracy": 0.8125, "train_loss": 0.6},
           [(0, "ok", "hpc"), (1, "ok", "hpc"), (2, "ok", "cloud"), (3, "ok", "cloud")],
           {"hpc": (2, 0), "cloud": (2, 0)}, lost=1, preempted=1, retries=0),
]


def write_run(storage, run_id=RUN, history=HISTORY, **status):
    store = CheckpointStore(str(storage), run_id)
    for rec in history:
        store.write_round_record(rec["round"], rec)
    last = history[-1] if history else {"round": 0, "metrics": {}}
    store.write_json(STATUS_FILE, {
        "run_id": run_id, "name": "pooled", "state": "completed", "round": last["round"], "rounds": 5,
        "metrics": last["metrics"], "weights_sha256": SHA,
        "checkpoint": f"{store.run_uri}/checkpoints/round-{last['round']:08d}", "storage": store.run_uri,
        "error": None, "error_type": None, "resumed_from": 3, "started_at": T0, "updated_at": T0 + 70.0,
        **status,
    })
    return store


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 150_000, len(data)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (900, 420)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20  # drawn on, not a blank canvas


def embedded(page):
    """figure id -> (img alt, decoded PNG bytes, caption) for each figure of the HTML page."""
    found = re.findall(
        r'<figure id="fig-(\w+)">\s*<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">\s*'
        r"<figcaption>(.*?)</figcaption>",
        page,
        flags=re.S,
    )
    return {name: (alt, base64.b64decode(b64), caption) for name, b64, alt, caption in found}


def summary_rows(page):
    return dict(re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", page))


def test_report_draws_every_figure_and_summarises_the_run(tmp_path):
    write_run(tmp_path / "runs")
    paths = build_report(RUN, storage=str(tmp_path / "runs"), out=tmp_path / "report")

    assert [f.name for f in paths.figures] == FIGURES
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted([*(f"{n}.png" for n in FIGURES), "report.html"])
    for figure in paths.figures:
        check_png(figure.path)

    page = paths.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and f"<title>elasticfl report: {RUN}</title>" in page
    assert "<script" not in page and 'src="http' not in page and "<link" not in page  # self-contained
    figures = embedded(page)
    assert list(figures) == FIGURES  # one embedded image per figure, in order
    for figure in paths.figures:
        assert figures[figure.name][1] == figure.path.read_bytes()

    rows = summary_rows(page)
    assert rows["run id"] == RUN and rows["state"] == "completed" and rows["rounds"] == "5 of 5"
    assert rows["weights_sha256"] == SHA and rows["checkpoint"].endswith("/checkpoints/round-00000005")
    assert rows["final metrics"] == "loss 0.6, accuracy 0.8125, train_loss 0.6"
    assert rows["clients failed or rejected"] == "2" and rows["clients late"] == "2"
    assert rows["work units re-run"] == "3"
    # lost: +1 in round 2, +2 (both preempted) in round 3, +1 preempted after the resume's reset
    assert rows["executors lost"] == "4 (3 preempted)"
    assert rows["client updates"] == "15 ok, from 6 distinct clients"
    assert rows["total time"] == "70.0 s wall clock, 14.0 s in rounds"
    assert rows["resumed from"] == "round 3"
    assert paths.summary == rows


def test_figures_name_what_they_draw(tmp_path):
    write_run(tmp_path / "runs")
    paths = build_report(RUN, storage=str(tmp_path / "runs"), out=tmp_path / "report")
    figures = embedded(paths.html.read_text())

    executors = paths.figure("executors")
    assert executors.series == ("hpc", "cloud")
    alt, _, caption = figures["executors"]
    assert "hpc" in alt and "cloud" in alt and "Pools: hpc, cloud." in caption

    assert paths.figure("metrics").title == "Accuracy and loss per round"
    assert set(paths.figure("metrics").series) == {"loss", "accuracy", "train_loss"}
    assert "on the 3 round(s) that were evaluated" in paths.figure("metrics").caption

    assert paths.figure("participation").series == ("ok", "failed", "rejected", "late")
    assert "Clients with failures or late results: 1, 2, 5, 6." in paths.figure("participation").caption
    assert paths.figure("faults").series == ("unit_retries", "lost", "preempted", "clients_failed", "clients_late")
    assert "work units re-run 3, executors lost 1, executors preempted 3" in paths.figure("faults").caption
    assert paths.figure("duration").series == ("train", "aggregate", "evaluate", "other")
    assert "slowest round 3 (6.00 s)" in paths.figure("duration").caption


def test_other_metric_names_no_evaluation_and_no_faults(tmp_path):
    """A custom task's metrics are plotted under their own names; a run without faults says so."""
    history = [
        record(r, {"mse": 1.0 / r, "train_loss": 2.0 / r} if r % 2 else {"train_loss": 2.0 / r},
               [(0, "ok", "default"), (1, "ok", "default")], {"default": (2, 0)}, lost=0, preempted=0, retries=0)
        for r in range(1, 4)
    ]
    write_run(tmp_path / "runs", "custom", history, rounds=3)
    paths = build_report("custom", storage=str(tmp_path / "runs"), out=tmp_path / "out")
    assert paths.figure("metrics").series == ("mse", "train_loss")
    assert paths.figure("metrics").title == "Metrics per round"
    assert paths.figure("faults").series == ()
    assert paths.figure("executors").series == ("default",)
    assert paths.summary["final metrics"] == "mse 0.3333, train_loss 0.6667"
    for figure in paths.figures:
        check_png(figure.path)

    # evaluation off and no train_loss either: the figure says there is nothing to plot
    bare = [{**rec, "metrics": {}, "clients": [{**c, "metrics": {}} for c in rec["clients"]]} for rec in history]
    write_run(tmp_path / "runs", "bare", bare, rounds=3)
    paths = build_report("bare", storage=str(tmp_path / "runs"), out=tmp_path / "bare")
    assert paths.figure("metrics").series == () and "no numeric metrics" in paths.figure("metrics").caption
    assert paths.summary["final metrics"] == "-"
    check_png(paths.figure("participation").path)


def test_a_running_run_shows_the_rounds_recorded_so_far(tmp_path):
    """status.json is rewritten after each checkpoint: the history can be ahead of it."""
    write_run(tmp_path / "runs", state="running", round=2, weights_sha256=None)
    paths = build_report(RUN, storage=(tmp_path / "runs").as_uri(), out=tmp_path / "out")  # a file:// URI
    rows = summary_rows(paths.html.read_text())
    assert rows["state"] == "running" and rows["rounds"] == "5 of 5" and rows["weights_sha256"] == "-"
    assert "when this report was made" in paths.html.read_text()


def test_a_run_with_no_rounds_yet_and_an_unknown_run(tmp_path):
    write_run(tmp_path / "runs", "fresh", [], state="running", round=0)
    paths = build_report("fresh", storage=str(tmp_path / "runs"), out=tmp_path / "out")
    assert len(embedded(paths.html.read_text())) == 5 and paths.summary["rounds"] == "0 of 5"
    for figure in paths.figures:
        assert figure.path.stat().st_size > 2_000

    with pytest.raises(RunNotFoundError, match="no-such-run"):
        build_report("no-such-run", storage=str(tmp_path / "runs"), out=tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_report_needs_neither_ray_nor_pyplot(tmp_path):
    """No Ray; and matplotlib without pyplot, so the caller's backend and figures are left alone."""
    write_run(tmp_path / "runs")
    code = (
        "import sys, elasticfl.report as report; assert 'matplotlib' not in sys.modules; "
        f"report.build_report({RUN!r}, storage=sys.argv[1], out=sys.argv[2]); "
        "assert 'ray' not in sys.modules and 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs"), str(tmp_path / "out")], check=True)
    assert (tmp_path / "out" / "report.html").stat().st_size > 50_000
