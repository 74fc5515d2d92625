"""A run's report: plots of its history records, as PNGs and one self-contained HTML page.

    from elasticfl.report import build_report
    paths = build_report("digits-20261125-115818-70a6", storage="./elasticfl-runs", out=Path("report"))
    print(paths.html)          # report/report.html: the summary and every figure, images embedded

Reads only the run's storage (``status.json`` and the per-round history records), so
it needs no Ray, and works on finished runs and on runs still going. Plots are drawn
with matplotlib's Agg renderer through ``matplotlib.figure.Figure``: no pyplot, so the
caller's matplotlib backend and global state are left alone.
"""

from __future__ import annotations

import base64
import html
import math
import posixpath
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .checkpoint import CheckpointStore
from .config import DEFAULT_STORAGE, Environment
from .controller import STATUS_FILE, RunState
from .errors import RunNotFoundError

__all__ = ["build_report", "render_report", "load_run", "ReportFigure", "ReportPaths", "RunData"]

HTML_FILE = "report.html"
_RECORD = re.compile(r"^round-(\d{8,})\.json$")
_ACCURACY_LIKE = ("acc", "precision", "recall", "f1", "auc")  # metrics in [0, 1], higher is better
_DPI = 100
_SIZE = (9.0, 4.2)  # inches: 900 x 420 pixels at _DPI
# Fixed colours per kind of thing, so the same series looks the same in every figure.
_PHASE_COLORS = {"train": "#4c72b0", "aggregate": "#dd8452", "evaluate": "#55a868", "other": "#b0b0b0"}
_STATUS_COLORS = {"ok": "#55a868", "failed": "#c44e52", "rejected": "#8172b3", "late": "#ccb974"}
_FAULT_COLORS = {
    "unit_retries": "#4c72b0",
    "lost": "#c44e52",
    "preempted": "#dd8452",
    "clients_failed": "#8172b3",
    "clients_late": "#ccb974",
}


@dataclass(frozen=True)
class RunData:
    """What a run's storage holds: its status (None if it has none yet) and its history."""

    run_id: str
    status: dict[str, Any] | None
    records: list[dict[str, Any]]
    storage_uri: str


@dataclass(frozen=True)
class ReportFigure:
    """One figure of a report: its PNG, what it shows, and the series it draws."""

    name: str  # the PNG's file stem, and the figure's id in the HTML page
    title: str
    path: Path
    caption: str
    series: tuple[str, ...] = ()  # legend entries: metric names, pool names, fault kinds, ...


@dataclass(frozen=True)
class ReportPaths:
    out: Path
    html: Path
    figures: tuple[ReportFigure, ...]
    summary: dict[str, str] = field(default_factory=dict)  # the HTML page's summary table, as text

    @property
    def pngs(self) -> list[Path]:
        return [f.path for f in self.figures]

    def figure(self, name: str) -> ReportFigure:
        return next(f for f in self.figures if f.name == name)


# -- reading the run ---------------------------------------------------------------------------

def load_run(run_id: str, *, storage: str | None = None, endpoint_url: str | None = None) -> RunData:
    """A run's status and history records, from its storage (as `elasticfl status` finds it)."""
    env = Environment.read()
    store = CheckpointStore(
        storage or env.storage or DEFAULT_STORAGE, run_id, endpoint_url=endpoint_url or env.s3_endpoint_url
    )
    status = store.read_json(STATUS_FILE)
    stored = _stored_rounds(store)
    if status is None and not stored:
        raise RunNotFoundError(
            f"run {run_id!r} not found: no {STATUS_FILE} and no history under {store.run_uri}; "
            "check the run id and --storage (or ELASTICFL_STORAGE)"
        )
    last = int((status or {}).get("round") or 0)
    finished = status is not None and _finished(status.get("state"))
    if not finished:  # a running run writes each round's record before its status catches up
        last = max([last, *stored])
    return RunData(run_id, status, store.read_round_records(last), store.run_uri)


def _finished(state: Any) -> bool:
    try:
        return RunState(state).finished
    except ValueError:  # a state this version does not know: treat the run as going on
        return False


def _stored_rounds(store: CheckpointStore) -> list[int]:
    """The rounds that have a history record (the store reads them only by number)."""
    infos = store._listdir(posixpath.join(store._run, "history"))
    return sorted(int(m.group(1)) for m in (_RECORD.match(i.base_name) for i in infos) if m)


# -- the report --------------------------------------------------------------------------------

def build_report(
    run_id: str, *, storage: str | None = None, endpoint_url: str | None = None, out: Path | str
) -> ReportPaths:
    """Draw a run's history into PNGs under ``out`` and write ``out/report.html``.

    The figures: metrics per round, round duration by phase, participation per
    client, executors per pool, faults per round. Raises RunNotFoundError when the
    storage knows no such run.
    """
    data = load_run(run_id, storage=storage, endpoint_url=endpoint_url)
    return render_report(data, out)


def render_report(data: RunData, out: Path | str) -> ReportPaths:
    """The report of an already loaded run (see ``build_report``)."""
    from matplotlib.figure import Figure  # imported here: elasticfl itself does not need matplotlib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(data.records, key=lambda r: r["round"])
    figures = []
    for name, draw in _FIGURES:
        fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
        title, caption, series = draw(fig, records, data)
        path = out / f"{name}.png"
        fig.savefig(path, format="png", dpi=_DPI, pil_kwargs={"optimize": True})
        figures.append(ReportFigure(name, title, path, caption, tuple(series)))
    summary = _summary(data, records)
    page = out / HTML_FILE
    page.write_text(_html(data, summary, figures), encoding="utf-8")
    return ReportPaths(out, page, tuple(figures), summary)


# -- figures: each draws into a Figure and returns (title, caption, series) ---------------------

Drawn = tuple[str, str, list[str]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metric_names(records: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for key, value in (record.get("metrics") or {}).items():
            if _is_number(value):
                names.setdefault(key)
    return list(names)


def _empty(fig: Any, title: str, message: str) -> None:
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def _rounds_axis(ax: Any, records: list[dict[str, Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if records:
        ax.set_xlim(records[0]["round"] - 0.6, records[-1]["round"] + 0.6)


def _elapsed_axis(ax: Any, records: list[dict[str, Any]], data: RunData) -> None:
    """A second x axis on top: the wall-clock time at which each round ended, since the run started."""
    if len(records) < 2:
        return
    starts = [float(r.get("started_at") or 0.0) for r in records]
    t0 = min([*starts, float((data.status or {}).get("started_at") or starts[0])])
    rounds = [float(r["round"]) for r in records]
    ends = [s + float(r.get("duration_s") or 0.0) - t0 for s, r in zip(starts, records)]
    if any(b <= a for a, b in zip(ends, ends[1:])) or any(b <= a for a, b in zip(rounds, rounds[1:])):
        return  # not monotonic (clock jumps): no honest mapping
    import numpy as np

    minutes = ends[-1] > 300
    scale = 60.0 if minutes else 1.0
    times = [e / scale for e in ends]

    def line(x: Any, xp: list[float], fp: list[float]) -> Any:
        """Piecewise linear through the points, extended along the end segments (the axes
        reach half a round past the first and last rounds)."""
        x = np.asarray(x, dtype=float)
        y = np.interp(x, xp, fp)
        y = np.where(x < xp[0], fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0]), y)
        return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), y)

    def forward(x: Any) -> Any:
        return line(x, rounds, times)

    def inverse(t: Any) -> Any:
        return line(t, times, rounds)

    top = ax.secondary_xaxis("top", functions=(forward, inverse))
    top.set_xlabel(f"time since the run started ({'min' if minutes else 's'}), at the end of each round",
                   fontsize=8, color="#555555")
    top.tick_params(labelsize=8, colors="#555555")


def _draw_metrics(fig: Any, records: list[dict[str, Any]], data: RunData) -> Drawn:
    names = _metric_names(records)
    if not names:
        _empty(fig, "Metrics per round", "no numeric metrics in the history records")
        return "Metrics per round", "The run's history records hold no numeric metrics.", []
    accuracy = [n for n in names if any(part in n.lower() for part in _ACCURACY_LIKE)]
    others = [n for n in names if n not in accuracy]
    groups = [g for g in (accuracy, others) if g]
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        is_accuracy = group is accuracy
        values_seen = []
        for name in group:
            points = [(r["round"], r["metrics"][name]) for r in records if _is_number((r.get("metrics") or {}).get(name))]
            xs, ys = zip(*points)
            values_seen.extend(ys)
            label = f"{name} (clients' mean)" if name == "train_loss" else f"{name} (central eval)"
            line = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.6, label=label)[0]
            if name == "train_loss":
                band = _client_range(records, name)
                if band:
                    bx, lo, hi = zip(*band)
                    ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0,
                                    label="train_loss (clients' min-max)")
        if is_accuracy:
            ax.set_ylabel("accuracy")
            ax.set_title("Accuracy per round (higher is better)")
        else:
            losses = all("loss" in n.lower() for n in group)
            ax.set_ylabel("loss" if losses else "value")
            ax.set_title("Loss per round (lower is better)" if losses else "Metrics per round")
            positive = [v for v in values_seen if v > 0]
            if len(positive) == len(values_seen) and positive and max(positive) / min(positive) > 50:
                ax.set_yscale("log")
        _rounds_axis(ax, records)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if accuracy and all("loss" in n.lower() for n in others):
        title = "Accuracy and loss per round"
    elif not accuracy and all("loss" in n.lower() for n in others):
        title = "Loss per round"
    else:
        title = "Metrics per round"
    evaluated = sum(any(n != "train_loss" and n in (r.get("metrics") or {}) for n in names) for r in records)
    caption = (
        f"{', '.join(names)} over {len(records)} round(s). Central evaluation metrics appear on the "
        f"{evaluated} round(s) that were evaluated; train_loss is the mean over each round's clients, "
        "with the range of the clients' own values shaded."
    )
    return title, caption, names


def _client_range(records: list[dict[str, Any]], name: str) -> list[tuple[int, float, float]]:
    band = []
    for record in records:
        values = [c["metrics"][name] for c in record.get("clients") or []
                  if c.get("status") == "ok" and _is_number((c.get("metrics") or {}).get(name))]
        if len(values) > 1:
            band.append((record["round"], min(values), max(values)))
    return band


def _draw_duration(fig: Any, records: list[dict[str, Any]], data: RunData) -> Drawn:
    title = "Round duration by phase"
    if not records:
        _empty(fig, title, "no rounds recorded yet")
        return title, "No round has completed yet.", []
    ax = fig.add_subplot()
    rounds = [r["round"] for r in records]
    phase_names: dict[str, None] = {}
    for record in records:
        for key in record.get("phases_s") or {}:
            phase_names.setdefault(key)
    bottom = [0.0] * len(records)
    series = []
    for phase in [*phase_names, "other"]:
        if phase == "other":  # what the phases do not cover: building the record, bookkeeping
            values = [max(0.0, float(r.get("duration_s") or 0.0) - sum((r.get("phases_s") or {}).values()))
                      for r in records]
        else:
            values = [float((r.get("phases_s") or {}).get(phase) or 0.0) for r in records]
        if not any(v > 0 for v in values):
            continue
        ax.bar(rounds, values, bottom=bottom, width=0.8, label=phase,
               color=_PHASE_COLORS.get(phase), linewidth=0)
        bottom = [b + v for b, v in zip(bottom, values)]
        series.append(phase)
    total = sum(float(r.get("duration_s") or 0.0) for r in records)
    ax.set_title(f"{title} (total {_seconds(total)} in {len(records)} rounds)")
    ax.set_ylabel("seconds")
    _rounds_axis(ax, records)
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    slowest = max(records, key=lambda r: float(r.get("duration_s") or 0.0))
    caption = (
        f"Each round's wall-clock time, split into {', '.join(series) or 'no phases'}. Total "
        f"{_seconds(total)}; mean {_seconds(total / len(records))}; slowest round {slowest['round']} "
        f"({_seconds(float(slowest.get('duration_s') or 0.0))})."
    )
    return title, caption, series


def _statuses(records: list[dict[str, Any]]) -> dict[int, dict[str, int]]:
    """client id -> {status: how many rounds it ended with that status}."""
    counts: dict[int, dict[str, int]] = {}
    for record in records:
        for client in record.get("clients") or []:
            per = counts.setdefault(int(client["client_id"]), {})
            per[client.get("status", "ok")] = per.get(client.get("status", "ok"), 0) + 1
    return counts


def _draw_participation(fig: Any, records: list[dict[str, Any]], data: RunData) -> Drawn:
    title = "Participation per client"
    counts = _statuses(records)
    if not counts:
        _empty(fig, title, "no client reports in the history records")
        return title, "No client has reported yet.", []
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    ids = sorted(counts)
    statuses = [s for s in ("ok", "failed", "rejected", "late") if any(s in c for c in counts.values())]
    statuses += sorted({s for c in counts.values() for s in c} - set(statuses))  # any other status, as is
    bottom = [0] * len(ids)
    width = 0.8 if len(ids) <= 150 else 1.0
    for status in statuses:
        values = [counts[i].get(status, 0) for i in ids]
        total = sum(values)
        ax.bar(ids, values, bottom=bottom, width=width, linewidth=0, color=_STATUS_COLORS.get(status),
               label=f"{status} ({total})")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title(f"{title}: rounds each client was in the cohort ({len(ids)} clients, {len(records)} rounds)")
    ax.set_xlabel("client id")
    ax.set_ylabel("rounds")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(ids[0] - 1, ids[-1] + 1)
    ax.set_ylim(0, max(bottom) * 1.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="outcome (client-rounds)", title_fontsize=8)
    trained = [counts[i].get("ok", 0) for i in ids]
    troubled = sorted((i for i in ids if any(s != "ok" for s in counts[i])),
                      key=lambda i: -sum(v for s, v in counts[i].items() if s != "ok"))
    caption = (
        f"How many rounds each of the {len(ids)} clients that were ever selected ended ok, failed, "
        f"were rejected or late. Trained rounds per client: min {min(trained)}, max {max(trained)}. "
        + (f"Clients with failures or late results: {', '.join(map(str, troubled[:10]))}"
           f"{' and more' if len(troubled) > 10 else ''}." if troubled else "No client failed or was late.")
    )
    return title, caption, statuses


def _pool_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """pool -> {"ready": [...], "starting": [...]} per record (NaN where a record does not name it)."""
    names: dict[str, None] = {}
    for record in records:
        for name in ((record.get("executors") or {}).get("pools") or {}):
            names.setdefault(name)
    if not names:  # records from before pools: the totals, as one series
        return {"all": {key: [float((r.get("executors") or {}).get(key, math.nan)) for r in records]
                        for key in ("ready", "starting")}}
    out = {}
    for name in names:
        pools = [((r.get("executors") or {}).get("pools") or {}).get(name) for r in records]
        out[name] = {key: [float(p.get(key, 0)) if p else math.nan for p in pools] for key in ("ready", "starting")}
    return out


def _draw_executors(fig: Any, records: list[dict[str, Any]], data: RunData) -> Drawn:
    title = "Executors per pool"
    if not records:
        _empty(fig, title, "no rounds recorded yet")
        return title, "No round has completed yet.", []
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    rounds = [r["round"] for r in records]
    pools = _pool_counts(records)
    cycle = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    bottom = [0.0] * len(records)
    width = 0.8 if len(records) <= 150 else 1.0
    for i, (name, counts) in enumerate(pools.items()):  # one stack per round: each pool's ready, then starting
        color = cycle[i % len(cycle)]
        ready = [0.0 if math.isnan(v) else v for v in counts["ready"]]
        ax.bar(rounds, ready, bottom=bottom, width=width, color=color, linewidth=0, label=f"{name}: ready")
        bottom = [b + v for b, v in zip(bottom, ready)]
        starting = [0.0 if math.isnan(v) else v for v in counts["starting"]]
        if any(starting):
            ax.bar(rounds, starting, bottom=bottom, width=width, color=color, alpha=0.35, hatch="//",
                   edgecolor="white", linewidth=0, label=f"{name}: starting (no node yet, or loading)")
            bottom = [b + v for b, v in zip(bottom, starting)]
    nodes = [len((r.get("executors") or {}).get("nodes") or []) for r in records]
    ax.plot(rounds, nodes, marker="o", markersize=4, drawstyle="steps-mid", color="black", linewidth=1.4,
            label="nodes with a ready executor")
    ax.set_ylim(0, max([*bottom, *nodes, 1]) * 1.25)  # room for the legend
    ax.set_title(f"{title}, at the end of each round")
    ax.set_ylabel("executors / nodes")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _rounds_axis(ax, records)
    _elapsed_axis(ax, records, data)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=min(3, len(pools) + 1))
    last = records[-1].get("executors") or {}
    caption = (
        f"Each round's executors, stacked by pool: ready (solid) and starting (hatched: waiting for a node "
        f"that can hold it, or loading its task and data), with the number of nodes holding a ready executor (line). Pools: {', '.join(pools)}. At the last round: "
        f"{last.get('ready', 0)} ready, {last.get('starting', 0)} starting, on {len(last.get('nodes') or [])} node(s)."
    )
    return title, caption, list(pools)


def _fault_counts(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Per round: unit retries, executors lost (not preempted) and preempted since the round
    before, clients failed (rejected included) and late."""
    out: dict[str, list[int]] = {key: [] for key in _FAULT_COLORS}
    before = {"lost": 0, "preempted": 0}
    for record in records:
        executors = record.get("executors") or {}
        delta = {}
        for key in ("lost", "preempted"):
            now = int(executors.get(key) or 0)
            # the counters run from the pool's start: a resumed run's new pool starts again at 0
            delta[key] = now - before[key] if now >= before[key] else now
            before[key] = now
        out["unit_retries"].append(int(record.get("unit_retries") or 0))
        out["lost"].append(max(0, delta["lost"] - delta["preempted"]))
        out["preempted"].append(delta["preempted"])
        out["clients_failed"].append(int(record.get("clients_failed") or 0))
        out["clients_late"].append(int(record.get("clients_late") or 0))
    return out


_FAULT_LABELS = {
    "unit_retries": "work units re-run",
    "lost": "executors lost (crash, node gone)",
    "preempted": "executors preempted",
    "clients_failed": "clients failed or rejected",
    "clients_late": "clients late (not waited for)",
}


def _draw_faults(fig: Any, records: list[dict[str, Any]], data: RunData) -> Drawn:
    title = "Faults per round"
    if not records:
        _empty(fig, title, "no rounds recorded yet")
        return title, "No round has completed yet.", []
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    rounds = [r["round"] for r in records]
    counts = _fault_counts(records)
    bottom = [0] * len(records)
    series = []
    for key, values in counts.items():
        total = sum(values)
        if not total:
            continue
        ax.bar(rounds, values, bottom=bottom, width=0.8, linewidth=0, color=_FAULT_COLORS[key],
               label=f"{_FAULT_LABELS[key]}: {total}")
        bottom = [b + v for b, v in zip(bottom, values)]
        series.append(key)
    if not series:
        ax.text(0.5, 0.5, "no faults: no retries, no executors lost, every client ok",
                ha="center", va="center", transform=ax.transAxes, color="#666666")
        ax.set_ylim(0, 1)
    else:
        ax.set_ylim(0, max(bottom) * 1.35)  # room for the legend
        ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title)
    ax.set_ylabel("events in the round")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _rounds_axis(ax, records)
    _elapsed_axis(ax, records, data)
    ax.grid(True, axis="y", alpha=0.3)
    totals = {key: sum(values) for key, values in counts.items()}
    caption = (
        "Per round: work units re-run, executors lost (other than preempted) and preempted since the round "
        "before, clients that failed or sent a rejected update, and clients not waited for. Totals: "
        + ", ".join(f"{_FAULT_LABELS[k].split(' (')[0]} {v}" for k, v in totals.items()) + "."
    )
    return title, caption, series


_FIGURES: tuple[tuple[str, Callable[[Any, list[dict[str, Any]], RunData], Drawn]], ...] = (
    ("metrics", _draw_metrics),
    ("duration", _draw_duration),
    ("participation", _draw_participation),
    ("executors", _draw_executors),
    ("faults", _draw_faults),
)


# -- the summary and the page ------------------------------------------------------------------

def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _utc(t: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(t))) if _is_number(t) else "-"


def _final_metrics(data: RunData, records: list[dict[str, Any]]) -> str:
    """Each metric's last value; one not in the last round names its round."""
    last_round = records[-1]["round"] if records else None
    latest: dict[str, tuple[int | None, float]] = {}
    for record in records:
        for key, value in (record.get("metrics") or {}).items():
            if _is_number(value):
                latest[key] = (record["round"], value)
    for key, value in ((data.status or {}).get("metrics") or {}).items():
        if _is_number(value) and key not in latest:
            latest[key] = (last_round, value)
    if not latest:
        return "-"
    return ", ".join(
        f"{key} {value:.4g}" + (f" (round {r})" if r is not None and r != last_round else "")
        for key, (r, value) in latest.items()
    )


def _summary(data: RunData, records: list[dict[str, Any]]) -> dict[str, str]:
    status = data.status or {}
    faults = {key: sum(values) for key, values in _fault_counts(records).items()}
    # a running run's status lags its history by up to a checkpoint interval
    round_ = max([int(status.get("round") or 0), *(r["round"] for r in records[-1:])])
    in_rounds = sum(float(r.get("duration_s") or 0.0) for r in records)
    started, updated = status.get("started_at"), status.get("updated_at")
    if records:
        first = float(records[0].get("started_at") or 0.0)
        started = min(first, float(started)) if _is_number(started) else first
    wall = float(updated) - float(started) if _is_number(started) and _is_number(updated) else None
    clients_ok = sum(int(r.get("clients_ok") or 0) for r in records)
    distinct = len({c["client_id"] for r in records for c in r.get("clients") or [] if c.get("status") == "ok"})
    rows = {
        "run id": data.run_id,
        "name": str(status.get("name") or "-"),
        "state": str(status.get("state") or "unknown (no status.json)"),
        "rounds": f"{round_} of {status.get('rounds', '?')}",
        "final metrics": _final_metrics(data, records),
        "weights_sha256": str(status.get("weights_sha256") or "-"),
        "checkpoint": str(status.get("checkpoint") or "-"),
        "storage": data.storage_uri,
        "started": _utc(started),
        "total time": (f"{_seconds(wall)} wall clock, " if wall is not None else "")
        + f"{_seconds(in_rounds)} in rounds",
        "client updates": f"{clients_ok} ok, from {distinct} distinct clients",
        "clients failed or rejected": str(faults["clients_failed"]),
        "clients late": str(faults["clients_late"]),
        "work units re-run": str(faults["unit_retries"]),
        "executors lost": f"{faults['lost'] + faults['preempted']} ({faults['preempted']} preempted)",
    }
    if status.get("resumed_from") is not None:
        rows["resumed from"] = f"round {status['resumed_from']}"
    if status.get("error"):
        rows["error"] = str(status["error"])
    return rows


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 960px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h1 code { font-size: 0.9em; }
.note { color: #666; margin-top: 0; }
table.summary { border-collapse: collapse; margin: 1em 0 2em; }
table.summary th { text-align: left; padding: 3px 16px 3px 0; color: #555; font-weight: 600;
                   vertical-align: top; white-space: nowrap; }
table.summary td { padding: 3px 0; font-family: ui-monospace, monospace; font-size: 0.9em; word-break: break-all; }
.state-completed { color: #2a7d2e; } .state-failed { color: #b3261e; } .state-stopped, .state-running { color: #9a6700; }
figure { margin: 0 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; margin-top: 0.3em; }
nav a { margin-right: 1em; }
"""


def _html(data: RunData, summary: dict[str, str], figures: list[ReportFigure]) -> str:
    esc = html.escape
    state = (data.status or {}).get("state", "")
    rows = []
    for key, value in summary.items():
        cls = f' class="state-{esc(state)}"' if key == "state" else ""
        rows.append(f"<tr><th>{esc(key)}</th><td{cls}>{esc(value)}</td></tr>")
    note = ""
    if state and not _finished(state):
        note = (f'<p class="note">The run was {esc(state)} when this report was made: it shows the rounds '
                "recorded so far.</p>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>elasticfl report: {esc(data.run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>elasticfl run <code>{esc(data.run_id)}</code></h1>",
        f'<p class="note">Report made {esc(_utc(time.time()))} from {esc(data.storage_uri)}</p>',
        note,
        '<nav>' + "".join(f'<a href="#fig-{f.name}">{esc(f.title)}</a>' for f in figures) + "</nav>",
        '<table class="summary">',
        *rows,
        "</table>",
    ]
    for fig in figures:
        encoded = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        alt = fig.title + (f": {', '.join(fig.series)}" if fig.series else "")
        parts += [
            f'<figure id="fig-{fig.name}">',
            f'<img src="data:image/png;base64,{encoded}" alt="{esc(alt)}">',
            f"<figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)}</figcaption>",
            "</figure>",
        ]
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"
