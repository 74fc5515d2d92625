"""CheckpointStore against a real S3-compatible HTTP endpoint (moto server on loopback)."""

from __future__ import annotations

import logging
import pickle
import time
import uuid
from urllib.parse import urlparse

import numpy as np
import pytest

from elasticfl.checkpoint import CheckpointStore, list_runs
from elasticfl.errors import CheckpointError, StorageError
from tests.s3_server import TcpProxy, free_port, moto_s3_server

boto3 = pytest.importorskip("boto3")


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "weights/0": rng.standard_normal((256, 128)).astype(np.float32),
        "weights/1": rng.standard_normal(3).astype(np.float16),
        "strategy/momentum/0": rng.integers(0, 9, size=(4, 4), dtype=np.int64),
        "step": np.array(seed),
        "empty": np.zeros((0, 2), dtype=np.float32),
    }


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def storage(s3_endpoint):
    """A fresh prefix in the shared bucket: (endpoint_url, storage uri, bucket, key prefix)."""
    url, base = s3_endpoint
    storage = f"{base}/{uuid.uuid4().hex[:12]}"
    bucket, _, prefix = storage.removeprefix("s3://").partition("/")
    return url, storage, bucket, prefix


def test_round_trip_over_s3(storage):
    url, uri, bucket, prefix = storage
    store = CheckpointStore(uri, "run-1", endpoint_url=url, region="us-east-1")
    assert store.save(1, _arrays(1), {"round": 1}) == f"{uri}/run-1/checkpoints/round-00000001"
    store.save(2, _arrays(2), {"round": 2, "history": [1.0, 0.5]})
    keys = sorted(o["Key"] for o in boto3.client("s3", endpoint_url=url)
                  .list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys[-3:] == [f"{prefix}/run-1/checkpoints/round-00000002/{n}"
                         for n in ("MANIFEST.json", "arrays.bin", "state.json")]
    # A pickled copy (as a Ray actor would get it) builds its own filesystem.
    clone = pickle.loads(pickle.dumps(store))
    latest = clone.latest()
    assert latest.round == 2 and latest.state == {"round": 2, "history": [1.0, 0.5]}
    assert _same(latest.arrays, _arrays(2))
    assert [i.round for i in clone.list(verify=True)] == [1, 2]
    clone.write_json("status.json", {"state": "running"})
    assert store.read_json("status.json") == {"state": "running"}


def test_keep_last_over_s3(storage):
    url, uri, *_ = storage
    store = CheckpointStore(uri, "run", endpoint_url=url, keep_last=2)
    for r in range(4):
        store.save(r, _arrays(r), {"round": r})
    assert [i.round for i in store.list(verify=True)] == [2, 3]
    assert store.latest().round == 3


def test_corrupt_object_is_skipped(storage, caplog):
    url, uri, bucket, prefix = storage
    store = CheckpointStore(uri, "run", endpoint_url=url)
    store.save(1, _arrays(1), {"round": 1})
    store.save(2, _arrays(2), {"round": 2})
    s3 = boto3.client("s3", endpoint_url=url)
    key = f"{prefix}/run/checkpoints/round-00000002/arrays.bin"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[1000] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    with caplog.at_level(logging.WARNING, logger="elasticfl.checkpoint"):
        latest = store.latest()
    assert latest.round == 1 and _same(latest.arrays, _arrays(1))
    assert any("round 2" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError, match="sha256"):
        store.load(2)
    assert [(i.round, i.valid) for i in store.list(verify=True)] == [(1, True), (2, False)]


def test_server_outage_raises_storage_error_and_trusts_nothing_half_written():
    """Stop the server: save() gives up after its retries with a StorageError naming the URI and
    the settings; a restarted (empty) server holds nothing a resume would trust."""
    port = free_port()
    with moto_s3_server(port=port) as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="outage")
        store = CheckpointStore("s3://outage/p", "run", endpoint_url=url, retries=1, retry_backoff_s=0.05)
        store.save(1, _arrays(1), {"round": 1})
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        store.save(2, _arrays(2), {"round": 2})
    assert time.monotonic() - started < 60
    msg = str(err.value)
    assert "s3://outage/p/run/checkpoints/round-00000002" in msg and "2 attempt(s)" in msg
    assert "checkpoint.endpoint_url" in msg and "AWS_ACCESS_KEY_ID" in msg
    with pytest.raises(StorageError):
        store.latest()  # an outage is not "no checkpoint": it must not look like a fresh run
    with moto_s3_server(port=port) as url:  # back, but moto keeps data in memory: it is gone
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="outage")
        assert store.latest() is None and store.list() == []
        store.save(3, _arrays(3), {"round": 3})  # the same store recovers once storage is back
        assert store.latest().round == 3


def test_network_cut_mid_save_leaves_an_untrusted_half_checkpoint(s3_endpoint):
    """Cut the network between arrays.bin and state.json (the server and its data live on): the
    half-written round is invisible, the previous one is resumed, and a re-save completes it."""
    url, base = s3_endpoint
    s3 = boto3.client("s3", endpoint_url=url)
    s3.create_bucket(Bucket="second-bucket")
    with TcpProxy(urlparse(url).port) as proxy:
        store = CheckpointStore("s3://second-bucket/p", "run", endpoint_url=proxy.url,
                                retries=1, retry_backoff_s=0.05)
        store.save(1, _arrays(1), {"round": 1})
        real_fs = store._filesystem()

        class CutBeforeState:
            def __getattr__(self, name):
                return getattr(real_fs, name)

            def open_output_stream(self, path, *args, **kwargs):
                if path.endswith("state.json"):
                    proxy.stop()
                return real_fs.open_output_stream(path, *args, **kwargs)

        store._fs = CutBeforeState()
        with pytest.raises(StorageError, match="state.json"):
            store.save(2, _arrays(2), {"round": 2})
        proxy.start()
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="second-bucket", Prefix="p/run/")["Contents"]}
        assert "p/run/checkpoints/round-00000002/arrays.bin" in keys  # the half checkpoint is there
        assert "p/run/checkpoints/round-00000002/MANIFEST.json" not in keys
        fresh = CheckpointStore("s3://second-bucket/p", "run", endpoint_url=proxy.url)
        assert fresh.latest().round == 1
        assert [i.round for i in fresh.list(verify=True)] == [1]
        fresh.save(2, _arrays(2), {"round": 2})
        assert _same(fresh.latest().arrays, _arrays(2))


def test_missing_bucket_fails_fast_with_a_hint(s3_endpoint):
    url, _ = s3_endpoint
    store = CheckpointStore("s3://no-such-bucket/p", "run", endpoint_url=url, retries=3, retry_backoff_s=1.0)
    started = time.monotonic()
    with pytest.raises(StorageError, match="bucket exists"):
        store.save(1, _arrays(1), {})
    assert time.monotonic() - started < 1.0  # NO_SUCH_BUCKET is not retried


def test_list_runs_over_s3(storage):
    url, uri, *_ = storage
    assert list_runs(uri, endpoint_url=url) == []
    CheckpointStore(uri, "run-b", endpoint_url=url).write_json("status.json", {"state": "pending"})
    CheckpointStore(uri, "run-a", endpoint_url=url).save(0, _arrays(0), {})
    assert list_runs(uri, endpoint_url=url) == ["run-a", "run-b"]
