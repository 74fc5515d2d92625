"""Keeps README.md true: its examples run, its config tables match config.py, its CLI quickstart works.

Markers in README.md, on the line just before a fenced block:
  <!-- skip-test: why -->                           the block is not run (cluster-only snippets)
  <!-- readme-test: save as NAME.py -->             the block is also saved as NAME.py, importable by the others
  <!-- readme-test: same as examples/X.yaml -->     the YAML block must equal that file's config
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from elasticfl import config as cfg

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

_FENCE = re.compile(r"(?:^(?P<marker><!--[^\n]*-->)[ \t]*\n)?^```(?P<lang>\w*)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def _blocks(lang: str) -> list[tuple[int, str, str]]:
    """(line number, marker or "", code) of every ```lang block, in README order."""
    found = []
    for m in _FENCE.finditer(README):
        if m.group("lang") == lang:
            line = README.count("\n", 0, m.start("body"))
            found.append((line, (m.group("marker") or "").strip(), m.group("body")))
    return found


def _skipped(marker: str) -> bool:
    return marker.startswith("<!-- skip-test")


def _saved_as(marker: str) -> str | None:
    m = re.match(r"<!-- readme-test: save as (\S+) -->", marker)
    return m.group(1) if m else None


def _same_as(marker: str) -> str | None:
    m = re.match(r"<!-- readme-test: same as (\S+) -->", marker)
    return m.group(1) if m else None


PYTHON_BLOCKS = _blocks("python")


def test_the_readme_opens_with_the_two_commands():
    first = _blocks("bash")[0][2].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## ")


# -- every ```python block runs -------------------------------------------------------------

@pytest.fixture(scope="module")
def block_env(tmp_path_factory):
    """A folder with the blocks saved as modules, and the environment every block runs in."""
    work = tmp_path_factory.mktemp("readme")
    for _, marker, code in PYTHON_BLOCKS:
        if name := _saved_as(marker):
            (work / name).write_text(code)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # each block starts its own embedded Ray, as a reader's would
    env["ELASTICFL_STORAGE"] = str(work / "runs")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), str(ROOT), env.get("PYTHONPATH")]))
    return work, env


def test_the_readme_has_python_examples():
    assert len([b for b in PYTHON_BLOCKS if not _skipped(b[1])]) >= 4


@pytest.mark.parametrize(
    "line,marker,code", [pytest.param(*b, id=f"line-{b[0]}") for b in PYTHON_BLOCKS]
)
def test_python_block_runs(line, marker, code, block_env):
    if _skipped(marker):
        pytest.skip(marker)
    work, env = block_env
    script = work / f"readme_block_{line}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, (
        f"README.md python block at line {line} failed:\n{code}\n--- stdout\n{proc.stdout[-3000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )


# -- every ```yaml block is a valid config ----------------------------------------------------

@pytest.mark.parametrize("line,marker,text", [pytest.param(*b, id=f"line-{b[0]}") for b in _blocks("yaml")])
def test_yaml_block_is_a_valid_config(line, marker, text):
    if _skipped(marker):
        pytest.skip(marker)
    config = cfg.RunConfig.from_dict(yaml.safe_load(text), source=f"README.md line {line}")
    if same := _same_as(marker):
        assert config == cfg.RunConfig.from_yaml(ROOT / same), f"README.md line {line} differs from {same}"


def test_json_blocks_are_json_lines():
    for line, _, text in _blocks("json"):
        for row in text.splitlines():
            json.loads(row)


# -- the config tables list every field of config.py, with its default ---------------------

# README heading under "## The config file" -> the models its table documents.
SECTIONS: dict[str, list[type[BaseModel]]] = {
    "run": [cfg.RunSection],
    "task (type: classification)": [cfg.ClassificationTaskConfig],
    "task (type: custom)": [cfg.CustomTaskConfig],
    "data": [cfg.DataConfig],
    "data.partition": [cfg.PartitionConfig],
    "data.synthetic": [cfg.SyntheticConfig],
    "cohort": [cfg.CohortConfig],
    "cohort.selection": [cfg.UniformSelectionConfig, cfg.SpeedSelectionConfig, cfg.OortSelectionConfig, cfg.PowerOfChoiceSelectionConfig],
    "executors": [cfg.ExecutorConfig],
    "pools.<name>": [cfg.PoolConfig],
    "clients": [cfg.ClientRule],
    "strategy": [
        cfg.FedAvgConfig, cfg.FedAvgMConfig, cfg.FedProxConfig, cfg.FedAdamConfig, cfg.FedYogiConfig, cfg.FedAdagradConfig,
        cfg.FedNovaConfig, cfg.ScaffoldConfig,
    ],
    "strategy.robust": [cfg.MedianConfig, cfg.TrimmedMeanConfig, cfg.KrumConfig],
    "compression": [cfg.CompressionConfig],
    "asynchronous": [cfg.AsynchronousConfig],
    "simulation": [cfg.SimulationConfig],
    "checkpoint": [cfg.CheckpointConfig],
    "cluster": [cfg.ClusterConfig],
    "evaluation": [cfg.EvaluationConfig],
    "privacy": [cfg.PrivacyConfig],
    "privacy.adaptive_clipping": [cfg.AdaptiveClippingConfig],
}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) or () for m in _models_in(arg)]


def _reachable(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = set()
    for field in model.model_fields.values():
        for sub in _models_in(field.annotation):
            found |= {sub} | _reachable(sub)
    return found


def _config_tables() -> dict[str, dict[str, str]]:
    """heading -> {field: default cell} for each table in the README's config section."""
    section = README.split("\n## The config file", 1)[1].split("\n## ", 1)[0]
    tables = {}
    for chunk in section.split("\n### ")[1:]:
        heading, _, body = chunk.partition("\n")
        rows = {}
        for row in body.splitlines():
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            if row.startswith("| `") and len(cells) >= 3:
                rows[cells[0].strip("`")] = cells[1]
        tables[heading.replace("`", "").strip()] = rows
    return tables


def _expected_default(models: list[type[BaseModel]], name: str) -> str | None:
    """The default cell for a field: `json` of its default, *required*, or None for a nested section."""
    for model in models:
        field = model.model_fields.get(name)
        if field is None:
            continue
        if _models_in(field.annotation):
            return None
        if not field.is_required():
            return f"`{json.dumps(field.get_default(call_default_factory=True))}`"
    return "*required*"


def test_the_sections_cover_every_config_model():
    documented = {m for models in SECTIONS.values() for m in models}
    assert documented == _reachable(cfg.RunConfig)


def test_every_config_field_is_documented_with_its_default():
    tables = _config_tables()
    assert set(tables) == set(SECTIONS), "README config headings differ from the sections this test knows"
    for heading, models in SECTIONS.items():
        fields = {name for m in models for name in m.model_fields}
        assert set(tables[heading]) == fields, f"README table '{heading}' lists other fields than config.py"
        for name in fields:
            want = _expected_default(models, name)
            got = tables[heading][name]
            if want is None:
                assert got.startswith("see"), f"{heading}.{name}: a nested section's default should say 'see ...'"
            else:
                assert got == want, f"README table '{heading}': {name} default is {got}, config.py says {want}"


# -- the CLI quickstart ---------------------------------------------------------------------

def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _readme_json_example(first_key: str) -> list[dict]:
    return [json.loads(r) for _, _, text in _blocks("json") for r in text.splitlines() if r.startswith(f'{{"{first_key}"')]


def test_cli_quickstart(ray_local, tmp_path):
    from typer.testing import CliRunner

    from elasticfl_cli.main import app

    runner = CliRunner()
    store = str(tmp_path / "runs")

    validated = runner.invoke(app, ["validate", "examples/digits.yaml"])
    assert validated.exit_code == 0, validated.output
    assert "ok" in validated.output and "keep_last" in validated.output

    ran = runner.invoke(app, ["run", "examples/digits.yaml", "--json", "--rounds", "2", "--storage", store])
    assert ran.exit_code == 0, ran.output
    lines = _json_lines(ran.stdout)
    final = json.loads(ran.stdout.strip().splitlines()[-1])
    assert final["state"] == "completed" and final["round"] == 2 and len(final["weights_sha256"]) == 64
    assert [line["round"] for line in lines[:-1]] == [1, 2]
    # the README's sample output has the keys the real output has
    sample = _readme_json_example("round")
    assert sample and all(set(s) == set(lines[0]) for s in sample if "uri" not in s)
    sample_final = _readme_json_example("run_id")
    assert sample_final and set(sample_final[0]) == set(final)
    run_id = final["run_id"]

    status = runner.invoke(app, ["status", run_id, "--json", "--storage", store])
    assert status.exit_code == 0, status.output
    info = _json_lines(status.stdout)[0]
    assert info["state"] == "completed" and info["weights_sha256"] == final["weights_sha256"]
    listed = re.search(r"`status --json` prints one object with (.*?)\.\n", README, re.S)
    assert listed, "README lost its list of status fields"
    assert set(re.findall(r"`(\w+)`", listed.group(1))) - {"pending", "running", "completed", "failed", "stopped"} == set(info)

    checkpoints = runner.invoke(app, ["checkpoints", run_id, "--json", "--storage", store])
    assert checkpoints.exit_code == 0, checkpoints.output
    infos = _json_lines(checkpoints.stdout)
    assert [c["round"] for c in infos] == [1, 2] and all(c["valid"] for c in infos)
    sample_ckpt = [s for s in _readme_json_example("round") if "uri" in s]
    assert sample_ckpt and set(sample_ckpt[0]) == set(infos[0])

    resumed = runner.invoke(
        app, ["run", "examples/digits.yaml", "--json", "--rounds", "3", "--storage", store, "--run-id", run_id, "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert _json_lines(resumed.stdout)[-1]["round"] == 3

    unknown = runner.invoke(app, ["status", "no-such-run", "--storage", store])
    assert unknown.exit_code == 3  # as the README's exit code table says
