"""A node provider for Ray's (v1) autoscaler that gets worker nodes from Slurm.

In the cluster config (see clusters/slurm/autoscaler.yaml)::

    provider:
      type: external
      module: elasticfl.runtime.slurm.provider.SlurmNodeProvider
      gcs_address: 10.0.0.5:6379      # the head's GCS, as the Slurm nodes reach it
      use_node_id_as_ip: true         # Ray node ids, not IPs, name nodes (two jobs may share a host)
      disable_node_updaters: true     # no SSH: the job starts Ray itself
      disable_launch_config_check: true
    available_node_types:
      slurm_cpu:
        resources: {CPU: 16, hpc: 1000}
        labels: {elasticfl.pool: hpc}
        node_config: {partition: batch, account: proj42, time: "04:00:00"}

One provider node is one Slurm job (its id is the job id) that runs one Ray worker node:
the batch script's last line ``exec``s ``ray start --address <gcs> --block``, so the signals
Slurm sends (``scancel``, preemption, the ``--signal`` warning before the time limit) reach
``ray start``, which drains the node for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S and stops.

- Creating a node submits a job (partition, account, time, gres, cpus, the node type's
  resources and labels); terminating it cancels the job; listing reads squeue.
- Node tags are kept in the job's comment, so they survive an autoscaler restart.
- A job that Slurm refuses (sbatch fails) or can never start (a pending reason such as
  PartitionConfig, PartitionTimeLimit; or pending longer than ``pending_timeout_s``) is
  reported: logged as an error, cancelled, recorded in ``failures`` (and in
  ``<state_dir>/failures.jsonl`` when set), and launches of that node type fail with a
  NodeLaunchException (shown by ``ray status``) for ``launch_backoff_s``.

node_config keys (all optional): partition, account, qos, time, gres, cpus_per_task, mem,
constraint, signal_lead_s (default 120), drain_timeout_s (default 10), sbatch_args (list),
setup (shell lines before ``exec ray start``), ray (the ``ray`` command), ray_start_args
(list), env (mapping, exported to the job).

With ``cloud_provider`` (another provider's config, e.g. ``{type: aws, region: ...}``) the
node types named in ``slurm_node_types`` are Slurm jobs and every other node type (the head
included) goes to that provider: cloud and Slurm worker types side by side in one cluster.

provider keys: gcs_address (default: the monitor's own --gcs-address), head_node_type
(default ray.head.default), job_name_prefix (default ray-<cluster_name>), pending_timeout_s
(default 600; 0: wait forever for reasons Slurm may yet satisfy), launch_backoff_s (300),
state_dir, env (for sbatch/squeue: SLURM_CONF...), squeue_cache_s (1).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
from typing import Any, Mapping

from ray.autoscaler.node_launch_exception import NodeLaunchException
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_SETTING_UP,
    STATUS_UNINITIALIZED,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from elasticfl.runtime.slurm.commands import Job, Slurm, SlurmError

logger = logging.getLogger(__name__)

HEAD_ID = "head"  # the provider's id for the head node, which is no Slurm job
JOB_LABEL = "elasticfl.runtime.slurm-job"  # Ray label on each node a job starts: the job id

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
RUNNING_STATES = {"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING"}
# Anything else (COMPLETING, COMPLETED, CANCELLED, FAILED, TIMEOUT, PREEMPTED, NODE_FAIL,
# BOOT_FAIL, DEADLINE, OUT_OF_MEMORY, SPECIAL_EXIT...) is a node that is gone or going.

# Pending reasons that no amount of waiting fixes: the job asks for more than the partition,
# its limits, the account or the QOS allow, or for nodes/features that do not exist.
_NEVER = re.compile(
    r"^(PartitionConfig|PartitionTimeLimit|PartitionNodeLimit|PartitionDown|PartitionInactive|BadConstraints"
    r"|InvalidAccount|InvalidQOS|AccountNotAllowed|QOSNotAllowed|DependencyNeverSatisfied|FrontEndDown"
    r"|.*PerJob.*|.*MaxWall.*)$"
)


def unschedulable(reason: str) -> bool:
    """Whether a pending job with this squeue reason can never start as submitted."""
    return bool(_NEVER.match(reason.strip()))


def _own_gcs_address() -> str | None:
    """The --gcs-address the autoscaler (monitor) process was started with."""
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--gcs-address="):
            return arg.split("=", 1)[1]
        if arg == "--gcs-address" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return None


def ray_start_command(
    gcs_address: str, resources: Mapping[str, float], labels: Mapping[str, str], node_config: Mapping[str, Any]
) -> str:
    """The job's last line: ``exec ray start --address ... --block`` with the node type's resources."""
    res = dict(resources)
    parts = [node_config.get("ray", "ray"), "start", f"--address={gcs_address}", "--block", "--disable-usage-stats"]
    if "CPU" in res:
        parts.append(f"--num-cpus={int(res.pop('CPU'))}")
    if "GPU" in res:
        parts.append(f"--num-gpus={int(res.pop('GPU'))}")
    if "memory" in res:
        parts.append(f"--memory={int(res.pop('memory'))}")
    if "object_store_memory" in res:
        parts.append(f"--object-store-memory={int(res.pop('object_store_memory'))}")
    if res:
        parts.append("--resources=" + json.dumps(res, separators=(",", ":")))
    quoted = [shlex.quote(str(p)) for p in parts]
    quoted += [shlex.quote(str(a)) for a in node_config.get("ray_start_args", [])]
    label_text = ",".join(f"{k}={v}" for k, v in labels.items())
    # The job id comes from Slurm at run time: a label names the Ray node's job.
    quoted.append('--labels="' + (label_text + "," if label_text else "") + JOB_LABEL + '=$SLURM_JOB_ID"')
    return "exec " + " ".join(quoted)


def job_script(
    gcs_address: str, resources: Mapping[str, float], labels: Mapping[str, str], node_config: Mapping[str, Any]
) -> str:
    """The batch script: setup lines, then ``exec ray start`` (Slurm's signals reach Ray)."""
    drain = node_config.get("drain_timeout_s", 10)
    lines = [
        "#!/bin/bash",
        "# Written by elasticfl.runtime.slurm.provider: one Ray worker node per job.",
        "set -e",
        # Slurm sends SIGTERM, then SIGKILL KillWait (default 30 s) later: Ray's drain on
        # SIGTERM (default 30 s) must end before that.
        f"export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${{RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-{drain}}}",
        "export RAY_AUTH_MODE=token  # the token: RAY_AUTH_TOKEN (exported), RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
        "export RAY_CLOUD_INSTANCE_ID=$SLURM_JOB_ID",
        *[str(line) for line in node_config.get("setup", [])],
        ray_start_command(gcs_address, resources, labels, node_config),
        "",
    ]
    return "\n".join(lines)


def sbatch_args(job_name: str, resources: Mapping[str, float], node_config: Mapping[str, Any], comment: str) -> list[str]:
    args = [f"--job-name={job_name}", "--nodes=1", "--ntasks=1", f"--comment={comment}"]
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("time", "time"),
                      ("mem", "mem"), ("constraint", "constraint")):  # fmt: skip
        if node_config.get(key) is not None:
            args.append(f"--{flag}={node_config[key]}")
    cpus = node_config.get("cpus_per_task", resources.get("CPU"))
    if cpus:
        args.append(f"--cpus-per-task={int(cpus)}")
    gres = node_config.get("gres")
    if gres is None and resources.get("GPU"):
        gres = f"gpu:{int(resources['GPU'])}"
    if gres:
        args.append(f"--gres={gres}")
    lead = node_config.get("signal_lead_s", 120)
    if lead:  # SIGTERM to the batch shell (ray start, after exec) this long before the time limit
        args.append(f"--signal=B:TERM@{int(lead)}")
    args.append(f"--output={node_config.get('output', '/dev/null')}")
    args += [str(a) for a in node_config.get("sbatch_args", [])]
    return args


class SlurmNodeProvider(NodeProvider):
    """Ray autoscaler nodes as Slurm jobs: see the module's docstring."""

    def __init__(self, provider_config: dict[str, Any], cluster_name: str, slurm: Slurm | None = None, gcs=None):
        super().__init__(provider_config, cluster_name)
        self.lock = threading.RLock()
        cfg = provider_config
        self.slurm = slurm or Slurm(env=cfg.get("env"))
        self.gcs_address = cfg.get("gcs_address") or _own_gcs_address()
        self.head_node_type = cfg.get("head_node_type", "ray.head.default")
        self.prefix = cfg.get("job_name_prefix") or f"ray-{cluster_name}"
        self.use_node_id = bool(cfg.get("use_node_id_as_ip", False))
        self.pending_timeout_s = float(cfg.get("pending_timeout_s", 600))
        self.backoff_s = float(cfg.get("launch_backoff_s", 300))
        self.cache_s = float(cfg.get("squeue_cache_s", 1.0))
        self.state_dir = os.path.expanduser(cfg["state_dir"]) if cfg.get("state_dir") else None
        self._gcs = gcs  # a GcsClient; made on first use
        self._jobs: dict[str, Job] = {}  # job id -> its squeue line (this cluster's jobs)
        self._tags: dict[str, dict[str, str]] = {}  # job id -> tags (from the comment, then set_node_tags)
        self._first_seen: dict[str, float] = {}  # job id -> when this provider first saw it pending
        self._ray_nodes: dict[str, tuple[str, str]] = {}  # job id -> (Ray node id hex, node ip)
        self._head: tuple[str, str] | None = None
        self._joined: set[str] = set()  # jobs whose Ray node has been seen alive
        self._refreshed = 0.0
        self.failures: list[dict[str, Any]] = []  # jobs reported as never starting
        self._blocked: dict[str, tuple[float, str]] = {}  # node type -> (until, why)
        # Cloud node types beside the Slurm ones: another provider (aws, gcp...) for the node
        # types not in slurm_node_types; it owns the head then.
        self.cloud: NodeProvider | None = None
        self.slurm_types = set(cfg.get("slurm_node_types") or [])
        if cfg.get("cloud_provider"):
            from ray.autoscaler._private.providers import _get_node_provider

            self.cloud = _get_node_provider(cfg["cloud_provider"], cluster_name)

    def _is_cloud(self, node_id: str) -> bool:
        with self.lock:
            return self.cloud is not None and node_id not in self._jobs and node_id not in self._tags

    # -- reading Slurm and Ray ------------------------------------------------------------
    def _mine(self, job: Job) -> bool:
        return job.name.startswith(self.prefix + "-")

    def _refresh(self, force: bool = False) -> None:
        with self.lock:
            if not force and time.monotonic() - self._refreshed < self.cache_s:
                return
            try:
                jobs = {j.id: j for j in self.slurm.queue() if self._mine(j)}
            except SlurmError as exc:
                logger.error("SlurmNodeProvider: squeue failed, keeping the last known jobs: %s", exc)
                return
            self._jobs = jobs
            for job_id, job in jobs.items():
                if job_id not in self._tags:
                    self._tags[job_id] = self._tags_from_comment(job)
            for gone in set(self._tags) - set(jobs):
                self._tags.pop(gone, None)
                self._first_seen.pop(gone, None)
                self._joined.discard(gone)
            self._read_ray_nodes()
            self._refreshed = time.monotonic()
            self._check_pending()

    def _tags_from_comment(self, job: Job) -> dict[str, str]:
        try:
            tags = json.loads(job.comment) if job.comment else {}
        except ValueError:
            tags = {}
        if not isinstance(tags, dict):
            tags = {}
        tags.setdefault(TAG_RAY_NODE_KIND, NODE_KIND_WORKER)
        tags.setdefault(TAG_RAY_NODE_NAME, f"{self.prefix}-{job.id}")
        if TAG_RAY_USER_NODE_TYPE not in tags:  # the job name ends with the node type
            tags[TAG_RAY_USER_NODE_TYPE] = job.name[len(self.prefix) + 1 :]
        return {str(k): str(v) for k, v in tags.items()}

    def _client(self):
        if self._gcs is None and self.gcs_address:
            from ray._raylet import GcsClient

            self._gcs = GcsClient(address=self.gcs_address)
        return self._gcs

    def _read_ray_nodes(self) -> None:
        """Which alive Ray node each job started (its label), and the head."""
        try:
            client = self._client()
            if client is None:
                return
            from ray.core.generated import gcs_pb2

            infos = client.get_all_node_info(timeout=10)
        except Exception as exc:  # the GCS restarts, or is slow: keep what we knew
            logger.warning("SlurmNodeProvider: cannot read Ray's nodes: %s", exc)
            return
        nodes: dict[str, tuple[str, str]] = {}
        for node_id, info in infos.items():
            if info.state != gcs_pb2.GcsNodeInfo.ALIVE:
                continue
            entry = (node_id.hex(), info.node_manager_address)
            if info.is_head_node:
                self._head = entry
                continue
            job_id = dict(info.labels).get(JOB_LABEL) or info.instance_id
            if job_id:
                nodes[job_id] = entry
        self._ray_nodes = nodes
        self._joined |= set(nodes) & set(self._jobs)

    def _check_pending(self) -> None:
        """Report and cancel pending jobs that Slurm will never start (or not in time)."""
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.state not in PENDING_STATES:
                continue
            first = self._first_seen.setdefault(job.id, now)
            waited = now - first
            if unschedulable(job.reason):
                why = f"Slurm cannot start it: pending reason {job.reason}"
            elif self.pending_timeout_s > 0 and waited > self.pending_timeout_s:
                why = f"still pending after {waited:.0f}s (reason {job.reason}; pending_timeout_s={self.pending_timeout_s:.0f})"
            else:
                continue
            node_type = self._tags.get(job.id, {}).get(TAG_RAY_USER_NODE_TYPE, "?")
            self._report(job.id, node_type, why)
            try:
                self.slurm.cancel([job.id])
            except SlurmError as exc:
                logger.error("SlurmNodeProvider: scancel %s failed: %s", job.id, exc)
            self._jobs.pop(job.id, None)
            self._tags.pop(job.id, None)

    def _report(self, job_id: str | None, node_type: str, why: str) -> None:
        record = {"time": time.time(), "job_id": job_id, "node_type": node_type, "reason": why}
        self.failures.append(record)
        self._blocked[node_type] = (time.monotonic() + self.backoff_s, why)
        logger.error(
            "SlurmNodeProvider: node type %s, job %s: %s. Cancelled; no new %s jobs for %.0fs. "
            "Fix the node type's node_config (partition, time, cpus, gres, account) or the demand.",
            node_type, job_id, why, node_type, self.backoff_s,
        )  # fmt: skip
        if self.state_dir:
            try:
                os.makedirs(self.state_dir, exist_ok=True)
                with open(os.path.join(self.state_dir, "failures.jsonl"), "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as exc:
                logger.warning("SlurmNodeProvider: cannot write %s: %s", self.state_dir, exc)

    # -- NodeProvider ---------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        self._refresh()
        cloud = self.cloud.non_terminated_nodes(tag_filters) if self.cloud is not None else []
        with self.lock:
            ids = ([] if self.cloud is not None else [HEAD_ID]) + [j for j, job in self._jobs.items() if job.state in PENDING_STATES | RUNNING_STATES]
            return cloud + [n for n in ids if all(self.node_tags(n).get(k) == v for k, v in tag_filters.items())]

    def is_running(self, node_id: str) -> bool:
        if self._is_cloud(node_id):
            return self.cloud.is_running(node_id)
        with self.lock:
            return node_id == HEAD_ID or (node_id in self._jobs and self._jobs[node_id].state in RUNNING_STATES)

    def is_terminated(self, node_id: str) -> bool:
        if self._is_cloud(node_id):
            return self.cloud.is_terminated(node_id)
        with self.lock:
            if node_id == HEAD_ID:
                return False
            job = self._jobs.get(node_id)
            return job is None or job.state not in PENDING_STATES | RUNNING_STATES

    def node_tags(self, node_id: str) -> dict[str, str]:
        if self._is_cloud(node_id):
            return self.cloud.node_tags(node_id)
        with self.lock:
            if node_id == HEAD_ID:
                return {
                    TAG_RAY_NODE_KIND: NODE_KIND_HEAD,
                    TAG_RAY_USER_NODE_TYPE: self.head_node_type,
                    TAG_RAY_NODE_NAME: HEAD_ID,
                    TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                }
            tags = dict(self._tags.get(node_id, {}))
            # Up to date once its Ray node joined (and from then on: a node that vanishes from
            # Ray while its job runs misses heartbeats, and the autoscaler ends it). Before,
            # pending or starting: the autoscaler counts it as launching and does not time it out.
            job = self._jobs.get(node_id)
            if node_id in self._joined:
                tags[TAG_RAY_NODE_STATUS] = STATUS_UP_TO_DATE
            elif job is not None and job.state in RUNNING_STATES:
                tags[TAG_RAY_NODE_STATUS] = STATUS_SETTING_UP
            else:
                tags[TAG_RAY_NODE_STATUS] = STATUS_UNINITIALIZED
            return tags

    def _ip(self, node_id: str) -> str:
        with self.lock:
            entry = self._head if node_id == HEAD_ID else self._ray_nodes.get(node_id)
            if entry is None and node_id != HEAD_ID:
                self._read_ray_nodes()
                entry = self._ray_nodes.get(node_id)
            if entry is not None:
                return entry[0] if self.use_node_id else entry[1]
            if node_id == HEAD_ID:
                return (self.gcs_address or "").rsplit(":", 1)[0]
            job = self._jobs.get(node_id)
            if not self.use_node_id and job is not None and job.nodes and job.state in RUNNING_STATES:
                try:
                    return socket.gethostbyname(job.nodes.split(",")[0].split("[")[0])
                except OSError:
                    pass
            return f"slurm-job-{node_id}"  # not in Ray yet: a name no Ray node has

    def internal_ip(self, node_id: str) -> str:
        return self.cloud.internal_ip(node_id) if self._is_cloud(node_id) else self._ip(node_id)

    def external_ip(self, node_id: str) -> str:
        return self.cloud.external_ip(node_id) if self._is_cloud(node_id) else self._ip(node_id)

    def set_node_tags(self, node_id: str, tags: dict[str, str]) -> None:
        if self._is_cloud(node_id):
            return self.cloud.set_node_tags(node_id, tags)
        if node_id == HEAD_ID:
            return
        with self.lock:
            merged = {**self._tags.get(node_id, {}), **tags}
            self._tags[node_id] = merged
        stored = {k: v for k, v in merged.items() if k != TAG_RAY_NODE_STATUS}
        try:
            self.slurm.set_comment(node_id, json.dumps(stored, separators=(",", ":")))
        except SlurmError as exc:  # the tags still hold in memory until the autoscaler restarts
            logger.warning("SlurmNodeProvider: cannot store tags of job %s in its comment: %s", node_id, exc)

    def create_node(self, node_config: dict[str, Any], tags: dict[str, str], count: int) -> dict[str, Any]:
        return self.create_node_with_resources_and_labels(node_config, tags, count, {}, {})

    def create_node_with_resources_and_labels(
        self,
        node_config: dict[str, Any],
        tags: dict[str, str],
        count: int,
        resources: dict[str, float],
        labels: dict[str, str],
    ) -> dict[str, Any]:
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE, "worker")
        if self.cloud is not None and node_type not in self.slurm_types:
            return self.cloud.create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
        blocked = self._blocked.get(node_type)
        if blocked and time.monotonic() < blocked[0]:
            raise NodeLaunchException("SlurmUnschedulable", f"{node_type}: {blocked[1]}", None)
        if not self.gcs_address:
            raise NodeLaunchException("SlurmConfig", "provider.gcs_address is not set", None)
        all_tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, **tags}
        stored = {k: v for k, v in all_tags.items() if k != TAG_RAY_NODE_STATUS}
        comment = json.dumps(stored, separators=(",", ":"))
        script = job_script(self.gcs_address, resources, labels, node_config)
        args = sbatch_args(f"{self.prefix}-{node_type}", resources, node_config, comment)
        env = {str(k): str(v) for k, v in (node_config.get("env") or {}).items()}
        created: dict[str, Any] = {}
        for _ in range(count):
            try:
                job_id = self.slurm.submit(script, args, env=env)
            except SlurmError as exc:
                self._report(None, node_type, f"sbatch refused the job: {exc.stderr}")
                raise NodeLaunchException("SlurmSubmitFailed", f"{node_type}: {exc.stderr}", sys.exc_info()) from exc
            logger.info("SlurmNodeProvider: submitted job %s for a %s node", job_id, node_type)
            with self.lock:
                self._tags[job_id] = {**all_tags, TAG_RAY_NODE_NAME: all_tags.get(TAG_RAY_NODE_NAME, f"{self.prefix}-{job_id}")}
                self._jobs[job_id] = Job(job_id, "PENDING", "Submitted", "", f"{self.prefix}-{node_type}", comment)
                self._first_seen[job_id] = time.monotonic()
            created[job_id] = {"job_id": job_id}
        return created

    def terminate_node(self, node_id: str) -> dict[str, Any] | None:
        return self.terminate_nodes([node_id])

    def terminate_nodes(self, node_ids: list[str]) -> dict[str, Any] | None:
        cloud = [n for n in node_ids if self._is_cloud(n)]
        if cloud:
            self.cloud.terminate_nodes(cloud)
        jobs = [n for n in node_ids if n != HEAD_ID and n not in cloud]
        if HEAD_ID in node_ids:
            logger.warning("SlurmNodeProvider: the head is no Slurm job; not terminating it")
        if not jobs:
            return None
        logger.info("SlurmNodeProvider: cancelling job(s) %s", ", ".join(jobs))
        try:
            self.slurm.cancel(jobs)
        except SlurmError as exc:
            logger.error("SlurmNodeProvider: scancel %s failed: %s", " ".join(jobs), exc)
            raise
        with self.lock:
            for job_id in jobs:
                self._jobs.pop(job_id, None)
                self._tags.pop(job_id, None)
        return {j: {} for j in jobs}

    def get_command_runner(self, *args, **kwargs):
        # The cloud's nodes (the head too) are reached its way: SSH, its docker settings.
        if self.cloud is not None:
            return self.cloud.get_command_runner(*args, **kwargs)
        return super().get_command_runner(*args, **kwargs)

    def prepare_for_head_node(self, cluster_config: dict[str, Any]) -> dict[str, Any]:
        return self.cloud.prepare_for_head_node(cluster_config) if self.cloud is not None else cluster_config

    @staticmethod
    def bootstrap_config(cluster_config: dict[str, Any]) -> dict[str, Any]:
        return cluster_config
