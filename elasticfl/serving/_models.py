"""The models a replica answers /predict with: the latest complete checkpoint of each run.

No Ray here. A run's model is loaded from its newest checkpoint that verifies
(``CheckpointStore.latest()``: a checkpoint without its MANIFEST, one still being
written, is invisible; one whose checksums fail is skipped). At most every
``reload_s`` seconds, a request looks for a newer checkpoint, by listing the
manifests; only a newer round is read and swapped in. Requests in flight keep the
model they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..checkpoint import Checkpoint, CheckpointStore
from ..config import RunConfig
from ..errors import ConfigError, ElasticFLError, StorageError, TaskError
from ._inputs import RequestError

__all__ = ["LoadedModel", "ModelCache", "BUILTIN_ROW_SHAPES"]

log = logging.getLogger("elasticfl.serving")

# Rows of the built-in data sets, for models whose weights do not tell (a task.model factory).
BUILTIN_ROW_SHAPES = {"digits": (64,), "mnist": (784,), "cifar10": (3072,)}


@dataclass
class LoadedModel:
    run_id: str
    round: int
    uri: str
    task: Any
    task_type: str  # "classification" or "custom"
    weights: list[np.ndarray] = field(repr=False)
    row_shape: tuple[int, ...] | None  # one input row's shape; None: unknown
    checked_at: float  # when storage was last asked for a newer checkpoint (monotonic clock)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.lock:  # one model per run and replica: its tensors are not shared between threads
            try:
                out = np.asarray(self.task.predict(self.weights, x))
            except TaskError as exc:
                raise RequestError(422, f"run {self.run_id!r}'s model refused the inputs: {exc}") from exc
        if out.ndim == 0 or out.shape[0] != x.shape[0]:
            raise RequestError(500, f"run {self.run_id!r}'s task.predict returned shape {out.shape} for {x.shape[0]} rows")
        if out.dtype.kind in "fc" and not np.isfinite(out).all():
            raise RequestError(500, f"run {self.run_id!r}'s model produced non-finite outputs for these inputs")
        return out


def load_model(checkpoint: Checkpoint, run_id: str, now: float) -> LoadedModel:
    """The task of a checkpoint's config, with the checkpoint's weights."""
    from ..controller._controller import _unflatten_state
    from ..tasks import build_task

    try:
        config = RunConfig.from_dict(checkpoint.state["config"], source=f"checkpoint {checkpoint.uri}")
    except (KeyError, TypeError, ConfigError) as exc:
        raise RequestError(500, f"run {run_id!r}: the config in {checkpoint.uri} is unusable: {exc}") from exc
    weights = _unflatten_state(checkpoint.arrays, {})[0]
    try:
        task = build_task(config.task)
    except (ElasticFLError, ImportError) as exc:
        raise RequestError(
            500,
            f"run {run_id!r}: its task cannot be built on this replica ({exc}); "
            "user code must be importable where the Serve app runs",
        ) from exc
    if not callable(getattr(task, "predict", None)):
        raise RequestError(
            501,
            f"run {run_id!r}'s task ({getattr(config.task, 'path', config.task.type)}) has no "
            "predict(weights, x) method; see elasticfl.tasks.Predictor",
        )
    row_shape = None
    if callable(getattr(task, "input_shape", None)):
        row_shape = task.input_shape(weights)
    if row_shape is None:
        row_shape = BUILTIN_ROW_SHAPES.get(config.data.dataset)
    return LoadedModel(
        run_id=run_id,
        round=checkpoint.round,
        uri=checkpoint.uri,
        task=task,
        task_type=config.task.type,
        weights=weights,
        row_shape=tuple(int(s) for s in row_shape) if row_shape is not None else None,
        checked_at=now,
    )


class ModelCache:
    """Run id -> its LoadedModel, reloaded when a newer checkpoint lands (LRU-bounded)."""

    def __init__(
        self,
        storage: str,
        *,
        endpoint_url: str | None = None,
        reload_s: float = 5.0,
        max_models: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage, self.endpoint_url = storage, endpoint_url
        self.reload_s, self.max_models, self.clock = reload_s, max_models, clock
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # guards _models and _loading
        self._loading: dict[str, threading.Lock] = {}  # one loader per run at a time

    def get(self, run_id: str) -> LoadedModel:
        with self._lock:
            model = self._models.get(run_id)
            if model is not None:
                self._models.move_to_end(run_id)
                if self.clock() - model.checked_at < self.reload_s:
                    return model
            loading = self._loading.setdefault(run_id, threading.Lock())
        try:
            with loading:
                with self._lock:  # another request may have just checked
                    model = self._models.get(run_id)
                if model is not None and self.clock() - model.checked_at < self.reload_s:
                    return model
                fresh = self._refresh(run_id, model)
                with self._lock:
                    self._models[run_id] = fresh
                    self._models.move_to_end(run_id)
                    while len(self._models) > self.max_models:
                        evicted, _ = self._models.popitem(last=False)
                        self._loading.pop(evicted, None)
                return fresh
        finally:
            with self._lock:  # no lock kept for unknown run ids: requests cannot grow this dict
                if run_id not in self._models:
                    self._loading.pop(run_id, None)

    def _refresh(self, run_id: str, current: LoadedModel | None) -> LoadedModel:
        now = self.clock()
        try:
            store = CheckpointStore(self.storage, run_id, endpoint_url=self.endpoint_url)
        except ConfigError as exc:
            raise RequestError(422, str(exc)) from None
        try:
            listed = store.list()  # manifests only: cheap, and what lists is complete
            newest = listed[-1].round if listed else None
            if current is not None and newest == current.round:
                current.checked_at = now
                return current
            checkpoint = store.latest() if listed else None  # newest that verifies
        except StorageError as exc:
            if current is not None:  # storage hiccup: keep answering with the model we have
                log.warning("run %s: could not look for a newer checkpoint (%s); keeping round %d", run_id, exc, current.round)
                current.checked_at = now
                return current
            raise RequestError(503, f"run {run_id!r}: the checkpoint storage cannot be read: {exc}") from exc
        if checkpoint is None:
            if current is not None:
                current.checked_at = now
                return current
            raise RequestError(
                404, f"run {run_id!r} has no complete checkpoint under {store.run_uri}; check the run id and the app's storage"
            )
        if current is not None and checkpoint.round == current.round:
            current.checked_at = now
            return current
        loaded = load_model(checkpoint, run_id, now)
        log.info("run %s: serving round %d (%s)", run_id, loaded.round, loaded.uri)
        return loaded
