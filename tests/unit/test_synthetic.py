"""Synthetic(α, β) (Li et al., FedProx Sec. 5.1): shapes, determinism, heterogeneity, one device per client."""

import numpy as np
import pytest

from elasticfl import ConfigError, RunConfig
from elasticfl.datasets import load_dataset, load_synthetic


def test_shapes_sizes_and_the_natural_partition():
    ds = load_synthetic(num_devices=20, alpha=0.5, beta=0.5, seed=1)
    assert ds.x_train.shape[1] == 60 and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9
    assert len(ds.client_rows) == 20
    rows = np.concatenate(ds.client_rows)
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(ds.x_train)))  # every row held once
    sizes = np.array([len(r) for r in ds.client_rows])
    # lognormal(4, 2) + 50 rows per device, 90% of them for training: at least 45, and a long tail
    assert sizes.min() >= 45 and sizes.max() > 3 * np.median(sizes)
    assert len(ds.x_test) == pytest.approx(0.1 * (len(ds.x_train) + len(ds.x_test)), rel=0.1)


def test_same_seed_same_bits_and_devices_do_not_depend_on_the_device_count():
    a, b = load_synthetic(10, 1, 1, seed=4), load_synthetic(10, 1, 1, seed=4)
    assert a.x_train.tobytes() == b.x_train.tobytes() and a.y_test.tobytes() == b.y_test.tobytes()
    assert load_synthetic(10, 1, 1, seed=5).x_train.tobytes() != a.x_train.tobytes()
    more = load_synthetic(15, 1, 1, seed=4)
    for k in range(10):  # device k draws from its own (seed, k) generator
        np.testing.assert_array_equal(more.x_train[more.client_rows[k]], a.x_train[a.client_rows[k]])


def _label_skew(ds):
    """Mean total-variation distance between each device's label histogram and the global one."""
    glob = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
    per = np.array([np.bincount(ds.y_train[r], minlength=10) / len(r) for r in ds.client_rows])
    return float(0.5 * np.abs(per - glob).sum(axis=1).mean())


def test_beta_spreads_the_devices_inputs_and_labels():
    spread, skew = {}, {}
    for beta in (0.0, 1.0, 5.0):
        ds = load_synthetic(50, 1.0, beta, seed=0)
        spread[beta] = float(np.std([ds.x_train[r].mean() for r in ds.client_rows]))
        skew[beta] = _label_skew(ds)
    # v_k ~ N(B_k, 1) with B_k ~ N(0, β): the device means' spread grows with β
    assert spread[0.0] < spread[1.0] < spread[5.0]
    assert spread[5.0] > 3 * spread[1.0]
    assert skew[5.0] > skew[0.0]


def test_alpha_shifts_every_logit_equally_so_labels_do_not_change():
    # u_k ~ N(0, α) is the mean of every entry of W_k and b_k: it adds u_k·(Σx + 1) to every
    # class's logit alike, so the argmax, the labels, and the label skew are the same for
    # any α (with the same seed). Heterogeneity across devices comes from W_k ~ N(u_k, 1)
    # being drawn per device and from β. This is how the paper and its code define it.
    low, high = load_synthetic(30, 0.0, 1.0, seed=2), load_synthetic(30, 5.0, 1.0, seed=2)
    assert (low.y_train == high.y_train).mean() > 0.999
    np.testing.assert_array_equal(low.x_train, high.x_train)
    assert _label_skew(low) > 0.5  # already far from IID: each device has its own W_k


def test_load_dataset_and_bad_parameters():
    ds = load_dataset("synthetic", num_devices=3, alpha=1.0, beta=1.0, seed=0)
    assert len(ds.client_rows) == 3
    with pytest.raises(ConfigError, match="synthetic"):
        load_synthetic(0)


def test_each_client_of_a_run_gets_its_own_device():
    from elasticfl.worker import ClientWorker

    cfg = RunConfig.from_dict(
        {
            "run": {"seed": 9},
            "task": {"type": "classification", "model": "linear"},
            "data": {"dataset": "synthetic", "num_clients": 6, "synthetic": {"alpha": 0.5, "beta": 0.5}},
        }
    )
    worker = ClientWorker(cfg)
    ds = load_synthetic(6, 0.5, 0.5, seed=9)  # the generator's seed is the partition seed: run.seed here
    for k in range(6):
        np.testing.assert_array_equal(worker.client_data(k).x, ds.x_train[ds.client_rows[k]])
    assert worker.data_shape() == (60, 10)
    seeded = cfg.with_overrides(data={"partition": {"seed": 4}})
    other = load_synthetic(6, 0.5, 0.5, seed=4)  # data.partition.seed overrides run.seed
    np.testing.assert_array_equal(ClientWorker(seeded).client_data(0).y, other.y_train[other.client_rows[0]])


def test_synthetic_data_is_not_partitioned_again():
    with pytest.raises(ConfigError, match="split per device already"):
        RunConfig.from_dict({"data": {"dataset": "synthetic", "partition": {"name": "dirichlet", "alpha": 0.1}}})


def test_a_run_on_synthetic_data_learns(tmp_path):
    from elasticfl.checkpoint import CheckpointStore
    from elasticfl.controller import Controller
    from elasticfl.worker import InProcessPool

    cfg = RunConfig.from_dict(
        {
            "run": {"rounds": 8, "seed": 0},
            "task": {"type": "classification", "model": "linear", "lr": 0.01, "epochs": 2},
            "data": {"dataset": "synthetic", "num_clients": 10, "synthetic": {"alpha": 0.0, "beta": 0.0}},
            "strategy": {"name": "fedprox", "mu": 0.01},
        }
    )
    c = Controller(cfg, "s", InProcessPool(cfg), CheckpointStore(str(tmp_path), "s"))
    c.run()
    accs = [h["metrics"]["accuracy"] for h in c.history]
    assert accs[-1] > accs[0] and accs[-1] > 0.3
