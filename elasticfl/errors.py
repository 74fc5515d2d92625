"""One error tree for elasticfl.

Every message names what to change. Exceptions cross actor boundaries, so each
class keeps its constructor arguments in ``args`` and pickles as is.
"""

from __future__ import annotations

__all__ = [
    "ElasticFLError",
    "ConfigError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "StorageError",
    "RunNotFoundError",
    "RunFailedError",
    "ClusterError",
    "TaskError",
]


class ElasticFLError(Exception):
    """Base of every error elasticfl raises on purpose."""


class ConfigError(ElasticFLError, ValueError):
    """A config value is wrong; the message names the field and the fix."""


class StorageError(ElasticFLError):
    """The checkpoint storage could not be reached or written (after retries)."""


class CheckpointError(ElasticFLError):
    """A checkpoint is unusable (corrupt, incompatible, or missing data)."""


class CheckpointNotFoundError(CheckpointError):
    """No complete checkpoint exists where one was asked for."""


class RunNotFoundError(ElasticFLError):
    """Neither the cluster nor the storage knows this run id."""


class RunFailedError(ElasticFLError):
    """A run ended in the failed state; the message says why."""


class ClusterError(ElasticFLError):
    """Ray could not be started, reached, or asked for the resources needed."""


class TaskError(ElasticFLError):
    """User task code (model factory, train, evaluate) could not be loaded or failed."""
