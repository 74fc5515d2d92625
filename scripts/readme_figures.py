"""Make the README's pictures from a real run: `python scripts/readme_figures.py` (from the repo root).

It runs examples/digits.yaml for a few rounds on the embedded local Ray, with storage in
a temporary folder, and kills one executor's process in round 3 (the first client to
train that round exits its process, once), so the report has a fault to show. While the
run goes, it follows it with `elasticfl watch RUN_ID` in this process, recording the
terminal into an SVG. Then it builds `elasticfl report` and keeps the figures the README
shows:

    docs/img/watch.svg             the terminal of `elasticfl watch`
    docs/img/report-metrics.png    accuracy and loss per round
    docs/img/report-executors.png  executors per pool: the one lost, its replacement starting

Options: --rounds N (default 12), --out DIR (default docs/img), --keep DIR (keep the
whole report there: every PNG and report.html).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRASH_ROUND = 3
_MARKER = "ELASTICFL_README_CRASH_MARKER"  # the file whose creation marks the one crash as done


def train_crashing_once(model, data, ctx, config):
    """The built-in classifier's local SGD (task.train hook), except that the first client
    to train in round CRASH_ROUND kills its executor's process, as an OOM kill would.
    Its work unit is re-run on a new executor, where the marker file says it happened."""
    marker = os.environ.get(_MARKER)
    if marker and ctx.round == CRASH_ROUND:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # one process wins, once
            os._exit(1)
        except FileExistsError:
            pass
    import torch
    from torch import nn

    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    model.train()
    total, batches = 0.0, 0
    for _ in range(config.epochs):
        order = torch.from_numpy(ctx.rng.permutation(len(data)))
        for start in range(0, len(data), config.batch_size):
            idx = order[start:start + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
    return {"train_loss": total / max(batches, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--keep", type=Path, default=None, help="also keep the whole report here")
    args = parser.parse_args()

    os.chdir(ROOT)  # the executors import this script's hook as scripts.readme_figures
    sys.path.insert(0, str(ROOT))
    from rich.console import Console

    import elasticfl
    from elasticfl.report import build_report
    from elasticfl_cli import main as cli

    tmp = Path(tempfile.mkdtemp(prefix="elasticfl-readme-"))
    storage, run_id = str(tmp / "runs"), "digits-readme"
    config = elasticfl.RunConfig.from_yaml(ROOT / "examples" / "digits.yaml").with_overrides(
        run={"rounds": args.rounds},
        task={"train": "scripts.readme_figures:train_crashing_once"},
        cluster={"dashboard": False, "runtime_env": {"env_vars": {_MARKER: str(tmp / "crashed")}}},
    )

    # `elasticfl watch` in this process, its console recorded. Not a terminal: the progress
    # bar is drawn once, when it ends, instead of being redrawn in place.
    screen = Console(record=True, width=112, file=io.StringIO(), force_terminal=False, color_system="truecolor")
    cli.out = cli.err = screen
    handle = elasticfl.submit(config, run_id=run_id, storage=storage, quiet=True)
    screen.print(f"[bold green]$[/] elasticfl watch {run_id}", highlight=False)
    code = cli.app(["watch", run_id, "--storage", storage], standalone_mode=False)  # the run's exit code
    if code:
        raise SystemExit(f"elasticfl watch {run_id} exited with {code}:\n{screen.export_text(clear=False)}")
    result = handle.wait()
    print(f"run {run_id}: {result.state} after {result.round} rounds, {result.metrics}")
    if not result.ok:
        raise SystemExit(f"the run did not complete: {result.error}")

    report_dir = args.keep or tmp / "report"
    paths = build_report(run_id, storage=storage, out=report_dir)
    if paths.summary["executors lost"].startswith("0 "):
        print("warning: the report shows no executor lost: did the kill in round "
              f"{CRASH_ROUND} happen?", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    screen.save_svg(str(args.out / "watch.svg"), title=f"elasticfl watch {run_id}")
    for name in ("metrics", "executors"):
        shutil.copyfile(paths.figure(name).path, args.out / f"report-{name}.png")
    for name in ("watch.svg", "report-metrics.png", "report-executors.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size / 1024:.0f} KiB")
    shutil.rmtree(tmp, ignore_errors=True)  # the run's storage, and the report unless --keep put it elsewhere


if __name__ == "__main__":
    main()
