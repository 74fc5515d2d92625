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
# Every node advertises 1000 of its pool's custom resource: a marker, so an executor asking
# for 1 never limits how many fit on a node (its CPUs and GPUs do).
MARKER = 1000


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
        assert node_type["resources"]["cloud"] == MARKER
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= raw["max_workers"]
    assert types[gpu_type]["resources"]["GPU"] == 1
    # The autoscaler knows only declared resources: executors asking accelerator_type need it here.
    assert any(r.startswith("accelerator_type:") for r in types[gpu_type]["resources"])
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


def test_aws_commented_security_group_passes_rays_schema():
    """The HPC-network rule that clusters/README.md asks to uncomment is valid once uncommented."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (CLUSTERS / "aws.yaml").read_text()
    block = re.search(r"^  # security_group:\n((?:  #   .*\n)+)", text, re.M)
    assert block, "aws.yaml lost its commented provider.security_group example"
    snippet = "security_group:\n" + "".join(line[4:] + "\n" for line in block.group(1).splitlines())
    raw = yaml.safe_load(text)
    raw["provider"].update(yaml.safe_load(snippet))
    assert raw["provider"]["security_group"]["IpPermissions"][0]["IpProtocol"] == "-1"
    validate_config(prepare_config(raw))


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
        assert resources["cloud"] == MARKER
        # Newer KubeRay rejects rayStartParams.labels (it has a group-level `labels:` field).
        assert "labels" not in group["rayStartParams"]
        for container in group["template"]["spec"]["containers"]:
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert set(requests) <= set(limits)
            names = {e["name"] for e in container["env"]}
            assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= names
    assert _ray_start_resources(groups["cpu-spot"]["rayStartParams"]["resources"]) == {
        "cloud": MARKER,
        "cloud_spot": MARKER,
    }
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


def _sbatch_default(script: str, name: str) -> int:
    """The default of a `NAME=${NAME:-123}` assignment in a script."""
    return int(re.search(rf"{name}=\$\{{{name}:-(\d+)\}}", script).group(1))


def test_slurm_scripts_settings():
    head = (CLUSTERS / "slurm" / "head.sbatch").read_text()
    workers = (CLUSTERS / "slurm" / "workers.sbatch").read_text()
    assert re.search(r"exec ray start --head --port=\"?\$RAY_PORT\"?", head) and "RAY_PORT:-6379" in head
    assert "--block" in head and "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "disabled" not in head + workers

    (start,) = _ray_start_commands(workers)
    words = start[2:]
    assert words[words.index("--address") + 1] == "$RAY_HEAD"
    assert json.loads(words[words.index("--resources") + 1]) == {"hpc": MARKER}
    from ray._private.label_utils import parse_node_labels_string

    assert parse_node_labels_string(words[words.index("--labels") + 1]) == {"elasticfl.pool": "hpc"}
    assert "--block" in words


def test_slurm_shutdown_fits_in_the_signal_lead_and_killwait():
    """workers.sbatch's timeline: signal LEAD s before the limit, DRAIN_S of drain, SIGTERM to
    `ray start`, at most STOP_GRACE_S until the script exits, then Slurm's KillWait (default
    30 s) until SIGKILL. Ray's own SIGTERM drain must end (plus a few seconds to stop its
    processes) before SIGKILL, also when Slurm signals `ray start` directly."""
    from ray._private import ray_constants

    kill_wait = 30  # Slurm's default
    workers = (CLUSTERS / "slurm" / "workers.sbatch").read_text()
    head = (CLUSTERS / "slurm" / "head.sbatch").read_text()
    lead = int(re.search(r"^#SBATCH --signal=B:TERM@(\d+)$", workers, re.M).group(1))
    assert int(re.search(r"^SIGNAL_LEAD_S=(\d+)$", workers, re.M).group(1)) == lead
    drain = _sbatch_default(workers, "DRAIN_S")
    grace = _sbatch_default(workers, "STOP_GRACE_S")
    assert drain + grace + kill_wait <= lead

    # The knob exists in this Ray, and its default (30 s) would not leave Ray time to stop.
    assert ray_constants.RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S + 5 > kill_wait
    for script in (workers, head):
        ray_drain = _sbatch_default(script, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S")
        assert "export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=" in script
        assert ray_drain + 5 <= kill_wait
    assert _sbatch_default(workers, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S") + 5 <= grace

    # SIGTERM reaches `ray start` through Slurm: srun turns a SIGTERM it receives into SIGKILL.
    code = "\n".join(line for line in workers.splitlines() if not line.lstrip().startswith("#"))
    assert 'scancel --signal=TERM "$SLURM_JOB_ID"' in code and "--full" not in code
    assert not re.search(r"kill -(TERM|15) \"?\$srun_pid", code)


def test_slurm_drain_node_command_exists_in_this_ray():
    """The trap's `ray drain-node` uses flags and a reason that this Ray's (hidden) command has."""
    with warnings.catch_warnings():  # importing the CLI module imports Ray Serve, which warns
        warnings.simplefilter("ignore")
        from ray.scripts.scripts import drain_node

    workers = (CLUSTERS / "slurm" / "workers.sbatch").read_text().replace("\\\n", " ")
    match = re.search(r"\bray drain-node\b(.*?)(?:\|\||$)", workers, re.M)
    assert match, "workers.sbatch runs no `ray drain-node`"
    words = shlex.split(match.group(1))
    flags = {o for p in drain_node.params for o in p.opts}
    for word in words:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in flags, f"`ray drain-node {word}` does not exist in this Ray"
    reason = next(p for p in drain_node.params if "--reason" in p.opts)
    assert words[words.index("--reason") + 1] == "DRAIN_NODE_REASON_PREEMPTION" in reason.type.choices
    assert "--deadline-remaining-seconds" in words


# -- local fake cluster --------------------------------------------------------------
def test_local_cluster_description():
    from clusters.local import load_local_cluster

    spec = load_local_cluster()
    assert spec["head"]["num_cpus"] == 2
    pools = {name: args["resources"] for name, args in spec["workers"].items()}
    assert {"hpc": float(MARKER)} in pools.values()
    assert any(r.get("cloud_spot") == MARKER for r in pools.values())
    for args in [spec["head"], *spec["workers"].values()]:
        assert set(args) == {"num_cpus", "resources", "labels"}


# -- the files agree: every pool a config asks for is a node type these files start ----
def _node_types() -> dict[str, dict]:
    """'file:type' -> {"resources", "labels", "autoscaled"} for every worker node type that
    clusters/ defines, as Ray would see the node (no CPU/GPU where the file does not fix them)."""
    from ray._private.label_utils import parse_node_labels_string

    types: dict[str, dict] = {}
    for name in ("aws.yaml", "gcp.yaml"):
        raw = yaml.safe_load((CLUSTERS / name).read_text())
        for type_name, spec in raw["available_node_types"].items():
            if type_name != raw["head_node_type"]:
                types[f"{name}:{type_name}"] = {
                    "resources": {k: float(v) for k, v in spec["resources"].items()},
                    "labels": dict(spec.get("labels") or {}),
                    "autoscaled": True,
                }
    doc = yaml.safe_load((CLUSTERS / "kuberay.yaml").read_text())
    for group in doc["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        resources = {k: float(v) for k, v in _ray_start_resources(group["rayStartParams"]["resources"]).items()}
        resources["CPU"] = float(limits["cpu"])
        resources["GPU"] = float(limits.get("nvidia.com/gpu", 0))
        types[f"kuberay.yaml:{group['groupName']}"] = {"resources": resources, "labels": {}, "autoscaled": True}
    (start,) = _ray_start_commands((CLUSTERS / "slurm" / "workers.sbatch").read_text())
    words = start[2:]
    types["slurm/workers.sbatch"] = {
        "resources": {k: float(v) for k, v in json.loads(words[words.index("--resources") + 1]).items()},
        "labels": parse_node_labels_string(words[words.index("--labels") + 1]),
        "autoscaled": False,  # Slurm jobs bring these nodes; CPUs and GPUs are the node's own
    }
    return types


def _bundle_fits(pool, node: dict) -> bool:
    """One executor's resource bundle (what the autoscaler sees) fits an empty node of this type."""
    from elasticfl.runtime._resources import resource_bundle

    have = node["resources"]
    for name, amount in resource_bundle(pool).items():
        if name in ("CPU", "GPU") and name not in have and not node["autoscaled"]:
            continue  # a Slurm node's own CPUs and GPUs: unknown here
        if have.get(name, 0.0) < amount:
            return False
    return True


def _holds(pool, node: dict) -> bool:
    """Ray can place the pool's executor on such a node: its bundle fits and its labels match."""
    return _bundle_fits(pool, node) and all(node["labels"].get(k) == v for k, v in pool.labels.items())


def _check_pools_are_advertised(config: RunConfig, where: str, *, autoscaled_cluster: bool) -> None:
    types = _node_types()
    for name, pool in config.pools.items():
        holders = [t for t, node in types.items() if _holds(pool, node)]
        assert holders, f"{where}: pool {name!r} ({pool.resources}, {pool.labels}) fits no node type in clusters/"
        for t in holders:
            node = types[t]
            for marker, amount in pool.resources.items():
                # The marker never limits executors per node below what the CPUs allow.
                per_node = node["resources"][marker] / amount
                by_cpu = node["resources"].get("CPU", 256) / pool.num_cpus if pool.num_cpus else 256
                assert per_node >= by_cpu, f"{where}: {t} advertises too little {marker!r} for pool {name!r}"
        if autoscaled_cluster:
            # Ray 2.60's (v1) autoscaler ignores label selectors: every node type it could start
            # for this pool's bundle must be one the executors can use.
            launched = {t for t, node in types.items() if node["autoscaled"] and _bundle_fits(pool, node)}
            assert launched <= set(holders), (
                f"{where}: for pool {name!r} the autoscaler could start {sorted(launched - set(holders))}, "
                "where its executors cannot run; mark the pool by a custom resource"
            )


def test_hybrid_example_pools_are_advertised_by_the_cluster_files():
    config = RunConfig.from_yaml(ROOT / "examples" / "hybrid.yaml")
    assert set(config.pools) == {"hpc", "cloud"} and config.pools["cloud"].spot
    assert config.client_pools()[0] == ("hpc",) and config.client_pools()[99] == ("cloud", "hpc")
    assert config.data.dataset == "digits" and config.data.num_clients == 100
    assert config.data.partition.name == "dirichlet"
    assert config.cohort.deadline_s and config.cohort.min_clients
    assert config.checkpoint.storage.startswith("s3://")
    _check_pools_are_advertised(config, "examples/hybrid.yaml", autoscaled_cluster=True)
    types = _node_types()
    assert any(_holds(config.pools["hpc"], types[t]) for t in types if t.startswith("slurm/"))
    assert all(not types[t]["autoscaled"] for t in types if _holds(config.pools["hpc"], types[t]))
    assert any(_holds(config.pools["cloud"], types[t]) for t in types if t.endswith("cpu_spot"))


def test_the_check_catches_labels_only_pools_and_unadvertised_resources():
    base = RunConfig.from_yaml(ROOT / "examples" / "digits.yaml")
    labels_only = base.with_overrides(pools={"hpc": {"labels": {"elasticfl.pool": "hpc"}}})
    _check_pools_are_advertised(labels_only, "labels", autoscaled_cluster=False)  # fine on a Slurm head
    with pytest.raises(AssertionError, match="autoscaler could start"):
        _check_pools_are_advertised(labels_only, "labels", autoscaled_cluster=True)
    with pytest.raises(AssertionError, match="fits no node type"):
        _check_pools_are_advertised(base.with_overrides(pools={"x": {"resources": {"site_b": 1}}}), "x",
                                    autoscaled_cluster=False)
    with pytest.raises(AssertionError, match="too little"):
        _check_pools_are_advertised(base.with_overrides(pools={"x": {"resources": {"cloud_spot": 500}}}), "x",
                                    autoscaled_cluster=False)


# -- clusters/README.md: its marked snippets are valid configs the clusters can hold ------
README = CLUSTERS / "README.md"
MARKED = re.compile(r"<!-- clusters-test: (.*?) -->\n(.*?)(?=\n\n|\Z)", re.S)


def _merged(base: dict, snippet: dict) -> dict:
    out = dict(base)
    for section, values in snippet.items():
        both_maps = isinstance(values, dict) and isinstance(out.get(section), dict)
        out[section] = {**out[section], **values} if both_maps else values
    return out


def _marked_blocks() -> list[tuple[str, str]]:
    return MARKED.findall(README.read_text())


def test_readme_marks_its_config_snippets():
    kinds = [kind for kind, _ in _marked_blocks()]
    assert kinds.count("part of examples/hybrid.yaml") == 1
    assert "on examples/digits.yaml" in kinds and "pools table" in kinds
    assert set(kinds) <= {"part of examples/hybrid.yaml", "on examples/digits.yaml", "pools table"}


def _table_rows(block: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in block.splitlines() if line.startswith("|")]
    return rows[2:]  # past the header and the |---| line


@pytest.mark.parametrize("index", range(len(MARKED.findall(README.read_text()))))
def test_readme_snippet_validates_and_fits_the_clusters(index):
    kind, block = _marked_blocks()[index]
    digits = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    if kind == "pools table":
        rows = _table_rows(block)
        assert len(rows) >= 5
        advertised = {name for node in _node_types().values() for name in node["resources"]}
        for node_type, advertises, entry in rows:
            for marker, amount in re.findall(r"`(\w+): (\d+)`", advertises):
                assert int(amount) == MARKER and marker in advertised, f"README pools table: {node_type}"
            pools = yaml.safe_load("{" + entry.strip("`") + "}")
            config = RunConfig.from_dict(_merged(digits, {"pools": pools}), source=f"README pools table: {node_type}")
            _check_pools_are_advertised(config, f"README pools table: {node_type}", autoscaled_cluster=True)
        return
    code = re.fullmatch(r"```yaml\n(.*?)```", block, re.S)
    assert code, f"the <!-- clusters-test: {kind} --> marker must sit right above a ```yaml block"
    snippet = yaml.safe_load(code.group(1))
    if kind == "part of examples/hybrid.yaml":
        hybrid = yaml.safe_load((ROOT / "examples" / "hybrid.yaml").read_text())
        for section, values in snippet.items():
            shown = {k: hybrid[section].get(k) for k in values} if isinstance(values, dict) else hybrid[section]
            assert shown == values, f"README's {section} differs from examples/hybrid.yaml"
        config = RunConfig.from_dict(_merged(hybrid, snippet), source="README hybrid snippet")
        _check_pools_are_advertised(config, "README hybrid snippet", autoscaled_cluster=True)
    else:
        config = RunConfig.from_dict(_merged(digits, snippet), source="README snippet")
        _check_pools_are_advertised(config, "README snippet", autoscaled_cluster=False)
    assert config.pools


def test_readme_points_at_files_that_exist():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (CLUSTERS / target).exists(), f"clusters/README.md links to missing {target}"
    for path in set(re.findall(r"\b((?:clusters|examples)/[\w./-]*\w)", text)):
        assert (ROOT / path).exists(), f"clusters/README.md names missing {path}"
    assert "elasticfl validate examples/hybrid.yaml" in text
