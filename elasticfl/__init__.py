"""elasticfl: elastic federated learning on Ray, for mixed HPC and cloud clusters.

The configuration, errors and core math import without Ray; the functions
that run things (``run``, ``submit``, ...) load Ray on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import RunConfig
from . import errors as _errors
from .errors import *  # noqa: F403 - the whole error tree is public
from .weights import weights_sha256

__version__ = "0.1.0"

_API = ("run", "submit", "attach", "status", "stop", "checkpoints", "RunHandle", "RunResult")
_API += ("runs",)  # every run a cluster or storage knows
_JOBS = ("submit_job", "SubmittedJob")  # a run as a Ray job (elasticfl/jobs.py)

__all__ = [
    "RunConfig",
    "weights_sha256",
    *_errors.__all__,
    *_API,
    *_JOBS,
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in _JOBS:
        return getattr(import_module(".jobs", __name__), name)
    if name in _API:
        return getattr(import_module(".api", __name__), name)
    if name == "serve":  # elasticfl.serve(...) deploys the Ray Serve app (elasticfl/serving)
        return import_module(".serving", __name__).serve
    raise AttributeError(f"module 'elasticfl' has no attribute {name!r}")
