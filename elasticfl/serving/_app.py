"""The Serve deployment: a FastAPI app over the runs of one checkpoint storage.

    GET  /                      what this app serves, and its endpoints
    GET  /healthz               {"ok": true}
    GET  /runs                  runs in the storage, with state and round from their status.json
    GET  /runs/{run_id}         a run's status: from its live controller, else its status.json
    GET  /runs/{run_id}/history its round records (?after=N: only rounds after N)
    POST /runs/{run_id}/stop    graceful stop (bearer token)
    POST /predict               {"run_id": ..., "inputs": [[...], ...]} -> the latest checkpoint's outputs
                                (bearer token, unless deployed with public_predict)

Errors answer ``{"detail": "what is wrong and what to do"}`` with a 4xx/5xx status.

No ``from __future__ import annotations`` here: Serve rebuilds the routes of the class and
needs real annotations to tell a ``Request`` parameter from a query parameter.
"""


import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from starlette.concurrency import run_in_threadpool

from ..checkpoint import CheckpointStore, list_runs
from ..controller import STATUS_FILE, RunState
from ..errors import ConfigError, StorageError
from ..runtime import controller_name
from ._inputs import RequestError, TokenGuard, check_run_id, parse_json, predict_request, to_batch
from ._models import ModelCache
from ._options import ENDPOINTS, ServeOptions

__all__ = ["ElasticFLApp"]

log = logging.getLogger("elasticfl.serving")

_ACTOR_TIMEOUT_S = 30.0
_LIVE_ERRORS = (RayActorError, ActorUnavailableError, GetTimeoutError)

api = FastAPI(title="elasticfl", description="Runs, status, history, stop and predictions of elasticfl runs.")


@api.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)


@api.exception_handler(StorageError)
async def _storage_down(request: Request, exc: StorageError) -> JSONResponse:
    return JSONResponse({"detail": f"the checkpoint storage cannot be read: {exc}"}, status_code=503)


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class ElasticFLApp:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.guard = TokenGuard(options.token_sha256, options.public_predict)
        self.models = ModelCache(
            options.storage, endpoint_url=options.endpoint_url, reload_s=options.reload_s, max_models=options.max_models
        )

    # -- reading -----------------------------------------------------------------------
    @api.get("/")
    def index(self) -> dict[str, Any]:
        o = self.options
        return {
            "service": "elasticfl",
            "storage": o.storage,
            "namespace": o.namespace,
            "run_id": o.run_id,
            "control_enabled": self.guard.configured,
            "predict_needs_token": not o.public_predict,
            "max_batch": o.max_batch,
            "reload_s": o.reload_s,
            "endpoints": list(ENDPOINTS),
        }

    @api.get("/healthz")
    def healthz(self) -> dict[str, bool]:
        return {"ok": True}

    @api.get("/runs")
    def runs(self) -> dict[str, Any]:
        o = self.options
        try:
            run_ids = list_runs(o.storage, endpoint_url=o.endpoint_url)
        except ConfigError as exc:
            raise RequestError(500, f"the app's storage is misconfigured: {exc}") from exc

        def summary(run_id: str) -> dict[str, Any]:
            try:
                saved = self._store(run_id).read_json(STATUS_FILE) or {}
            except Exception as exc:  # one unreadable run must not hide the others
                saved = {"error": f"{STATUS_FILE} unreadable: {exc}"}
            keys = ("name", "state", "round", "rounds", "updated_at", "error")
            return {"run_id": run_id, **{k: saved.get(k) for k in keys}}

        with ThreadPoolExecutor(max_workers=8) as pool:
            found = list(pool.map(summary, run_ids))
        return {"storage": o.storage, "runs": found}

    @api.get("/runs/{run_id}")
    def status(self, run_id: str) -> dict[str, Any]:
        actor = self._controller(run_id)
        if actor is not None:
            try:
                return ray.get(actor.status.remote(), timeout=_ACTOR_TIMEOUT_S)
            except _LIVE_ERRORS:  # exiting or restarting: its storage has the last word
                pass
        return self._saved_status(run_id)

    @api.get("/runs/{run_id}/history")
    def history(self, run_id: str, after: int = Query(0, ge=0, description="only rounds after this one")) -> dict[str, Any]:
        actor = self._controller(run_id)
        if actor is not None:
            try:
                status, records = ray.get(actor.poll.remote(after), timeout=_ACTOR_TIMEOUT_S)
                return {"run_id": run_id, "state": status["state"], "round": status["round"], "history": records}
            except _LIVE_ERRORS:
                pass
        saved = self._saved_status(run_id)
        records = self._store(run_id).read_round_records(int(saved.get("round") or 0))
        return {
            "run_id": run_id,
            "state": saved.get("state"),
            "round": saved.get("round"),
            "history": [r for r in records if r.get("round", 0) > after],
        }

    # -- control -----------------------------------------------------------------------
    @api.post("/runs/{run_id}/stop", status_code=202)
    def stop(self, run_id: str, request: Request) -> dict[str, Any]:
        self.guard.check(request.headers.get("authorization"), "control")
        actor = self._controller(run_id)
        if actor is None:
            saved = self._saved_status(run_id)
            raise RequestError(
                409,
                f"run {run_id!r} has no live controller in namespace {self.options.namespace!r} on this cluster "
                f"(its status.json says {saved.get('state')!r}); nothing to stop",
            )
        try:
            state = ray.get(actor.status.remote(), timeout=_ACTOR_TIMEOUT_S)["state"]
            if RunState(state).finished:
                raise RequestError(409, f"run {run_id!r} is {state} already; nothing to stop")
            ray.get(actor.stop.remote(), timeout=_ACTOR_TIMEOUT_S)
        except _LIVE_ERRORS as exc:
            raise RequestError(503, f"run {run_id!r}'s controller did not answer ({type(exc).__name__}); try again") from exc
        log.info("stop requested for run %s over HTTP", run_id)
        return {
            "run_id": run_id,
            "stop_requested": True,
            "state": state,
            "detail": "the round in flight finishes and is checkpointed, then the run stops",
        }

    # -- predictions -------------------------------------------------------------------
    @api.post("/predict")
    async def predict(self, request: Request) -> dict[str, Any]:
        self.guard.check(request.headers.get("authorization"), "predict")
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:  # refuse before reading it
            raise RequestError(413, f"the request body is {declared} bytes; this app takes at most {limit} (split the batch)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(413, f"the request body exceeds {limit} bytes; split the batch")
        return await run_in_threadpool(self._predict, bytes(body))

    def _predict(self, raw: bytes) -> dict[str, Any]:
        run_id, inputs = predict_request(parse_json(raw, self.options.max_body_bytes), self.options)
        model = self.models.get(run_id)
        x = to_batch(inputs, model.row_shape, self.options.max_batch, raw)
        out = model.predict(x)
        answer: dict[str, Any] = {"run_id": run_id, "round": model.round, "checkpoint": model.uri}
        if model.task_type == "classification" and out.ndim == 2:
            answer["labels"] = out.argmax(axis=1).tolist()
        answer["outputs"] = out.tolist()
        return answer

    # -- helpers -------------------------------------------------------------------------
    def _store(self, run_id: str) -> CheckpointStore:
        check_run_id(run_id)
        return CheckpointStore(self.options.storage, run_id, endpoint_url=self.options.endpoint_url)

    def _saved_status(self, run_id: str) -> dict[str, Any]:
        store = self._store(run_id)
        saved = store.read_json(STATUS_FILE)
        if saved is None:
            raise RequestError(
                404, f"run {run_id!r} not found: no live controller and no {STATUS_FILE} under {store.run_uri}"
            )
        return saved

    def _controller(self, run_id: str) -> Any:
        check_run_id(run_id)
        try:
            return ray.get_actor(controller_name(run_id), namespace=self.options.namespace)
        except ValueError:
            return None
