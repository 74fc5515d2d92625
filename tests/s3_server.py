"""A real S3-compatible HTTP endpoint on loopback for tests: moto's server mode in a subprocess.

``moto_s3_server()`` yields the endpoint URL (``http://127.0.0.1:PORT``) and kills the server on
exit. While it runs, the test process's environment carries fake AWS credentials and region (the
server gets the same), restored afterwards. ``TcpProxy`` sits in front of an endpoint so a test can
cut the network (``stop()``) and bring it back (``start()``) while the server keeps its data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CREDENTIALS", "moto_s3_server", "free_port", "TcpProxy"]

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Loopback must never go through an HTTP proxy that the machine may have configured.
_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    # Prefer the console script next to this interpreter (the venv's), then PATH, then -m.
    exe = Path(sys.executable).with_name("moto_server")
    found = str(exe) if exe.exists() else shutil.which("moto_server")
    base = [found] if found else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


def _answers_http(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(url, timeout=1).close()
    except urllib.error.HTTPError:
        pass  # any HTTP answer means the server is up
    except OSError:
        return False
    return True


@contextlib.contextmanager
def moto_s3_server(port: int | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``moto_server`` on 127.0.0.1 (a free port unless given); yield its URL; kill it."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env_vars = {**CREDENTIALS, **_NO_PROXY}
    saved = {k: os.environ.get(k) for k in env_vars}
    os.environ.update(env_vars)
    log = tempfile.TemporaryFile()  # a file, not a pipe: moto logs every request and would block
    proc = subprocess.Popen(_moto_command(port), env={**os.environ, **env_vars}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers_http(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"moto_server on {url} did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``127.0.0.1:target_port``; ``stop()`` is a network outage
    (open connections reset, new ones refused) and ``start()`` ends it, on the same port."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        srv.settimeout(0.1)  # poll, so stop() is seen without relying on close() waking accept()
        self._listener, self._stopped = srv, threading.Event()
        threading.Thread(target=self._accept, args=(srv, self._stopped), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            _close(c)

    def _accept(self, srv: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
                client.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
