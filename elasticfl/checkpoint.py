"""Checkpoint store over pyarrow.fs for ``file://`` (or a plain path), ``s3://`` and ``gs://``.

``{storage}/{run_id}/checkpoints/round-{round:08d}/``: ``arrays.bin`` (raw C-order bytes of every
array, 64-byte aligned), ``state.json``, and ``MANIFEST.json`` (sizes, sha256, array index) written
LAST. A checkpoint is complete or invisible: each file is fully serialised first, then written as one
buffer per put; nothing is trusted without a manifest whose checksums match. Loaded arrays are
WRITABLE numpy views into one private bytearray per load (read straight into it, no further copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from elasticfl.errors import CheckpointError, CheckpointNotFoundError, ConfigError, StorageError

__all__ = ["Checkpoint", "CheckpointInfo", "CheckpointStore", "list_runs"]

log = logging.getLogger("elasticfl.checkpoint")

FORMAT, VERSION = "elasticfl-checkpoint", 1
ARRAYS, STATE, MANIFEST = "arrays.bin", "state.json", "MANIFEST.json"
_ALIGN = 64  # every array starts on a 64-byte boundary of arrays.bin: loaded views stay aligned
_ROUND_DIR = re.compile(r"^round-(\d{8,})$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_SCHEMES = "file://, s3://, gs:// (or a plain local path)"
# Storage answers no retry can change; any other OSError / Arrow error counts as transient.
_PERMANENT = ("NO_SUCH_BUCKET", "ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH")
_HINTS = {
    "s3": "Check checkpoint.storage and that the bucket exists; for an S3-compatible server set "
          "checkpoint.endpoint_url (or AWS_ENDPOINT_URL); credentials come from AWS_ACCESS_KEY_ID/"
          "AWS_SECRET_ACCESS_KEY (or ~/.aws, instance roles).",
    "gs": "Check checkpoint.storage and that the bucket exists; credentials come from "
          "GOOGLE_APPLICATION_CREDENTIALS (or the instance's service account).",
    "file": "Check that checkpoint.storage is a writable directory with free space.",
}


@dataclass(frozen=True, eq=False)  # eq=False: dicts of arrays have no single truth value
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    state: dict
    uri: str


@dataclass(frozen=True)
class CheckpointInfo:
    round: int
    uri: str
    created_at: float
    size_bytes: int  # arrays.bin + state.json, as the manifest records them
    valid: bool
    reason: str | None


def _parse_storage(storage: str) -> tuple[str, str]:
    """``storage`` -> (scheme: file/s3/gs, filesystem path with no trailing slash)."""
    if not isinstance(storage, str) or not storage.strip():
        raise ConfigError(f"checkpoint.storage is empty; set a local path or a {_SCHEMES} URI")
    storage = storage.strip()
    if "://" not in storage:
        return "file", os.path.abspath(os.path.expanduser(storage))
    u = urlparse(storage)
    scheme = u.scheme.lower()
    if scheme == "file" and u.netloc in ("", "localhost") and u.path:
        return "file", os.path.abspath(u.path)
    if scheme in ("s3", "gs", "gcs") and u.netloc:
        return ("gs" if scheme == "gcs" else scheme), (u.netloc + u.path).rstrip("/")
    if scheme in ("file", "s3", "gs", "gcs"):
        raise ConfigError(f"checkpoint.storage={storage!r}: write file:///abs/path or {scheme}://bucket/prefix")
    raise ConfigError(f"checkpoint.storage={storage!r}: unsupported scheme {u.scheme!r}; valid: {_SCHEMES}")


def _endpoint_kwargs(endpoint_url: str | None) -> dict:
    """``http://127.0.0.1:9000`` -> endpoint_override="127.0.0.1:9000", scheme="http"."""
    if not endpoint_url:
        return {}
    u = urlparse(endpoint_url if "://" in endpoint_url else "https://" + endpoint_url)
    if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/"):
        raise ConfigError(f"checkpoint.endpoint_url={endpoint_url!r}: expected http(s)://host[:port]")
    return {"endpoint_override": u.netloc, "scheme": u.scheme}


class _Storage:
    """A storage root, a lazily built pyarrow filesystem, and retried whole-file I/O."""

    def __init__(self, storage, *, endpoint_url=None, region=None, retries=4, retry_backoff_s=0.2):
        self._scheme, self._root = _parse_storage(storage)
        if retries < 0 or retry_backoff_s < 0:
            raise ConfigError(f"CheckpointStore retries={retries}, retry_backoff_s={retry_backoff_s}: both must be >= 0")
        self._endpoint, self._region = _endpoint_kwargs(endpoint_url), region
        self.retries, self.retry_backoff_s = int(retries), float(retry_backoff_s)
        self._fs: pafs.FileSystem | None = None

    # The filesystem holds native handles: build it where it is used (in a Ray actor, with that
    # process's credentials) and never pickle it.
    def __getstate__(self):
        return {**self.__dict__, "_fs": None}

    def _filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            if self._scheme == "file":
                self._fs = pafs.LocalFileSystem()
            elif self._scheme == "gs":
                self._fs = pafs.GcsFileSystem(**self._endpoint)
            else:
                kw = dict(self._endpoint, region=self._region) if self._region else dict(self._endpoint)
                key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
                if key and secret:
                    kw.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
                if self._endpoint:
                    # S3-compatible servers (moto, older MinIO/Ceph) can store the SDK's aws-chunked
                    # bodies with trailing checksums verbatim (seen inside Ray workers). Ask for
                    # checksums only when required; the manifest's sha256 guards integrity anyway.
                    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
                self._fs = pafs.S3FileSystem(**kw)
        return self._fs

    def _uri(self, path: str) -> str:
        return ("file://" if self._scheme == "file" else f"{self._scheme}://") + path

    def _io(self, what: str, path: str, fn, *args):
        """One storage operation, retried with exponential backoff; FileNotFoundError passes through."""
        for attempt in range(self.retries + 1):
            try:
                return fn(*args)
            except (FileNotFoundError, CheckpointError):
                raise
            except (OSError, pa.ArrowException) as e:
                permanent = isinstance(e, PermissionError) or any(c in str(e) for c in _PERMANENT)
                if permanent or attempt == self.retries:
                    raise StorageError(f"{what} {self._uri(path)} failed after {attempt + 1} attempt(s): "
                                       f"{e}. {_HINTS[self._scheme]}") from e
                log.debug("%s %s failed (%s); retry %d", what, self._uri(path), e, attempt + 1)
                time.sleep(min(self.retry_backoff_s * 2**attempt, 30.0))

    def _put(self, path: str, data: bytes | list) -> None:
        """Write ``data`` (bytes, or a list of byte views), already fully serialised, as one
        whole file/object."""
        fs = self._filesystem()
        parts = data if isinstance(data, list) else [data]
        if len(parts) > 1 and sum(memoryview(p).nbytes for p in parts) < 2**20:
            parts = [b"".join(parts)]  # small: one write beats many

        def put():
            if fs.type_name != "local":
                # Closing an object-store stream publishes what it holds, even after an error, and
                # Python gets no abort(): so open it only now, every byte ready, for one write.
                whole = parts[0] if len(parts) == 1 else b"".join(parts)
                with fs.open_output_stream(path) as out:
                    out.write(whole)
                return
            parent = posixpath.dirname(path)  # local: write aside, then rename (all or nothing)
            fs.create_dir(parent, recursive=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with fs.open_output_stream(tmp) as out:  # invisible until the rename
                    for part in parts:
                        out.write(part)
                fs.move(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    fs.delete_file(tmp)
                raise

        self._io("writing", path, put)

    def _read(self, path: str, expect_size: int | None = None) -> bytes | bytearray:
        """A whole file; with ``expect_size``, read straight into a fresh bytearray."""
        fs, name = self._filesystem(), posixpath.basename(path)

        def get():
            with fs.open_input_file(path) as f:
                if expect_size is None:
                    return f.read()
                if f.size() != expect_size:
                    raise CheckpointError(f"{name} is {f.size()} bytes, the manifest says {expect_size}")
                buf = bytearray(expect_size)
                if f.readinto(buf) != expect_size:  # size was right: a short read is transient
                    raise OSError(f"short read of {name}")
                return buf

        return self._io("reading", path, get)

    def _listdir(self, path: str) -> list[pafs.FileInfo]:
        fs = self._filesystem()
        return self._io("listing", path, fs.get_file_info, pafs.FileSelector(path, allow_not_found=True))


def _json_default(obj):
    if isinstance(obj, np.generic):  # numpy scalars in metrics/history: store as plain numbers
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _pack(arrays: dict) -> tuple[list, list[dict]]:
    """All arrays -> the byte views (and padding) that make up arrays.bin, and its index.

    No copy here: a local write streams the views into a temporary file, an object
    store gets them joined into one buffer (see _Storage._put)."""
    parts, index, offset = [], [], 0
    for name, value in arrays.items():
        a = np.asarray(value)
        if not isinstance(name, str) or a.dtype.hasobject or a.dtype.fields is not None:
            raise CheckpointError(f"array {name!r} ({a.dtype}): need str names and plain numeric/bool dtypes")
        if pad := -offset % _ALIGN:
            parts.append(bytes(pad))
            offset += pad
        index.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                      "nbytes": a.nbytes})
        parts.append(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # a view unless strided
        offset += a.nbytes
    return parts, index


def _describe(parts: list) -> dict:
    digest, size = hashlib.sha256(), 0
    for part in parts:
        digest.update(part)
        size += memoryview(part).nbytes
    return {"size": size, "sha256": digest.hexdigest()}


def _unpack(buf: bytearray, index: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    try:
        for e in index:
            dtype, shape = np.dtype(e["dtype"]), tuple(int(s) for s in e["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if count * dtype.itemsize != e["nbytes"] or e["offset"] + e["nbytes"] > len(buf):
                raise CheckpointError(f"manifest entry for {e['name']!r} does not fit arrays.bin")
            out[e["name"]] = np.frombuffer(buf, dtype, count, e["offset"]).reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"manifest array index is malformed: {err!r}") from err
    return out


class CheckpointStore(_Storage):
    """Checkpoints of one run under ``{storage}/{run_id}``. Picklable: pass it to Ray actors."""

    def __init__(self, storage: str, run_id: str, *, keep_last: int | None = None,
                 endpoint_url: str | None = None, region: str | None = None,
                 retries: int = 4, retry_backoff_s: float = 0.2):
        super().__init__(storage, endpoint_url=endpoint_url, region=region,
                         retries=retries, retry_backoff_s=retry_backoff_s)
        if not isinstance(run_id, str) or not _NAME.match(run_id):
            raise ConfigError(f"run_id={run_id!r}: use letters, digits, '.', '_' or '-' (no '/')")
        if keep_last is not None and keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last={keep_last}: use an integer >= 1, or null to keep all")
        self.run_id, self.keep_last = run_id, keep_last
        self._run = posixpath.join(self._root, run_id)

    @property
    def run_uri(self) -> str:
        return self._uri(self._run)

    def _dir(self, round: int) -> str:
        if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
            raise CheckpointError(f"round must be an int >= 0, got {round!r}")
        return posixpath.join(self._run, "checkpoints", f"round-{int(round):08d}")

    def save(self, round: int, arrays: dict[str, np.ndarray], state: dict) -> str:
        d, fs = self._dir(round), self._filesystem()
        payload, index = _pack(arrays)
        try:
            state_bytes = json.dumps(state, default=_json_default).encode()
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"state for round {round} is not JSON-serialisable: {e}") from e
        files = {ARRAYS: payload, STATE: [state_bytes]}
        manifest = json.dumps({
            "format": FORMAT, "version": VERSION, "round": int(round), "created_at": time.time(),
            "files": {n: _describe(parts) for n, parts in files.items()},
            "arrays": index,
        }, indent=1).encode()
        try:  # re-saving a round: its old manifest must not outlive the data it vouched for
            self._io("writing", d, fs.delete_file, posixpath.join(d, MANIFEST))
        except FileNotFoundError:
            pass
        for name, data in files.items():
            self._put(posixpath.join(d, name), data)
        self._put(posixpath.join(d, MANIFEST), manifest)  # last: this is what makes it visible
        if self.keep_last is not None:
            self._prune(int(round))
        return self._uri(d)

    def _rounds(self) -> list[int]:
        infos = self._listdir(posixpath.join(self._run, "checkpoints"))
        found = (_ROUND_DIR.match(i.base_name) for i in infos if i.type == pafs.FileType.Directory)
        return sorted(int(m.group(1)) for m in found if m)

    def _manifest(self, round: int) -> dict:
        path = posixpath.join(self._dir(round), MANIFEST)
        try:
            m = json.loads(self._read(path))
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"no complete checkpoint for round {round} at {self._uri(path)}") from None
        except ValueError as e:
            raise CheckpointError(f"MANIFEST.json is not valid JSON: {e}") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("round") != round:
            raise CheckpointError(f"MANIFEST.json is not an {FORMAT} manifest for round {round}")
        if m.get("version") != VERSION:
            raise CheckpointError(f"format version {m.get('version')!r} unsupported (this elasticfl reads {VERSION})")
        return m

    def _read_checkpoint(self, round: int, m: dict) -> Checkpoint:
        d, data = self._dir(round), {}
        try:
            for name in (ARRAYS, STATE):
                meta = m["files"][name]
                try:
                    buf = self._read(posixpath.join(d, name), expect_size=int(meta["size"]))
                except FileNotFoundError:
                    raise CheckpointError(f"{name} is missing") from None
                if hashlib.sha256(buf).hexdigest() != meta["sha256"]:
                    raise CheckpointError(f"{name} sha256 does not match the manifest (corrupt or overwritten)")
                data[name] = buf
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"MANIFEST.json lacks file entry {e}") from e
        try:
            state = json.loads(data[STATE])
        except ValueError as e:
            raise CheckpointError(f"state.json is not valid JSON: {e}") from e
        return Checkpoint(int(round), _unpack(data[ARRAYS], m.get("arrays", [])), state, self._uri(d))

    def load(self, round: int) -> Checkpoint:
        """The checkpoint of ``round``, checksums verified."""
        try:
            return self._read_checkpoint(round, self._manifest(round))
        except CheckpointNotFoundError:
            raise
        except CheckpointError as e:
            raise CheckpointError(f"checkpoint round {round} at {self._uri(self._dir(round))}: {e}") from e

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt ones are skipped with a warning."""
        for r in reversed(self._rounds()):
            try:
                return self._read_checkpoint(r, self._manifest(r))
            except CheckpointNotFoundError:
                continue  # no manifest: a save that never finished, invisible by design
            except CheckpointError as e:
                log.warning("skipping checkpoint round %d at %s: %s", r, self._uri(self._dir(r)), e)
        return None

    def list(self, verify: bool = False) -> list[CheckpointInfo]:
        """Checkpoints with a manifest, ascending; ``verify`` reads and checks every file."""
        out = []
        for r in self._rounds():
            uri = self._uri(self._dir(r))
            try:
                m = self._manifest(r)
            except CheckpointNotFoundError:
                continue
            except CheckpointError as e:
                out.append(CheckpointInfo(r, uri, 0.0, 0, False, str(e)))
                continue
            reason = None
            if verify:
                try:
                    self._read_checkpoint(r, m)
                except CheckpointError as e:
                    reason = str(e)
            size = sum(int(f.get("size", 0)) for f in m.get("files", {}).values())
            out.append(CheckpointInfo(r, uri, float(m.get("created_at", 0.0)), size, reason is None, reason))
        return out

    def _prune(self, saved: int) -> None:
        """Keep the ``keep_last`` newest complete rounds up to ``saved`` (always ``saved`` itself)."""
        fs = self._filesystem()
        rounds = [r for r in self._rounds() if r <= saved]
        manifests = [posixpath.join(self._dir(r), MANIFEST) for r in rounds]
        infos = self._io("checking", self._run, fs.get_file_info, manifests)
        complete = [r for r, i in zip(rounds, infos) if i.type == pafs.FileType.File]
        oldest_kept = min(complete[-self.keep_last:] + [saved])
        for r in (r for r in rounds if r < oldest_kept):
            d = self._dir(r)
            try:  # manifest first, so a half-deleted checkpoint is invisible rather than "corrupt"
                with contextlib.suppress(Exception):
                    fs.delete_file(posixpath.join(d, MANIFEST))
                self._io("deleting", d, fs.delete_dir, d)
            except StorageError as e:
                log.warning("could not delete old checkpoint round %d: %s", r, e)

    def write_json(self, name: str, obj: dict) -> None:
        """A small run-level file (e.g. ``status.json``), written as one whole put."""
        self._put(self._json_path(name), json.dumps(obj, indent=1, default=_json_default).encode())

    def read_json(self, name: str) -> dict | None:
        path = self._json_path(name)
        try:
            return json.loads(self._read(path))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise CheckpointError(f"{self._uri(path)} is not valid JSON: {e}") from e

    # -- the run's history: one small object per round, written once -------------------
    # Kept out of the checkpoints so that a checkpoint's size, and the work of writing
    # it, do not grow with the number of rounds run so far.
    def write_round_record(self, round: int, record: dict) -> None:
        self._put(self._record_path(round), json.dumps(record, separators=(",", ":"), default=_json_default).encode())

    def read_round_records(self, up_to: int) -> list[dict]:
        """Rounds 1..up_to, in order, read in parallel; a missing one is skipped with a warning."""
        def read(r: int) -> dict | None:
            try:
                return json.loads(self._read(self._record_path(r)))
            except FileNotFoundError:
                log.warning("run %s has no history record for round %d", self.run_id, r)
                return None

        with ThreadPoolExecutor(max_workers=16) as pool:
            return [rec for rec in pool.map(read, range(1, up_to + 1)) if rec is not None]

    def _record_path(self, round: int) -> str:
        return posixpath.join(self._run, "history", f"round-{int(round):08d}.json")

    def _json_path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"file name {name!r}: use letters, digits, '.', '_' or '-' (no '/')")
        return posixpath.join(self._run, name)


def list_runs(storage: str, **fs_kwargs) -> list[str]:
    """Run ids with a folder under ``storage``; fs_kwargs: endpoint_url, region, retries, retry_backoff_s."""
    s = _Storage(storage, **fs_kwargs)
    return sorted(i.base_name for i in s._listdir(s._root)
                  if i.type == pafs.FileType.Directory and _NAME.match(i.base_name))
