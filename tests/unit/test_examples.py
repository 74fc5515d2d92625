"""The learning-algorithm examples reach their accuracy. In-process (no Ray): one torch
thread, as a Ray executor with num_cpus 1 has, so the bits are those of a Ray run
(FedBuff's arrival order aside, which in-process is first in, first out)."""

from pathlib import Path

import pytest
import torch

from elasticfl import RunConfig
from elasticfl.checkpoint import CheckpointStore
from elasticfl.controller import Controller, RunState
from elasticfl.worker import InProcessPool

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, accuracy", [("under_attack.yaml", 0.9), ("fedbuff.yaml", 0.9)])
def test_example_reaches_its_accuracy(name, accuracy, one_thread, tmp_path):
    config = RunConfig.from_yaml(EXAMPLES / name)
    c = Controller(config, "x", InProcessPool(config), CheckpointStore(str(tmp_path), "x"))
    assert c.run() is RunState.COMPLETED, c.error
    assert c.history[-1]["metrics"]["accuracy"] >= accuracy


def test_without_the_trimmed_mean_the_attack_wins(one_thread, tmp_path):
    config = RunConfig.from_yaml(EXAMPLES / "under_attack.yaml").to_dict()
    config["strategy"].pop("robust")
    config["run"]["rounds"] = 20
    config = RunConfig.from_dict(config)
    c = Controller(config, "x", InProcessPool(config), CheckpointStore(str(tmp_path), "x"))
    assert c.run() is RunState.COMPLETED, c.error
    assert c.history[-1]["metrics"]["accuracy"] < 0.5
