"""`elasticfl report` through typer's CliRunner, on a real finished run."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

pytest.importorskip("matplotlib")

from elasticfl_cli.main import app  # noqa: E402
from tests.conftest import noisy_config  # noqa: E402

runner = CliRunner()
FIGURES = ["metrics", "duration", "participation", "executors", "faults"]


def test_report_of_a_finished_run(ray_local, tmp_path, monkeypatch):
    import elasticfl

    store = str(tmp_path / "runs")
    config = noisy_config(rounds=3, clients=12, per_round=6, raise_clients=[0, 1, 2, 3])  # some clients fail
    result = elasticfl.run(config, run_id="reported", storage=store, quiet=True)
    failed = sum(r["clients_failed"] for r in result.history)
    assert result.ok and failed > 0

    out = tmp_path / "report"
    cli = runner.invoke(app, ["report", "reported", "--out", str(out), "--storage", store])
    assert cli.exit_code == 0, cli.output
    assert "report of run reported (completed, round 3 of 3)" in cli.output
    assert str(out / "report.html") in cli.output.replace("\n", "")

    for name in FIGURES:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 150_000
    page = (out / "report.html").read_text()
    rows = dict(re.findall(r"<tr><th>(.*?)</th><td[^>]*>(.*?)</td></tr>", page))
    assert rows["run id"] == "reported" and rows["state"] == "completed" and rows["rounds"] == "3 of 3"
    assert rows["weights_sha256"] == result.weights_sha256 and rows["checkpoint"] == result.checkpoint
    assert rows["clients failed or rejected"] == str(failed)
    assert rows["final metrics"].startswith(f"norm {result.metrics['norm']:.4g}")
    images = re.findall(r'<figure id="fig-(\w+)">\s*<img src="data:image/png;base64,[A-Za-z0-9+/=]+" alt="([^"]*)">', page)
    assert [name for name, _ in images] == FIGURES
    alts = dict(images)
    assert "norm" in alts["metrics"] and "train_loss" in alts["metrics"]
    assert alts["executors"] == "Executors per pool: default"  # no pools configured: the one default pool
    assert "failed" in alts["participation"] and "clients_failed" in alts["faults"]

    # the storage may come from ELASTICFL_STORAGE, as for `status`
    monkeypatch.setenv("ELASTICFL_STORAGE", store)
    again = runner.invoke(app, ["report", "reported", "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "report.html").exists()


def test_report_of_an_unknown_run_exits_3(tmp_path):
    result = runner.invoke(app, ["report", "no-such-run", "--out", str(tmp_path / "out"), "--storage", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "no-such-run" in result.output and "--storage" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_report_needs_out(tmp_path):
    result = runner.invoke(app, ["report", "some-run", "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "--out" in result.output
