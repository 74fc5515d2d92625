"""Integration fixtures: a real S3-compatible endpoint (moto server mode, a subprocess on loopback)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    from tests.s3_server import moto_s3_server
except ImportError:  # the repo root is not on sys.path (run without PYTHONPATH=.)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.s3_server import moto_s3_server

S3_BUCKET = "elasticfl-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    """(endpoint_url, "s3://elasticfl-test/ckpt"): one moto server and bucket for the session.

    Tests share the bucket, so each should put its runs under a prefix of its own.
    """
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto")
    with moto_s3_server() as url:
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket=S3_BUCKET)
        yield url, f"s3://{S3_BUCKET}/ckpt"
