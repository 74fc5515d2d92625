"""clusters/ holds configs that Ray (and Slurm, KubeRay) accept: checked offline, no cluster started."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from elasticfl import RunConfig

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
RAY_BIN = Path(sys.executable).with_name("ray")


# -- cluster launcher (aws, gcp) ---------------------------------------------------
@pytest.mark.parametrize("name, gpu_type", [("aws.yaml", "gpu_a10g"), ("gcp.yaml", "gpu_t4")])
def test_launcher_config_passes_rays_schema(name, gpu_type):
    jsonschema = pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTERS / name).read_text())
    # What `ray up` does before launching: merge the provider's defaults.yaml (no cloud call),
    # then validate against ray/autoscaler/ray-schema.json and the cross-field checks.
    validate_config(prepare_config(copy.deepcopy(raw)))

    types = raw["available_node_types"]
    assert raw["head_node_type"] == "head"
    pools = {k: v for k, v in types.items() if k != "head"}
    assert set(pools) == {"cpu_ondemand", "cpu_spot", gpu_type}
    for node_type in pools.values():
        assert node_type["resources"]["cloud"] == 1
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= raw["max_workers"]
    assert types[gpu_type]["resources"]["GPU"] == 1
    spot = types["cpu_spot"]["node_config"]
    assert spot.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or {"preemptible": True} in spot.get(
        "scheduling", []
    )
    assert any("pip install" in c and "elasticfl" in c for c in raw["setup_commands"])
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    for cmds in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    assert "~/.ray/auth_token" in raw["file_mounts"]

    # The schema is really applied: a fractional custom resource is refused.
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["cpu_spot"]["resources"]["cloud"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


# -- KubeRay -------------------------------------------------------------------------
def _ray_start_resources(value: str) -> dict:
    """KubeRay passes rayStartParams.resources to the shell as '"{\\"cloud\\": 1}"'."""
    inner = json.loads(value) if value.startswith('"') else value
    return json.loads(inner)


def test_kuberay_raycluster_structure():
    doc = yaml.safe_load((CLUSTERS / "kuberay.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-spot", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = _ray_start_resources(group["rayStartParams"]["resources"])
        assert resources["cloud"] == 1
        for container in group["template"]["spec"]["containers"]:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert set(requests) <= set(limits)
            names = {e["name"] for e in container["env"]}
            assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names
    assert _ray_start_resources(groups["cpu-spot"]["rayStartParams"]["resources"]) == {"cloud": 1, "cloud_spot": 1}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"


# -- Slurm ---------------------------------------------------------------------------
SLURM_SCRIPTS = sorted((CLUSTERS / "slurm").glob("*.sbatch"))


def _ray_start_commands(script: str) -> list[list[str]]:
    """Every `ray start ...` command of a script, its continuation lines joined, as shell words."""
    joined = script.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for m in re.finditer(r"\bray start\b(.*?)(?:&\s*$|$)", line):
            commands.append(shlex.split("ray start" + m.group(1).rstrip(" &")))
    return commands


@pytest.fixture(scope="module")
def ray_start_flags():
    """Flags of `ray start` in the installed Ray: those `--help` shows, and the hidden ones."""
    out = subprocess.run([str(RAY_BIN), "start", "--help"], capture_output=True, text=True, timeout=60, check=True)
    shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))
    with warnings.catch_warnings():  # importing the CLI module imports Ray Serve, which warns
        warnings.simplefilter("ignore")
        from ray.scripts.scripts import start

    hidden = {o for p in start.params if getattr(p, "hidden", False) for o in p.opts if o.startswith("--")}
    return shown, hidden


def test_slurm_scripts_exist_and_parse():
    assert {p.name for p in SLURM_SCRIPTS} == {"head.sbatch", "workers.sbatch"}
    for path in SLURM_SCRIPTS:
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=10)
    assert (CLUSTERS / "slurm" / "README").read_text().count("RAY_AUTH_TOKEN") >= 1


def test_slurm_ray_start_flags_exist(ray_start_flags):
    shown, hidden = ray_start_flags
    used_hidden = set()
    for path in SLURM_SCRIPTS:
        commands = _ray_start_commands(path.read_text())
        assert commands, f"{path.name} runs no `ray start`"
        for words in commands:
            for word in words:
                flag = word.split("=", 1)[0]
                if not flag.startswith("--"):
                    continue
                assert flag in shown or flag in hidden, f"{path.name}: `ray start {flag}` does not exist in this Ray"
                if flag not in shown:
                    used_hidden.add(flag)
    # Ray 2.60 has --labels but hides it from --help; it is the only hidden flag we rely on.
    assert used_hidden <= {"--labels"}


def test_slurm_scripts_settings():
    head = (CLUSTERS / "slurm" / "head.sbatch").read_text()
    workers = (CLUSTERS / "slurm" / "workers.sbatch").read_text()
    assert re.search(r"exec ray start --head --port=\"?\$RAY_PORT\"?", head) and "RAY_PORT:-6379" in head
    assert "--block" in head and "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "disabled" not in head + workers

    (start,) = _ray_start_commands(workers)
    words = start[2:]
    assert words[words.index("--address") + 1] == "$RAY_HEAD"
    assert json.loads(words[words.index("--resources") + 1]) == {"hpc": 1}
    from ray._private.label_utils import parse_node_labels_string

    assert parse_node_labels_string(words[words.index("--labels") + 1]) == {"elasticfl.pool": "hpc"}
    assert "--block" in words

    # The signal comes LEAD s before the limit; drain + stop fit in it, and the stop grace
    # stays below Slurm's default KillWait (30 s).
    lead = int(re.search(r"^#SBATCH --signal=B:TERM@(\d+)$", workers, re.M).group(1))
    drain = int(re.search(r"DRAIN_S=\$\{DRAIN_S:-(\d+)\}", workers).group(1))
    grace = int(re.search(r"STOP_GRACE_S=\$\{STOP_GRACE_S:-(\d+)\}", workers).group(1))
    assert drain + grace < lead and grace < 30


# -- local fake cluster --------------------------------------------------------------
def test_local_cluster_description():
    from clusters.local import load_local_cluster

    spec = load_local_cluster()
    assert spec["head"]["num_cpus"] == 2
    pools = {name: args["resources"] for name, args in spec["workers"].items()}
    assert {"hpc": 1.0} in pools.values()
    assert any(r.get("cloud") == 1.0 for r in pools.values())
    for args in [spec["head"], *spec["workers"].values()]:
        assert set(args) == {"num_cpus", "resources", "labels"}


# -- the README's config snippet is a valid elasticfl config ---------------------------
def test_readme_executors_snippet_validates():
    text = (CLUSTERS / "README.md").read_text()
    block = re.search(r"<!-- clusters-test: executors -->\n```yaml\n(.*?)```", text, re.S).group(1)
    overrides = yaml.safe_load(block)
    config = RunConfig.from_yaml(ROOT / "examples" / "digits.yaml").with_overrides(**overrides)
    assert config.executors.resources == {"hpc": 1.0}
    assert "elasticfl run examples/digits.yaml --address auto --storage s3://bucket/runs" in text
