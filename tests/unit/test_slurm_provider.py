"""SlurmNodeProvider against recorded Slurm outputs: no Slurm, no Ray cluster."""

from __future__ import annotations

import json
import subprocess

import pytest
from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.tags import TAG_RAY_NODE_KIND, TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE

from elasticfl.runtime.slurm.commands import Job, Slurm
from elasticfl.runtime.slurm.provider import HEAD_ID, JOB_LABEL, SlurmNodeProvider, job_script, sbatch_args, unschedulable


class FakeSlurmCli:
    """Stands in for subprocess.run: records the commands, answers from a queue of jobs."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.envs: list[dict] = []
        self.lines: dict[str, str] = {}  # job id -> squeue line
        self.next_id = 100
        self.sbatch_error: str | None = None

    def __call__(self, cmd, input=None, env=None, **kwargs):
        self.calls.append(cmd)
        self.inputs.append(input)
        self.envs.append(env)
        out, err, rc = "", "", 0
        if cmd[0] == "sbatch":
            if self.sbatch_error:
                err, rc = self.sbatch_error, 1
            else:
                job_id = str(self.next_id)
                self.next_id += 1
                name = next(a.split("=", 1)[1] for a in cmd if a.startswith("--job-name="))
                comment = next(a.split("=", 1)[1] for a in cmd if a.startswith("--comment="))
                self.lines[job_id] = f"{job_id}|PENDING|None||{name}|{comment}"
                out = f"{job_id}\n"
        elif cmd[0] == "squeue":
            out = "".join(line + "\n" for line in self.lines.values())
        elif cmd[0] == "scancel":
            for job_id in cmd[1:]:
                self.lines.pop(job_id, None)
        elif cmd[0] == "scontrol":
            job_id = cmd[2].split("=", 1)[1]
            comment = cmd[3].split("=", 1)[1]
            parts = self.lines[job_id].split("|", 5)
            self.lines[job_id] = "|".join(parts[:5] + [comment])
        return subprocess.CompletedProcess(cmd, rc, out, err)

    def set_state(self, job_id: str, state: str, reason: str = "None", nodes: str = "") -> None:
        parts = self.lines[job_id].split("|", 5)
        self.lines[job_id] = "|".join([parts[0], state, reason, nodes, parts[4], parts[5]])


class FakeGcs:
    def __init__(self):
        self.nodes = {}

    def get_all_node_info(self, timeout=None):
        return self.nodes


class _Info:
    def __init__(self, job_id, ip="10.0.0.7", head=False):
        from ray.core.generated import gcs_pb2

        self.state = gcs_pb2.GcsNodeInfo.ALIVE
        self.labels = {JOB_LABEL: job_id} if job_id else {}
        self.instance_id = ""
        self.is_head_node = head
        self.node_manager_address = ip


class _NodeId:
    def __init__(self, h):
        self.h = h

    def hex(self):
        return self.h


def _provider(cli, gcs=None, **cfg):
    config = {"gcs_address": "10.0.0.1:6379", "use_node_id_as_ip": True, "squeue_cache_s": 0, **cfg}
    return SlurmNodeProvider(config, "c1", slurm=Slurm(runner=cli, user="alice"), gcs=gcs or FakeGcs())


HPC_TAGS = {TAG_RAY_USER_NODE_TYPE: "hpc", TAG_RAY_NODE_KIND: "worker"}


def test_job_parse_and_the_squeue_command():
    job = Job.parse("42|PENDING|Resources||ray-c1-hpc|{\"a\":\"b|c\"}")
    assert (job.id, job.state, job.reason, job.name, json.loads(job.comment)) == (
        "42", "PENDING", "Resources", "ray-c1-hpc", {"a": "b|c"})  # fmt: skip
    assert Job.parse("7|RUNNING|None|n01|x|(null)").comment == ""
    cli = FakeSlurmCli()
    Slurm(runner=cli, user="alice").queue()
    assert cli.calls[0][:3] == ["squeue", "--noheader", "--user=alice"]


def test_create_submits_a_job_whose_last_line_execs_ray_start_and_lists_it():
    cli = FakeSlurmCli()
    p = _provider(cli)
    node_config = {"partition": "gpu", "account": "proj", "time": "02:00:00", "env": {"X": "1"}}
    p.create_node_with_resources_and_labels(node_config, HPC_TAGS, 1, {"CPU": 8, "GPU": 2, "hpc": 1000},
                                            {"elasticfl.pool": "hpc"})  # fmt: skip
    sbatch = cli.calls[0]
    for arg in ("--partition=gpu", "--account=proj", "--time=02:00:00", "--gres=gpu:2", "--cpus-per-task=8",
                "--job-name=ray-c1-hpc", "--signal=B:TERM@120", "--export=ALL"):  # fmt: skip
        assert arg in sbatch
    script = cli.inputs[0].strip().splitlines()
    assert script[-1].startswith("exec ray start --address=10.0.0.1:6379 --block")
    assert "--num-gpus=2" in script[-1] and "--num-cpus=8" in script[-1] and '"hpc":1000' in script[-1]
    assert f"elasticfl.pool=hpc,{JOB_LABEL}=$SLURM_JOB_ID" in script[-1]
    assert cli.envs[0]["X"] == "1"  # the job's environment goes through sbatch's, not its argv
    assert not any("RAY_AUTH_TOKEN" in a for a in sbatch)
    assert p.non_terminated_nodes({}) == [HEAD_ID, "100"]
    assert p.non_terminated_nodes({TAG_RAY_USER_NODE_TYPE: "hpc"}) == ["100"]
    assert p.node_tags("100")[TAG_RAY_NODE_STATUS] == "uninitialized"
    assert not p.is_running("100") and not p.is_terminated("100")


def test_states_map_to_ray_and_the_node_id_comes_from_its_label():
    cli, gcs = FakeSlurmCli(), FakeGcs()
    p = _provider(cli, gcs)
    p.create_node_with_resources_and_labels({}, HPC_TAGS, 1, {"CPU": 1, "hpc": 1000}, {})
    cli.set_state("100", "RUNNING", nodes="n01")
    p.non_terminated_nodes({})
    assert p.is_running("100") and p.node_tags("100")[TAG_RAY_NODE_STATUS] == "setting-up"
    assert p.internal_ip("100") == "slurm-job-100"  # not in Ray yet
    gcs.nodes = {_NodeId("ab" * 28): _Info("100"), _NodeId("cd" * 28): _Info(None, head=True)}
    p.non_terminated_nodes({})
    assert p.node_tags("100")[TAG_RAY_NODE_STATUS] == "up-to-date"
    assert p.internal_ip("100") == "ab" * 28 and p.internal_ip(HEAD_ID) == "cd" * 28
    cli.set_state("100", "COMPLETING", nodes="n01")
    assert p.non_terminated_nodes({}) == [HEAD_ID] and p.is_terminated("100")


def test_tags_survive_a_restart_of_the_autoscaler():
    cli = FakeSlurmCli()
    p = _provider(cli)
    p.create_node_with_resources_and_labels({}, {**HPC_TAGS, "ray-launch-config": "abc"}, 1, {"CPU": 1}, {})
    p.set_node_tags("100", {"ray-node-name": "n-100", "extra": "x"})
    assert cli.calls[-1][:3] == ["scontrol", "update", "JobId=100"]
    again = _provider(cli)  # a new autoscaler process: only Slurm remembers
    tags = again.node_tags("100") if again.non_terminated_nodes({}) else {}
    assert tags["ray-launch-config"] == "abc" and tags["extra"] == "x" and tags["ray-node-name"] == "n-100"
    assert tags[TAG_RAY_USER_NODE_TYPE] == "hpc" and tags[TAG_RAY_NODE_KIND] == "worker"


def test_terminate_cancels_the_job_and_never_the_head():
    cli = FakeSlurmCli()
    p = _provider(cli)
    p.create_node_with_resources_and_labels({}, HPC_TAGS, 2, {"CPU": 1}, {})
    p.terminate_nodes([HEAD_ID, "100"])
    assert ["scancel", "100"] in cli.calls
    assert p.non_terminated_nodes({}) == [HEAD_ID, "101"]


def test_other_clusters_and_users_jobs_are_not_ours():
    cli = FakeSlurmCli()
    cli.lines["5"] = "5|RUNNING|None|n02|ray-other-hpc|"
    cli.lines["6"] = "6|RUNNING|None|n02|my-analysis|"
    assert _provider(cli).non_terminated_nodes({}) == [HEAD_ID]


@pytest.mark.parametrize("reason", ["PartitionConfig", "PartitionTimeLimit", "BadConstraints", "QOSMaxCpuPerJobLimit"])
def test_a_job_that_can_never_start_is_reported_cancelled_and_blocks_its_type(reason, tmp_path):
    assert unschedulable(reason)
    cli = FakeSlurmCli()
    p = _provider(cli, state_dir=str(tmp_path), launch_backoff_s=60)
    p.create_node_with_resources_and_labels({}, HPC_TAGS, 1, {"CPU": 64}, {})
    cli.set_state("100", "PENDING", reason=reason)
    assert p.non_terminated_nodes({}) == [HEAD_ID]
    assert ["scancel", "100"] in cli.calls
    assert p.failures[0]["job_id"] == "100" and reason in p.failures[0]["reason"]
    assert reason in (tmp_path / "failures.jsonl").read_text()
    with pytest.raises(NodeLaunchException, match=reason):  # no new job for a while
        p.create_node_with_resources_and_labels({}, HPC_TAGS, 1, {"CPU": 64}, {})


def test_waiting_for_resources_is_fine_until_the_pending_timeout():
    assert not unschedulable("Resources") and not unschedulable("Priority")
    cli = FakeSlurmCli()
    p = _provider(cli, pending_timeout_s=0.2)
    p.create_node_with_resources_and_labels({}, HPC_TAGS, 1, {"CPU": 1}, {})
    cli.set_state("100", "PENDING", reason="Resources")
    assert p.non_terminated_nodes({}) == [HEAD_ID, "100"]
    import time

    time.sleep(0.3)
    assert p.non_terminated_nodes({}) == [HEAD_ID]
    assert "still pending" in p.failures[0]["reason"]


def test_sbatch_refusing_the_job_is_a_launch_error_with_slurms_words():
    cli = FakeSlurmCli()
    cli.sbatch_error = "sbatch: error: Batch job submission failed: Invalid account or account/partition combination"
    p = _provider(cli)
    with pytest.raises(NodeLaunchException, match="Invalid account"):
        p.create_node_with_resources_and_labels({"account": "nope"}, HPC_TAGS, 1, {"CPU": 1}, {})
    assert "Invalid account" in p.failures[0]["reason"]


def test_script_and_args_helpers():
    script = job_script("h:1", {"CPU": 2}, {}, {"setup": ["module load python"], "drain_timeout_s": 7})
    lines = script.strip().splitlines()
    assert lines[-2] == "module load python" and lines[-1].startswith("exec ")
    assert "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-7" in script
    args = sbatch_args("ray-c-t", {"CPU": 2}, {"signal_lead_s": 0, "sbatch_args": ["--exclusive"]}, "{}")
    assert "--exclusive" in args and not any(a.startswith("--signal") for a in args)


def test_cloud_node_types_go_to_the_cloud_provider_beside_slurm(monkeypatch):
    from ray.autoscaler._private import providers

    class Cloud:
        def __init__(self, cfg, name):
            self.nodes = {"i-head": {TAG_RAY_NODE_KIND: "head", TAG_RAY_USER_NODE_TYPE: "head"}}
            self.terminated = []

        def non_terminated_nodes(self, f):
            return [n for n, t in self.nodes.items() if all(t.get(k) == v for k, v in f.items())]

        def node_tags(self, n):
            return self.nodes[n]

        def internal_ip(self, n):
            return "10.1.0.9"

        def create_node_with_resources_and_labels(self, nc, tags, count, res, labels):
            self.nodes["i-new"] = dict(tags)

        def terminate_nodes(self, ids):
            self.terminated += ids

    monkeypatch.setattr(providers, "_get_node_provider", lambda cfg, name: Cloud(cfg, name))
    cli = FakeSlurmCli()
    p = _provider(cli, cloud_provider={"type": "aws"}, slurm_node_types=["hpc"], use_node_id_as_ip=False)
    p.create_node_with_resources_and_labels({}, {TAG_RAY_USER_NODE_TYPE: "cpu_spot"}, 1, {"CPU": 8}, {})
    p.create_node_with_resources_and_labels({}, HPC_TAGS, 1, {"CPU": 8}, {})
    assert [c[0] for c in cli.calls].count("sbatch") == 1
    assert p.non_terminated_nodes({}) == ["i-head", "i-new", "100"]
    assert p.internal_ip("i-new") == "10.1.0.9" and p.node_tags("i-head")[TAG_RAY_NODE_KIND] == "head"
    p.terminate_nodes(["i-new", "100"])
    assert p.cloud.terminated == ["i-new"] and ["scancel", "100"] in cli.calls
