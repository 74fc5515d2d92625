"""CheckpointStore on file:// (no network): format, integrity, visibility, retention, failures."""

from __future__ import annotations

import json
import logging
import os
import pickle

import numpy as np
import pytest

from elasticfl.checkpoint import Checkpoint, CheckpointStore, list_runs
from elasticfl.errors import CheckpointError, CheckpointNotFoundError, ConfigError, StorageError


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "weights/0": rng.standard_normal((7, 5)).astype(np.float32),
        "weights/1": rng.standard_normal(3).astype(np.float16),
        "weights/2": rng.integers(-(2**40), 2**40, size=(2, 3, 4), dtype=np.int64),
        "strategy/momentum/0": rng.standard_normal((4, 4)),  # float64
        "mask": np.array([True, False, True]),
        "step": np.array(seed, dtype=np.int32),  # 0-d
        "empty": np.zeros((0,), dtype=np.float32),
        "empty2d": np.zeros((3, 0), dtype=np.int8),
        "bigendian": np.arange(5, dtype=">f4"),
        "strided": np.arange(24, dtype=np.float32).reshape(4, 6).T,  # not C-contiguous
    }


def _state(round_: int) -> dict:
    return {"round": round_, "history": [{"round": 0, "loss": 1.5}], "config": {"name": "fedavg", "lr": 0.1},
            "rng": {"seed": 7}}


def _round_dir(store: CheckpointStore, round_: int) -> str:
    return os.path.join(store.run_uri.removeprefix("file://"), "checkpoints", f"round-{round_:08d}")


def _assert_same(loaded: dict, expected: dict) -> None:
    assert set(loaded) == set(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.fixture
def store(tmp_path):
    return CheckpointStore(str(tmp_path / "ckpt"), "run-1", retries=1, retry_backoff_s=0.0)


def test_round_trip_arrays_and_state(store):
    arrays = _arrays(3)
    uri = store.save(3, arrays, _state(3))
    assert uri.startswith("file:///") and uri.endswith("/run-1/checkpoints/round-00000003")
    ckpt = store.load(3)
    assert isinstance(ckpt, Checkpoint) and ckpt.round == 3 and ckpt.uri == uri
    _assert_same(ckpt.arrays, arrays)
    assert ckpt.state == _state(3)
    # Documented: loaded arrays are writable (views into a private buffer), never tied to storage.
    w = ckpt.arrays["weights/0"]
    assert w.flags.writeable and w.flags.c_contiguous
    w += 1
    np.testing.assert_array_equal(store.load(3).arrays["weights/0"], arrays["weights/0"])


def test_layout_and_manifest(store):
    store.save(1, _arrays(), _state(1))
    d = _round_dir(store, 1)
    assert sorted(os.listdir(d)) == ["MANIFEST.json", "arrays.bin", "state.json"]
    m = json.loads(open(os.path.join(d, "MANIFEST.json")).read())
    assert m["round"] == 1 and m["version"] == 1 and m["created_at"] > 0
    assert set(m["files"]) == {"arrays.bin", "state.json"}
    assert m["files"]["arrays.bin"]["size"] == os.path.getsize(os.path.join(d, "arrays.bin"))
    assert len(m["files"]["arrays.bin"]["sha256"]) == 64
    by_name = {e["name"]: e for e in m["arrays"]}
    assert by_name["weights/1"]["dtype"] == "<f2" and by_name["step"]["shape"] == []
    assert all(e["offset"] % 64 == 0 for e in m["arrays"])


def test_plain_relative_path_and_file_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = CheckpointStore("relative/ckpt", "r")
    assert rel.run_uri == f"file://{tmp_path}/relative/ckpt/r"
    rel.save(0, {"a": np.ones(2)}, {})
    via_uri = CheckpointStore(f"file://{tmp_path}/relative/ckpt/", "r")
    assert via_uri.latest().round == 0


def test_latest_picks_newest_and_empty_store(store):
    assert store.latest() is None and store.list() == []
    for r in (1, 3, 2):
        store.save(r, _arrays(r), _state(r))
    latest = store.latest()
    assert latest.round == 3
    _assert_same(latest.arrays, _arrays(3))
    assert [i.round for i in store.list()] == [1, 2, 3]


def _flip_byte(path: str, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: _flip_byte(os.path.join(d, "arrays.bin")), "sha256"),
        (lambda d: _truncate(os.path.join(d, "arrays.bin")), "bytes"),
        (lambda d: _truncate(os.path.join(d, "state.json")), "bytes"),
        (lambda d: os.remove(os.path.join(d, "arrays.bin")), "missing"),
        (lambda d: open(os.path.join(d, "MANIFEST.json"), "w").write("{not json"), "MANIFEST"),
    ],
    ids=["flipped-byte", "truncated-arrays", "truncated-state", "missing-arrays", "garbage-manifest"],
)
def test_corrupt_checkpoint_is_skipped(store, caplog, damage, reason):
    store.save(1, _arrays(1), _state(1))
    store.save(2, _arrays(2), _state(2))
    damage(_round_dir(store, 2))
    with caplog.at_level(logging.WARNING, logger="elasticfl.checkpoint"):
        latest = store.latest()
    assert latest.round == 1
    _assert_same(latest.arrays, _arrays(1))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "round 2" in warnings[0] and reason in warnings[0]
    with pytest.raises(CheckpointError, match=reason) as err:
        store.load(2)
    assert not isinstance(err.value, CheckpointNotFoundError)
    infos = {i.round: i for i in store.list(verify=True)}
    assert infos[1].valid and infos[1].reason is None
    assert not infos[2].valid and reason in infos[2].reason


def test_list_without_verify_trusts_manifest(store):
    store.save(1, _arrays(1), _state(1))
    _flip_byte(os.path.join(_round_dir(store, 1), "arrays.bin"))
    (info,) = store.list()
    assert info.valid and info.reason is None and info.size_bytes > 0 and info.created_at > 0
    (info,) = store.list(verify=True)
    assert not info.valid and "arrays.bin sha256" in info.reason


def test_checkpoint_without_manifest_is_invisible(store, caplog):
    store.save(1, _arrays(1), _state(1))
    store.save(2, _arrays(2), _state(2))
    os.remove(os.path.join(_round_dir(store, 2), "MANIFEST.json"))
    with caplog.at_level(logging.WARNING, logger="elasticfl.checkpoint"):
        assert store.latest().round == 1
    assert not caplog.records  # an unfinished save is not corruption: no warning
    assert [i.round for i in store.list(verify=True)] == [1]
    with pytest.raises(CheckpointNotFoundError):
        store.load(2)
    with pytest.raises(CheckpointNotFoundError):
        store.load(99)


def test_keep_last_deletes_old_checkpoints(tmp_path):
    store = CheckpointStore(str(tmp_path), "run", keep_last=2)
    for r in range(5):
        store.save(r, _arrays(r), _state(r))
    assert [i.round for i in store.list(verify=True)] == [3, 4]
    assert sorted(os.listdir(os.path.join(tmp_path, "run", "checkpoints"))) == ["round-00000003", "round-00000004"]
    assert store.latest().round == 4


def test_keep_last_keeps_the_newest_save_and_ignores_later_rounds(tmp_path):
    store = CheckpointStore(str(tmp_path), "run", keep_last=1)
    store.save(5, _arrays(5), _state(5))
    # A resumed run re-saves an earlier round: that one is kept, the later timeline is not touched.
    store.save(3, _arrays(3), _state(3))
    assert [i.round for i in store.list()] == [3, 5]
    store.save(4, _arrays(4), _state(4))
    assert [i.round for i in store.list()] == [4, 5]


class _FlakyFS:
    """Wraps a pyarrow filesystem; ``fail(path, n)`` may return an exception to raise on the n-th
    ``open_output_stream``, or the string "half" to write half the bytes and then fail."""

    def __init__(self, fs, fail):
        self._fs, self._fail, self.opened = fs, fail, []

    def __getattr__(self, name):
        return getattr(self._fs, name)

    def open_output_stream(self, path, *args, **kwargs):
        self.opened.append(path)
        what = self._fail(path, len(self.opened))
        if isinstance(what, BaseException):
            raise what
        stream = self._fs.open_output_stream(path, *args, **kwargs)
        return _HalfStream(stream) if what == "half" else stream


class _HalfStream:
    def __init__(self, stream):
        self._s = stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._s.close()  # like pyarrow: closing after an error keeps what was written

    def write(self, data):
        self._s.write(memoryview(data)[: len(data) // 2])
        raise OSError("connection reset while writing")


def _inject(store: CheckpointStore, fail) -> _FlakyFS:
    flaky = _FlakyFS(store._filesystem(), fail)
    store._fs = flaky
    return flaky


def _visible_files(store: CheckpointStore, round_: int) -> list[str]:
    d = _round_dir(store, round_)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@pytest.mark.parametrize(
    "fail",
    [
        lambda path, n: OSError("disk on fire") if "state.json" in path else None,  # 2nd file, every try
        lambda path, n: "half" if "arrays.bin" in path else None,  # dies inside the open stream
        lambda path, n: "half" if "MANIFEST" in path else None,  # even the manifest itself
    ],
    ids=["second-file-fails", "stream-dies-mid-write", "manifest-dies-mid-write"],
)
def test_failed_save_leaves_no_manifest(store, fail):
    store.save(1, _arrays(1), _state(1))
    flaky = _inject(store, fail)
    with pytest.raises(StorageError, match="checkpoint.storage") as err:
        store.save(2, _arrays(2), _state(2))
    assert "round-00000002" in str(err.value) and "2 attempt(s)" in str(err.value)
    assert len(flaky.opened) >= 2
    assert "MANIFEST.json" not in _visible_files(store, 2)
    assert not [f for f in _visible_files(store, 2) if f.endswith(".tmp")]  # no debris either
    fresh = CheckpointStore(store.run_uri.rsplit("/", 1)[0], "run-1")
    assert fresh.latest().round == 1
    assert [i.round for i in fresh.list(verify=True)] == [1]


def test_non_storage_error_mid_save_leaves_no_manifest(store):
    store.save(1, _arrays(1), _state(1))
    _inject(store, lambda path, n: RuntimeError("bug") if "state.json" in path else None)
    with pytest.raises(RuntimeError, match="bug"):
        store.save(2, _arrays(2), _state(2))
    assert "MANIFEST.json" not in _visible_files(store, 2)
    assert store.latest().round == 1


def test_transient_error_is_retried(tmp_path):
    store = CheckpointStore(str(tmp_path), "run", retries=2, retry_backoff_s=0.0)
    flaky = _inject(store, lambda path, n: OSError("flaky") if n == 1 else None)
    store.save(1, _arrays(1), _state(1))
    assert len(flaky.opened) == 4  # arrays.bin twice, state.json, manifest
    assert store.load(1).round == 1


def test_failed_resave_drops_the_old_manifest(store):
    store.save(1, _arrays(1), _state(1))
    store.save(2, _arrays(2), _state(2))
    _inject(store, lambda path, n: OSError("gone") if "state.json" in path else None)
    with pytest.raises(StorageError):
        store.save(2, _arrays(20), _state(20))
    assert store.latest().round == 1  # not round 2 with half old, half new data
    store._fs = None
    store.save(2, _arrays(20), _state(20))
    _assert_same(store.latest().arrays, _arrays(20))


def test_numpy_scalars_in_state_become_plain_numbers(store):
    store.save(1, {}, {"history": [{"loss": np.float32(0.5), "n": np.int64(3)}]})
    assert store.load(1).state == {"history": [{"loss": 0.5, "n": 3}]}
    assert store.load(1).arrays == {}


def test_bad_state_or_arrays_write_nothing(store):
    with pytest.raises(CheckpointError, match="JSON"):
        store.save(1, _arrays(), {"x": object()})
    with pytest.raises(CheckpointError, match="dtype"):
        store.save(1, {"a": np.array([object()])}, {})
    with pytest.raises(CheckpointError, match="round"):
        store.save(-1, _arrays(), {})
    assert _visible_files(store, 1) == [] and store.list() == []


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"storage": "hdfs://nn/path"}, "checkpoint.storage"),
        ({"storage": "ftp://host/x"}, "checkpoint.storage"),
        ({"storage": "s3://"}, "checkpoint.storage"),
        ({"storage": ""}, "checkpoint.storage"),
        ({"storage": "s3://bucket/p", "endpoint_url": "ftp://x"}, "checkpoint.endpoint_url"),
        ({"storage": "/tmp/x", "keep_last": 0}, "checkpoint.keep_last"),
        ({"storage": "/tmp/x", "run_id": "a/b"}, "run_id"),
    ],
)
def test_bad_settings_raise_config_error(kwargs, field):
    kwargs = {"run_id": "r", **kwargs}
    with pytest.raises(ConfigError, match=field) as err:
        CheckpointStore(kwargs.pop("storage"), kwargs.pop("run_id"), **kwargs)
    if "hdfs" in str(err.value):
        assert "s3://" in str(err.value) and "gs://" in str(err.value) and "file://" in str(err.value)


def test_store_pickles_without_its_filesystem(store):
    store.save(1, _arrays(1), _state(1))
    assert store._fs is not None
    clone = pickle.loads(pickle.dumps(store))
    assert clone._fs is None and clone.run_uri == store.run_uri
    assert clone.latest().round == 1


def test_run_level_json(store):
    assert store.read_json("status.json") is None
    store.write_json("status.json", {"state": "running", "round": 3})
    assert store.read_json("status.json") == {"state": "running", "round": 3}
    store.write_json("status.json", {"state": "done"})
    assert store.read_json("status.json") == {"state": "done"}
    with pytest.raises(ValueError):
        store.write_json("../escape.json", {})


def test_list_runs(tmp_path):
    assert list_runs(str(tmp_path / "nothing-here")) == []
    CheckpointStore(str(tmp_path), "run-b").write_json("status.json", {})
    CheckpointStore(str(tmp_path), "run-a").save(0, {"w": np.ones(1)}, {})
    (tmp_path / "stray.txt").write_text("not a run")
    assert list_runs(str(tmp_path)) == ["run-a", "run-b"]
    assert list_runs(f"file://{tmp_path}") == ["run-a", "run-b"]
