"""The Serve app's request checks, token guard and model reloading, without Ray or HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import elasticfl
from elasticfl.checkpoint import CheckpointStore
from elasticfl.serving import ServeOptions
from elasticfl.serving._inputs import RequestError, TokenGuard, hash_token, parse_json, predict_request, to_batch
from elasticfl.serving._models import ModelCache

TOKEN = "unit-test-token-0123456789"
OPTIONS = ServeOptions(storage="file:///nowhere")


def refused(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


# -- inputs -----------------------------------------------------------------------------

def test_good_rows_become_float32():
    x = to_batch([[1, 2.5, 3], [4, 5, 6]], (3,), max_batch=10)
    assert x.dtype == np.float32 and x.shape == (2, 3) and x[0, 1] == 2.5


def test_an_unknown_row_shape_takes_any_rank_2_or_more():
    assert to_batch([[[1, 2], [3, 4]]], None, max_batch=10).shape == (1, 2, 2)
    assert to_batch([[1, 2]], None, max_batch=10).shape == (1, 2)


@pytest.mark.parametrize(
    "inputs, status, words",
    [
        ([[1, 2]], 422, "each row must have 3 values; got rows of 2"),
        ([[1, 2, 3], [1, 2]], 422, "rows differ in length: inputs[0] has 3 values, inputs[1] has 2 values"),
        ([[1, 2, 3], 7], 422, "inputs[1] is int, not a row"),
        ([1, 2, 3], 422, "wrap a single example"),
        ([], 422, "inputs is empty"),
        ("1,2,3", 422, "not a string"),
        ({"a": 1}, 422, "not an object"),
        ([[1, "2", 3]], 422, "inputs[0][1] is a string (\"2\")"),
        ([[1, None, 3]], 422, "inputs[0][1] is null"),
        ([[1, {"x": 1}, 3]], 422, "inputs[0][1] is an object"),
        ([[1, [2], 3]], 422, "nests lists unevenly"),
        ([[True, False, True]], 422, "every value must be a number"),
        ([[1, float("nan"), 3]], 422, "inputs[0][1] is nan"),
        ([[1, 2, float("-inf")]], 422, "inputs[0][2] is -inf"),
        ([[1, 2, 1e300]], 422, "beyond float32's range"),
        ([[1, 2, 10**30]], 422, "beyond float32's range"),
        ([[1, 2, 3]] * 11, 413, "at most 10 per request"),
    ],
)
def test_bad_inputs_are_refused_with_what_is_wrong(inputs, status, words):
    err = refused(to_batch, inputs, (3,), max_batch=10)
    assert err.status == status and words in err.message, err.message


def test_booleans_among_numbers_are_caught_through_the_raw_body():
    body = json.dumps({"run_id": "r", "inputs": [[1.0, True, 3.0]]}).encode()
    payload = parse_json(body, 10_000)
    err = refused(to_batch, payload["inputs"], (3,), max_batch=10, raw=body)
    assert err.status == 422 and "inputs[0][1] is a boolean (true)" in err.message
    # a run id that merely contains the word does not make numbers suspect
    body = json.dumps({"run_id": "true-run", "inputs": [[1.0, 2.0, 3.0]]}).encode()
    assert to_batch(parse_json(body, 10_000)["inputs"], (3,), max_batch=10, raw=body).shape == (1, 3)


def test_bodies_that_are_not_json_or_too_large():
    assert refused(parse_json, b"{nope", 100).status == 400
    assert refused(parse_json, b"\xff\xfe", 100).status == 400
    err = refused(parse_json, b"[" + b"0," * 100 + b"0]", 100)
    assert err.status == 413 and "at most 100" in err.message
    assert parse_json(b"[NaN]", 100)[0] != parse_json(b"[NaN]", 100)[0]  # NaN parses; to_batch refuses it


@pytest.mark.parametrize(
    "payload, words",
    [
        ([], "must be a JSON object"),
        ({"run_id": "r"}, "missing field 'inputs'"),
        ({"inputs": [[1]]}, "missing field 'run_id'"),
        ({"run_id": "r", "inputs": [[1]], "input": 1}, "unknown field 'input' (did you mean 'inputs'?)"),
        ({"run_id": "a/b", "inputs": [[1]]}, "not a run id"),
        ({"run_id": 7, "inputs": [[1]]}, "not a run id"),
    ],
)
def test_predict_bodies_need_their_fields(payload, words):
    err = refused(predict_request, payload, OPTIONS)
    assert err.status == 422 and words in err.message, err.message


def test_a_pinned_run_makes_run_id_optional_and_refuses_others():
    pinned = ServeOptions(storage="file:///nowhere", run_id="mine")
    assert predict_request({"inputs": [[1]]}, pinned) == ("mine", [[1]])
    assert predict_request({"run_id": "mine", "inputs": [[1]]}, pinned)[0] == "mine"
    err = refused(predict_request, {"run_id": "other", "inputs": [[1]]}, pinned)
    assert err.status == 422 and "run 'mine' only" in err.message


# -- the token ----------------------------------------------------------------------------

def test_the_token_guard():
    guard = TokenGuard(hash_token(TOKEN))
    guard.check(f"Bearer {TOKEN}", "control")
    guard.check(f"bearer   {TOKEN} ", "predict")
    missing = refused(guard.check, None, "control")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert refused(guard.check, f"Basic {TOKEN}", "control").status == 401
    assert refused(guard.check, "Bearer", "control").status == 401
    assert refused(guard.check, f"Bearer {TOKEN}x", "control").status == 403
    assert refused(guard.check, None, "predict").status == 401


def test_without_a_token_control_is_disabled_and_says_how_to_enable_it():
    guard = TokenGuard(None)
    err = refused(guard.check, f"Bearer {TOKEN}", "control")
    assert err.status == 403 and "ELASTICFL_SERVE_TOKEN" in err.message and "--token-env" in err.message
    err = refused(guard.check, None, "predict")
    assert err.status == 403 and "public_predict" in err.message
    TokenGuard(None, public_predict=True).check(None, "predict")  # public predict needs nothing


def test_serve_options_hold_the_tokens_digest_not_the_token():
    assert TOKEN not in repr(ServeOptions(storage="x", token_sha256=hash_token(TOKEN)))


def test_serve_refuses_weak_tokens_and_bad_options_before_touching_ray():
    with pytest.raises(elasticfl.ConfigError, match="at least 16"):
        elasticfl.serve(token="short")
    with pytest.raises(elasticfl.ConfigError, match="port=0"):
        elasticfl.serve(token=TOKEN, port=0)
    with pytest.raises(elasticfl.ConfigError, match="route_prefix"):
        elasticfl.serve(token=TOKEN, route_prefix="api")
    with pytest.raises(elasticfl.ConfigError, match="run_id='a/b'"):
        elasticfl.serve(token=TOKEN, run_id="a/b")


def test_elasticfl_serve_is_a_function_that_loads_neither_ray_nor_fastapi_until_called():
    code = (
        "import sys, elasticfl, elasticfl.serving._inputs, elasticfl.serving._models; "
        "print(elasticfl.serve.__name__, 'ray' in sys.modules, 'fastapi' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["serve", "False", "False"]


# -- the model: predict, and reloading newer checkpoints --------------------------------

def _digits_config():
    return elasticfl.RunConfig.from_dict(
        {"run": {"name": "d"}, "task": {"type": "classification", "hidden": [8]}, "data": {"num_clients": 4}}
    )


def _save(store: CheckpointStore, round: int, seed: int) -> list[np.ndarray]:
    from elasticfl.tasks.classification import ClassificationTask

    config = _digits_config()
    weights = ClassificationTask(config.task).init_weights(seed, (64, 10))
    store.save(round, {f"weights/{i}": w for i, w in enumerate(weights)}, {"round": round, "config": config.to_dict()})
    return weights


def test_the_classifier_predicts_probabilities_and_knows_its_input_shape():
    from elasticfl.tasks._base import Predictor
    from elasticfl.tasks.classification import ClassificationTask

    task = ClassificationTask(_digits_config().task)
    weights = task.init_weights(0, (64, 10))
    assert isinstance(task, Predictor) and task.input_shape(weights) == (64,)
    x = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    p = task.predict(weights, x)
    assert p.shape == (5, 10) and p.dtype == np.float32 and np.allclose(p.sum(axis=1), 1, atol=1e-6)
    other = [w * 2 for w in weights]
    assert not np.allclose(task.predict(other, x), p)  # new weights are loaded, not the cached ones
    assert np.array_equal(task.predict(weights, x), p)
    with pytest.raises(elasticfl.TaskError, match="do not fit"):
        task.predict(weights, x[:, :10])


def test_the_cache_serves_the_latest_complete_checkpoint_and_reloads_newer_ones(tmp_path):
    now = [0.0]
    store = CheckpointStore(str(tmp_path), "run-a")
    cache = ModelCache(str(tmp_path), reload_s=5.0, clock=lambda: now[0])
    first = _save(store, 1, seed=1)
    model = cache.get("run-a")
    assert model.round == 1 and model.row_shape == (64,) and model.task_type == "classification"
    assert all(np.array_equal(a, b) for a, b in zip(model.weights, first))

    _save(store, 2, seed=2)
    half = tmp_path / "run-a" / "checkpoints" / "round-00000003"  # being written: no MANIFEST yet
    half.mkdir()
    (half / "arrays.bin").write_bytes(b"\0" * 64)
    now[0] = 1.0
    assert cache.get("run-a") is model  # checked at most every reload_s
    now[0] = 6.0
    newer = cache.get("run-a")
    assert newer.round == 2 and newer is not model
    now[0] = 12.0
    assert cache.get("run-a") is newer  # nothing newer that is complete: the same model

    x = np.zeros((2, 64), np.float32)
    assert newer.predict(x).shape == (2, 10)
    err = refused(cache.get, "no-such-run")
    assert err.status == 404 and "no complete checkpoint" in err.message
    assert set(cache._loading) <= {"run-a"}  # nothing kept for unknown runs


def test_the_cache_keeps_a_bounded_number_of_models(tmp_path):
    cache = ModelCache(str(tmp_path), reload_s=60, max_models=2)
    for run_id in ("a", "b", "c"):
        _save(CheckpointStore(str(tmp_path), run_id), 1, seed=0)
        cache.get(run_id)
    assert list(cache._models) == ["b", "c"] and set(cache._loading) <= {"b", "c"}


def test_a_task_without_predict_answers_501(tmp_path):
    config = elasticfl.RunConfig.from_dict(
        {"task": {"type": "custom", "path": "elasticfl.testing.tasks:NoisyMean"}, "data": {"dataset": "none", "num_clients": 2}}
    )
    CheckpointStore(str(tmp_path), "noisy").save(1, {"weights/0": np.zeros(8, np.float32)}, {"config": config.to_dict()})
    err = refused(ModelCache(str(tmp_path)).get, "noisy")
    assert err.status == 501 and "predict(weights, x)" in err.message


def test_the_cli_refuses_a_short_token_before_touching_ray(monkeypatch):
    from typer.testing import CliRunner

    from elasticfl_cli.main import app

    monkeypatch.setenv("SHORT_TOKEN", "short")
    result = CliRunner().invoke(app, ["serve", "--token-env", "SHORT_TOKEN"])
    assert result.exit_code == 2 and "at least 16" in result.output and "Traceback" not in result.output
