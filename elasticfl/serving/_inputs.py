"""Request checks of the Serve app, as plain functions (no Ray, no web framework).

Status codes: 400 the body is not JSON; 401 no bearer token; 403 a wrong token, or
the endpoint is disabled; 413 the body or the batch is too large; 422 valid JSON
whose content is wrong (fields, shape, types, non-finite values).
"""

from __future__ import annotations

import difflib
import hashlib
import hmac
import json
import re
from typing import Any

import numpy as np

from ._options import ServeOptions

__all__ = [
    "RequestError",
    "TokenGuard",
    "hash_token",
    "parse_json",
    "predict_request",
    "to_batch",
    "check_run_id",
]

RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")  # as CheckpointStore accepts
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PREDICT_FIELDS = ("run_id", "inputs")
TOKEN_HINT = (
    "set ELASTICFL_SERVE_TOKEN where the app is deployed (or pass elasticfl.serve(token=...), "
    "`elasticfl serve --token-env VAR`) and deploy again"
)


class RequestError(Exception):
    """A request the app refuses: an HTTP status and a message that says what to change."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# -- authentication ------------------------------------------------------------------

def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenGuard:
    """Bearer-token checks. Serve's HTTP port is outside Ray's token authentication."""

    def __init__(self, token_sha256: str | None, public_predict: bool = False) -> None:
        self._digest = bytes.fromhex(token_sha256) if token_sha256 else None
        self.public_predict = public_predict

    @property
    def configured(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None, action: str) -> None:
        """``action``: "control" (stop) or "predict". Raises RequestError(401/403) to refuse."""
        if action == "predict" and self.public_predict:
            return
        if self._digest is None:
            what = "control endpoints (stop) are" if action == "control" else "POST /predict is"
            extra = "" if action == "control" else ", or deploy with public_predict=True (--public-predict)"
            raise RequestError(403, f"{what} disabled: this app was deployed without a token; {TOKEN_HINT}{extra}")
        challenge = {"WWW-Authenticate": 'Bearer realm="elasticfl"'}
        if not authorization:
            raise RequestError(401, "this endpoint needs a token: send the header 'Authorization: Bearer <token>'", challenge)
        scheme, _, presented = authorization.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise RequestError(401, "the Authorization header must read 'Bearer <token>'", challenge)
        if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest):
            raise RequestError(403, "the bearer token is not this app's token")


# -- POST /predict -------------------------------------------------------------------

def parse_json(body: bytes, max_bytes: int) -> Any:
    if len(body) > max_bytes:
        raise RequestError(413, f"the request body is {len(body)} bytes; this app takes at most {max_bytes} (split the batch)")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from None


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise RequestError(422, f"run_id {run_id!r} is not a run id (letters, digits, '.', '_', '-')")
    return run_id


def predict_request(payload: Any, options: ServeOptions) -> tuple[str, Any]:
    """(run_id, the raw inputs) of a /predict body: {"run_id": "...", "inputs": [[...], ...]}."""
    example = '{"run_id": "RUN_ID", "inputs": [[0.0, 0.5, ...], ...]}'
    if not isinstance(payload, dict):
        raise RequestError(422, f"the body must be a JSON object like {example}, not {type(payload).__name__}")
    unknown = sorted(set(payload) - set(_PREDICT_FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _PREDICT_FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RequestError(422, f"unknown field {unknown[0]!r}{hint}; the body takes {list(_PREDICT_FIELDS)}")
    if "inputs" not in payload:
        raise RequestError(422, f"missing field 'inputs': a list of rows, e.g. {example}")
    run_id = payload.get("run_id")
    if options.run_id is not None:
        if run_id is not None and run_id != options.run_id:
            raise RequestError(422, f"this app predicts with run {options.run_id!r} only; omit run_id or send that one")
        run_id = options.run_id
    elif run_id is None:
        raise RequestError(422, f"missing field 'run_id': which run's model should answer, e.g. {example}")
    return check_run_id(run_id), payload["inputs"]


def to_batch(inputs: Any, row_shape: tuple[int, ...] | None, max_batch: int, raw: bytes | None = None) -> np.ndarray:
    """JSON rows -> a float32 array of shape (n, *row_shape), or RequestError(413/422).

    ``row_shape`` None: the model's row shape is unknown; any shape of rank >= 2 passes.
    ``raw``, the request body, lets booleans mixed into numbers be caught cheaply.
    """
    want = f"shape (n, {', '.join(map(str, row_shape))})" if row_shape is not None else "a list of rows"
    if not isinstance(inputs, list):
        raise RequestError(422, f"inputs must be a list of rows ({want}), not {_kind(inputs)}")
    if not inputs:
        raise RequestError(422, "inputs is empty: send at least one row")
    if not isinstance(inputs[0], list):
        raise RequestError(422, f"inputs must be a list of rows ({want}); wrap a single example in a list: [[...]]")
    if len(inputs) > max_batch:
        raise RequestError(
            413, f"inputs has {len(inputs)} rows; this app takes at most {max_batch} per request (split the batch)"
        )
    try:
        array = np.array(inputs)
    except (ValueError, TypeError, OverflowError):  # ragged rows (numpy >= 1.24 refuses them)
        raise RequestError(422, _ragged(inputs, want)) from None
    if array.dtype.kind not in "iuf":
        raise RequestError(422, _not_numbers(inputs, array))
    if raw is not None and (b"true" in raw or b"false" in raw):  # numpy turns booleans among numbers into 1/0
        found = _first(inputs, lambda v: isinstance(v, bool))
        if found:
            raise RequestError(422, f"inputs{found[0]} is a boolean ({json.dumps(found[1])}); send numbers")
    if array.ndim < 2:
        raise RequestError(422, f"inputs must be a list of rows ({want}); got shape {array.shape}")
    if row_shape is not None and array.shape[1:] != tuple(row_shape):
        got = array.shape[1:]
        if len(got) == len(row_shape) == 1:
            detail = f"each row must have {row_shape[0]} values; got rows of {got[0]}"
        else:
            detail = f"each row must have shape {tuple(row_shape)}; got {got}"
        raise RequestError(422, f"inputs has shape {array.shape}, the model takes {want}: {detail}")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise RequestError(422, f"inputs{_path(where)} is {array[where]}: every value must be a finite number")
    if array.size and float(np.abs(array).max()) > _FLOAT32_MAX:
        where = tuple(int(i) for i in np.unravel_index(int(np.abs(array).argmax()), array.shape))
        raise RequestError(422, f"inputs{_path(where)} = {array[where]} is beyond float32's range (±{_FLOAT32_MAX:.3g})")
    return array.astype(np.float32)


def _kind(value: Any) -> str:
    return {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _path(index: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in index)


def _first(value: Any, bad, index: tuple[int, ...] = ()) -> tuple[str, Any] | None:
    """The path and value of the first leaf for which ``bad`` holds, depth first (error paths only)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first(item, bad, index + (i,))
            if found:
                return found
        return None
    return (_path(index), value) if bad(value) else None


def _not_numbers(inputs: list, array: np.ndarray) -> str:
    def non_number(v: Any) -> bool:
        return isinstance(v, bool) or not isinstance(v, (int, float))

    found = _first(inputs, non_number)
    if found is None:  # all numbers, yet not numeric: an integer beyond 64 bits, or all booleans
        found = _first(inputs, lambda v: isinstance(v, int) and not -(2**63) <= v < 2**64)
        if found:
            return f"inputs{found[0]} = {found[1]} is beyond float32's range"
        return f"inputs must hold numbers; got {array.dtype}"
    path, value = found
    return f"inputs{path} is {_kind(value)} ({json.dumps(value)[:40]}); every value must be a number"


def _ragged(inputs: list, want: str) -> str:
    def shape(row: Any) -> tuple[int, ...] | None:
        try:
            return np.shape(row)
        except ValueError:  # lists nested unevenly
            return None

    def describe(s: tuple[int, ...]) -> str:
        return f"{s[0]} values" if len(s) == 1 else f"shape {s}"

    first = shape(inputs[0])
    for i, row in enumerate(inputs):
        if not isinstance(row, list):
            return f"inputs[{i}] is {_kind(row)}, not a row; inputs must be {want}"
        s = shape(row)
        if s is None or first is None:
            return f"inputs[{i if s is None else 0}] nests lists unevenly; inputs must be {want}"
        if s != first:
            return f"rows differ in length: inputs[0] has {describe(first)}, inputs[{i}] has {describe(s)}; inputs must be {want}"
    return f"inputs must be {want}, rows of equal length"
