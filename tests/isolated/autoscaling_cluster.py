"""Ray's fake multi-node autoscaler as a test cluster that keeps to itself.

``ray.cluster_utils.AutoscalingCluster`` cannot be used as is with Ray 2.60: it reads
``fake_multi_node/example.yaml``, which the wheel does not ship, and it runs
``ray stop --force`` on start and shutdown, which ends every Ray process on the machine.
This harness writes the autoscaler config inline (provider ``external``, module
``FakeMultiNodeProvider``), starts the head on its own GCS port and ``--temp-dir``,
and on shutdown ends only its own processes (see ``pids``), the fake worker nodes' included.

Linux only (it reads /proc). Token authentication stays on: see ``_auth_env``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import ray

T = TypeVar("T")

PROVIDER_MODULE = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
_HEAD_TYPE = "ray.head.default"  # the provider's name for the head's node type
_MARKER = "EFL_FAKE_AUTOSCALING_CLUSTER"
_RAY = str(Path(sys.executable).with_name("ray"))  # the venv's `ray`, whatever PATH says


def wait_for(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.5, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not true after {timeout_s:.0f}s: {what or predicate}")
        time.sleep(interval_s)


def processes_naming(text: str) -> set[int]:
    """PIDs whose command line contains ``text`` (workers and agents that rename themselves, such
    as ray::IDLE, name nothing: see FakeAutoscalingCluster.pids for the full set)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.add(int(entry))
        except (OSError, ValueError):  # gone meanwhile, or not a process
            continue
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _auth_env() -> dict[str, str]:
    """Token auth for the head and for drivers in this process, never disabled.

    ``ray start`` turns token mode on only when a token file exists, and ``ray.init(address=X)``
    with an explicit address never turns it on by itself, so both get RAY_AUTH_MODE=token.
    The token is the one already configured (RAY_AUTH_TOKEN[_PATH], ~/.ray/auth_token), else
    a fresh one for this process: Ray's own file is left alone.
    """
    env = {"RAY_AUTH_MODE": "token"}
    configured = "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ
    if not configured and not (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


class FakeAutoscalingCluster:
    """A head node plus worker nodes that Ray's (v1) autoscaler adds and removes on demand.

    Worker nodes are processes on this machine, started by ``FakeMultiNodeProvider``
    inside the head's autoscaler (monitor) process. Use as a context manager, or call
    ``start()`` and ``shutdown()``.
    """

    def __init__(
        self,
        head_resources: dict[str, float],
        worker_node_types: dict[str, dict[str, Any]],
        idle_timeout_minutes: float = 0.1,
        upscaling_speed: float = 1.0,
    ):
        self.head_resources = dict(head_resources)
        self.worker_node_types = worker_node_types
        self.idle_timeout_minutes = idle_timeout_minutes
        self.upscaling_speed = upscaling_speed
        self.temp_dir: str | None = None
        self.address: str | None = None  # "ip:port" of this cluster's GCS, for ray.init(address=...)
        self._port: int | None = None

    def _config(self, gcs_address: str) -> dict[str, Any]:
        node_types = {name: dict(spec) for name, spec in self.worker_node_types.items()}
        node_types[_HEAD_TYPE] = {"resources": dict(self.head_resources), "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "fake_multinode",
            "max_workers": sum(t.get("max_workers", 0) for t in self.worker_node_types.values()),
            "provider": {
                "type": "external",
                "module": PROVIDER_MODULE,
                # Without it the provider's nodes join <this machine's ip>:6379, someone else's GCS.
                "gcs_address": gcs_address,
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": node_types,
            "head_node_type": _HEAD_TYPE,
            "auth": {},
            "upscaling_speed": self.upscaling_speed,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def start(self, timeout_s: float = 60) -> "FakeAutoscalingCluster":
        # Short: AF_UNIX socket paths under it must stay below ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="efl_as_", dir="/tmp")
        self._port = _free_port()
        ip = ray.util.get_node_ip_address()
        self.address = f"{ip}:{self._port}"
        config_path = os.path.join(self.temp_dir, "autoscaler.json")
        with open(config_path, "w") as f:
            json.dump(self._config(self.address), f)

        res = dict(self.head_resources)
        cmd = [
            _RAY, "start", "--head", f"--port={self._port}", f"--temp-dir={self.temp_dir}",
            f"--autoscaling-config={config_path}", "--include-dashboard=false", "--disable-usage-stats",
            # Fixed default ports (8265, 10001, 52365) may be held by someone else's cluster.
            f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--num-cpus={res.pop('CPU', 0)}", f"--num-gpus={res.pop('GPU', 0)}",
        ]  # fmt: skip
        if "object_store_memory" in res:
            cmd.append(f"--object-store-memory={int(res.pop('object_store_memory'))}")
        if res:
            cmd.append(f"--resources={json.dumps(res)}")

        auth = _auth_env()
        os.environ.update(auth)  # drivers in this process connect with the same token mode
        ray._raylet.Config.initialize("")  # ...and Ray re-reads RAY_AUTH_MODE (as ray.init does)
        env = {
            **os.environ,
            _MARKER: self.temp_dir,  # inherited by this cluster's processes: see pids()
            "RAY_FAKE_CLUSTER": "1",  # FakeMultiNodeProvider refuses to run without it
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",  # reconcile every second, not every 5
            "AUTOSCALER_METRIC_PORT": str(_free_port()),  # default 44217 is shared machine-wide
        }
        env.pop("RAY_ADDRESS", None)  # this cluster's processes talk to its GCS only
        try:
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.CalledProcessError as exc:
            self.shutdown()
            raise RuntimeError(f"ray start failed:\n{exc.stdout}\n{exc.stderr}") from exc
        except BaseException:
            self.shutdown()
            raise
        return self

    def pids(self) -> list[int]:
        """This cluster's live processes, other than this one: those that carry its marker in their
        environment or hold a file open under its temp dir (Ray sends every process's output to
        its logs there), and their children.

        Not the marker alone: a process that renames itself (ray::IDLE, ray::DashboardAgent) may
        overwrite its environment with the new title, and the agents can outlive a killed raylet.
        """
        if self.temp_dir is None:
            return []
        marker, prefix = f"{_MARKER}={self.temp_dir}".encode(), self.temp_dir + "/"
        parent, mine = {}, set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                if state == "Z":  # dead already, its parent just has not reaped it
                    continue
                parent[pid] = int(ppid)
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        mine.add(pid)
                        continue
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                        mine.add(pid)
                        break
            except OSError:  # gone meanwhile, or not ours to read
                continue
        grown = True
        while grown:
            children = {pid for pid, ppid in parent.items() if ppid in mine} - mine
            mine |= children
            grown = bool(children)
        return sorted(mine)

    def shutdown(self, timeout_s: float = 30) -> None:
        """SIGKILL this cluster's processes, as ``ray stop --force`` would all of Ray's, and delete its temp dir.

        Disconnect drivers (ray.shutdown()) first. Repeats until none is left: a raylet or the
        autoscaler may start a process while the others go.
        """
        if self.temp_dir is None:
            return
        deadline = time.monotonic() + timeout_s
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of the cluster at {self.address} still alive: {pids}")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir = None

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as ``ray.nodes()`` reports them (this process must be connected to this cluster)."""
        return [n for n in ray.nodes() if n["Alive"]]

    def nodes_with(self, resource: str) -> list[dict[str, Any]]:
        """Alive nodes that offer ``resource``."""
        return [n for n in self.alive_nodes() if n["Resources"].get(resource, 0) > 0]

    def __enter__(self) -> "FakeAutoscalingCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
