import subprocess
import sys

import elasticfl


def test_exported_names_are_pinned():
    assert sorted(elasticfl.__all__) == sorted(
        [
            "RunConfig", "weights_sha256", "ElasticFLError", "ConfigError", "CheckpointError",
            "CheckpointNotFoundError", "StorageError", "RunNotFoundError", "RunFailedError",
            "ClusterError", "TaskError", "run", "submit", "attach", "status",
            "stop", "checkpoints", "RunHandle", "RunResult", "submit_job", "runs", "SubmittedJob", "serve",
        ]
    )


def test_importing_the_package_loads_neither_ray_nor_torch():
    code = "import sys, elasticfl, elasticfl.controller, elasticfl.worker; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_errors_pickle():
    import pickle

    err = elasticfl.ConfigError("task.lr: must be > 0")
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
