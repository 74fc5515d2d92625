"""A real Slurm on this machine, for tests: munged, slurmctld and slurmd from Debian's packages.

``SlurmCluster`` installs the packages when they are missing (apt-get, root only), writes a
slurm.conf into a temp dir of its own, starts the three daemons in the foreground as
children of this process, and on shutdown cancels every job, waits for an empty queue and
stops the daemons by the PIDs it started (stopping slurmd does not end running job steps).

Slurm's ports, 6817 and 6818, are fixed: one Slurm per machine, so tests that use this run
serially (tests/isolated). ``unavailable()`` says why Slurm cannot run here (not root, apt
failed, the ports are taken), for ``pytest.skip``.

No systemd: munged runs as the munge user through ``setpriv``; the daemons run with ``-D``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch"]
MUNGE_SOCKET = "/run/munge/munge.socket.2"
PORTS = (6817, 6818)

SLURM_CONF = """\
ClusterName=efltest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=10
MinJobAge=60
SlurmdTimeout=60
NodeName=localhost CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=localhost Default=NO MaxTime=1 State=UP
"""


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


def install() -> str | None:
    """Install Slurm and munge when missing; None when they are there, else why not."""
    if all(os.path.exists(b) for b in BINARIES):
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # stale package lists: update once, then try again
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not all(os.path.exists(b) for b in BINARIES):
        return f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}"
    return None


def unavailable() -> str | None:
    """Why a SlurmCluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "a test Slurm needs root (slurmd runs jobs as their users; munged as munge)"
    if shutil.which("apt-get") is None and not all(os.path.exists(b) for b in BINARIES):
        return "Slurm is not installed and there is no apt-get"
    reason = install()
    if reason:
        return reason
    taken = [p for p in PORTS if _port_taken(p)]
    if taken:
        return f"Slurm's ports {taken} are taken: another Slurm runs on this machine"
    return None


class SlurmCluster:
    """One Slurm node, ``localhost``, with ``cpus`` CPUs; partitions ``debug`` (default, no time
    limit) and ``short`` (MaxTime=1 min). ``env`` is what Slurm's clients need (SLURM_CONF)."""

    def __init__(self, cpus: int = 2):
        self.cpus = cpus
        self.dir: str | None = None
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen] = []  # munged (when started here), slurmctld, slurmd

    # -- start ---------------------------------------------------------------------------
    def _munge_works(self) -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munge(self) -> None:
        if os.path.exists(MUNGE_SOCKET) and self._munge_works():
            return  # someone's munged already serves this machine: use it, leave it
        munge = pwd.getpwnam("munge")
        os.makedirs("/run/munge", exist_ok=True)
        os.chown("/run/munge", munge.pw_uid, munge.pw_gid)
        os.chmod("/run/munge", 0o755)
        if not os.path.exists("/etc/munge/munge.key"):
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True, capture_output=True)
            os.chown("/etc/munge/munge.key", munge.pw_uid, munge.pw_gid)
        log = open(os.path.join(self.dir, "munged.out"), "wb")
        self._procs.append(
            subprocess.Popen(
                ["setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "/usr/sbin/munged", "-F",
                 "--force"],  # --force: a stale socket from an earlier, killed munged
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )  # fmt: skip
        self._wait(self._munge_works, 20, "munged answers")

    def start(self, timeout_s: float = 60) -> "SlurmCluster":
        self.dir = tempfile.mkdtemp(prefix="efl_slurm_", dir="/tmp")
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(self.dir, sub))
        conf = os.path.join(self.dir, "slurm.conf")
        Path(conf).write_text(SLURM_CONF.format(dir=self.dir, cpus=self.cpus))
        self.env = {"SLURM_CONF": conf}
        env = {**os.environ, **self.env}
        try:
            self._start_munge()
            for name, cmd in (
                ("slurmctld", ["/usr/sbin/slurmctld", "-D", "-c", "-f", conf]),  # -c: no saved state
                ("slurmd", ["/usr/sbin/slurmd", "-D", "-N", "localhost", "-f", conf]),
            ):
                out = open(os.path.join(self.dir, f"{name}.out"), "wb")
                self._procs.append(
                    subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                )
            self._wait(self._node_idle, timeout_s, "the Slurm node is idle")
        except BaseException:
            self.shutdown()
            raise
        return self

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) before {what}: see {self.dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not true after {timeout_s:.0f}s: {what} (logs in {self.dir})")
            time.sleep(0.3)

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "--noheader", "-n", "localhost", "-o", "%T", check=False)
        return out.strip().rstrip("*~#") == "idle"

    # -- use -----------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Jobs in the queue (finished ones excluded): id, name, state, reason."""
        out = self.run("squeue", "--noheader", "-o", "%i|%j|%T|%r", check=False)
        jobs = []
        for line in out.splitlines():
            if line.strip():
                job_id, name, state, reason = line.split("|", 3)
                jobs.append({"id": job_id, "name": name, "state": state, "reason": reason})
        return jobs

    def log(self, name: str = "slurmctld.log") -> str:
        try:
            return Path(self.dir, name).read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    # -- stop ----------------------------------------------------------------------------
    def cancel_all(self, timeout_s: float = 60) -> None:
        """Cancel every job and wait until the queue is empty (their processes gone)."""
        if not self._procs:
            return
        self.run("scancel", "--full", "--user=root", check=False)
        deadline = time.monotonic() + timeout_s
        while self.jobs() and time.monotonic() < deadline:
            time.sleep(0.5)
            self.run("scancel", "--full", "--signal=KILL", "--user=root", check=False)

    def shutdown(self) -> None:
        try:
            self.cancel_all()
        finally:
            for p in reversed(self._procs):  # slurmd, slurmctld, then munged (when started here)
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(5)
            self._procs = []
            if self.dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# -- a Ray head whose autoscaler gets its worker nodes from this Slurm ---------------------
from tests.isolated.autoscaling_cluster import _RAY, FakeAutoscalingCluster  # noqa: E402

SLURM_PROVIDER = "elasticfl.runtime.slurm.provider.SlurmNodeProvider"


class SlurmAutoscalingCluster(FakeAutoscalingCluster):
    """FakeAutoscalingCluster's isolated head (own temp dir, ports, token auth), with
    ``SlurmNodeProvider`` in place of the fake provider: worker nodes are Slurm jobs on
    ``slurm`` that run ``ray start --address <this head> --block``.

    ``worker_node_types`` are Ray's ``available_node_types`` entries; their ``node_config``
    gets this venv's ``ray``, the head's temp dir and free agent ports added.
    """

    def __init__(self, slurm: SlurmCluster, *args, pending_timeout_s: float = 120, **kwargs):
        super().__init__(*args, **kwargs)
        self.slurm = slurm
        self.pending_timeout_s = pending_timeout_s
        self.state_dir: str | None = None

    def _config(self, gcs_address: str):
        config = super()._config(gcs_address)
        self.state_dir = os.path.join(self.temp_dir, "slurm_provider")
        config["cluster_name"] = "efl" + os.path.basename(self.temp_dir).split("_")[-1].lower()
        config["provider"] = {
            "type": "external",
            "module": SLURM_PROVIDER,
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,  # every node of this test lives on this machine's one IP
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "env": dict(self.slurm.env),
            "pending_timeout_s": self.pending_timeout_s,
            "launch_backoff_s": 30,
            "state_dir": self.state_dir,
            "squeue_cache_s": 0.5,
        }
        for name, spec in config["available_node_types"].items():
            if name in self.worker_node_types:
                node_config = spec.setdefault("node_config", {})
                node_config.setdefault("ray", _RAY)
                node_config.setdefault("output", os.path.join(self.temp_dir, "slurm-%j.out"))
                node_config.setdefault("ray_start_args", [
                    f"--temp-dir={self.temp_dir}",  # the head's: shutdown() finds its processes
                    "--dashboard-agent-listen-port=0",  # 52365 would clash between two nodes
                ])  # fmt: skip
        return config

    def slurm_nodes(self):
        """Alive Ray nodes that a Slurm job started: {job id: node}."""
        from elasticfl.runtime.slurm.provider import JOB_LABEL

        return {n["Labels"][JOB_LABEL]: n for n in self.alive_nodes() if JOB_LABEL in n.get("Labels", {})}

    def monitor_log(self) -> str:
        text = []
        logs = Path(self.temp_dir or "/nonexistent", "session_latest", "logs")
        for name in ("monitor.log", "monitor.err", "monitor.out"):
            try:
                text.append((logs / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(text)

    def shutdown(self, timeout_s: float = 30) -> None:
        self.slurm.cancel_all()  # the jobs' Ray nodes first, through Slurm
        super().shutdown(timeout_s)
