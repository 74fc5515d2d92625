"""`elasticfl report RUN_ID --out DIR`: a run's plots as PNGs and one self-contained HTML page.

Registered on the app by cli/main.py (``register(app, _fail)``). It takes main's error
handler as an argument rather than importing main: under ``python -m elasticfl_cli.main``
the running app lives in ``__main__``, and importing ``elasticfl_cli.main`` from here
would build a second app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NoReturn, Optional

import typer
from rich.console import Console

from elasticfl.errors import ElasticFLError

out = Console()


def register(app: typer.Typer, fail: Callable[[Exception], NoReturn]) -> None:
    """Add the `report` command to ``app``; ``fail`` turns an ElasticFLError into a message and exit code."""

    @app.command()
    def report(
        run_id: str = typer.Argument(..., help="The run id printed by `elasticfl run`."),
        out_dir: Path = typer.Option(..., "--out", help="Folder to write the PNGs and report.html into (created)."),
        storage: Optional[str] = typer.Option(
            None, "--storage", help="Checkpoint storage (folder, file://, s3://, gs://)."
        ),
    ) -> None:
        """Plot a run's history into PNGs and one self-contained HTML page.

        Metrics per round, round duration by phase, participation per client, executors
        per pool and faults per round, with a summary. Reads the run's storage only (no
        Ray needed); a running run's report shows the rounds recorded so far.
        """
        from elasticfl.report import build_report  # matplotlib loads only for this command

        try:
            paths = build_report(run_id, storage=storage, out=out_dir)
        except ElasticFLError as exc:
            fail(exc)
        summary = paths.summary
        out.print(
            f"report of run [bold]{run_id}[/] ({summary['state']}, round {summary['rounds']}):",
            highlight=False,
        )
        for figure in paths.figures:
            out.print(f"  {figure.path}  {figure.title}", highlight=False, markup=False, soft_wrap=True)
        out.print(f"  {paths.html}  all of them, with a summary (open it in a browser)", highlight=False,
                  markup=False, soft_wrap=True)
