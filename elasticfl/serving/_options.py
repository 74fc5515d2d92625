"""What a deployed Serve app is told: where runs live, who may do what, request limits.

A plain picklable dataclass: it travels from the deploying driver to every replica.
It holds the token's sha256, never the token itself (Serve keeps deployment
arguments in its controller's state).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ServeOptions", "ENDPOINTS", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_RELOAD_S", "MIN_TOKEN_CHARS",
]  # fmt: skip

DEFAULT_MAX_BATCH = 1024  # rows per POST /predict
DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # a request body larger than this is refused unread
DEFAULT_RELOAD_S = 5.0  # look for a newer checkpoint at most this often, per run and replica
MIN_TOKEN_CHARS = 16
ENDPOINTS = (  # what `elasticfl serve` prints; the app's GET / lists them too
    "GET  /runs",
    "GET  /runs/{run_id}",
    "GET  /runs/{run_id}/history?after=N",
    "POST /runs/{run_id}/stop        (Authorization: Bearer <token>)",
    'POST /predict                   {"run_id": ..., "inputs": [[...], ...]}',
)


@dataclass(frozen=True)
class ServeOptions:
    storage: str  # the checkpoint storage the runs live in (an absolute file:// URI, s3://, gs://)
    endpoint_url: str | None = None  # S3-compatible endpoint of that storage
    namespace: str = "elasticfl"  # the Ray namespace of the runs' controllers (status, stop)
    token_sha256: str | None = None  # None: no token configured, control endpoints are disabled
    public_predict: bool = False  # True: POST /predict needs no token
    run_id: str | None = None  # set: /predict serves this run only, and the body may omit run_id
    reload_s: float = DEFAULT_RELOAD_S
    max_batch: int = DEFAULT_MAX_BATCH
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_models: int = 8  # models (runs) a replica keeps loaded; the least recently used goes first
