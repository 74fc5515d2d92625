"""elasticfl.datasets: the digits split; MNIST / CIFAR-10 readers on tiny real-format files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from elasticfl.datasets import (
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist,
    read_idx,
)
from elasticfl.errors import ConfigError

MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """Write ``arr`` as an IDX file: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    dims = struct.pack(f">{arr.ndim}I", *arr.shape)
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + dims
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    with (gzip.open(f"{path}.gz", "wb") if gz else open(path, "wb")) as f:
        f.write(payload)


def write_mnist(folder, gz: bool, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        img_name, lbl_name = MNIST_NAMES[split]
        write_idx(os.path.join(folder, img_name), images, gz)
        write_idx(os.path.join(folder, lbl_name), labels, gz)
        arrays[split] = (images, labels)
    return arrays


def write_cifar(root, n_per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]  # a list, as in the files
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        batches[name] = (data, labels)
    return batches


def test_digits_split_matches_workloads():
    ds = load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    # Stratified: every class is in the test set in about the same share.
    assert np.all(np.bincount(ds.y_test, minlength=10) >= 35)
    again = load_digits()
    assert np.array_equal(ds.x_train, again.x_train) and np.array_equal(ds.y_test, again.y_test)


@pytest.mark.parametrize("gz,subdir", [(True, ("MNIST", "raw")), (False, ())])
def test_mnist_round_trips(tmp_path, gz, subdir):
    arrays = write_mnist(tmp_path.joinpath(*subdir), gz=gz)
    ds = load_mnist(str(tmp_path))
    assert ds.name == "mnist" and ds.num_classes == 10
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        images, labels = arrays[split]
        assert x.dtype == np.float32 and x.shape == (len(images), 784)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, images.reshape(len(images), -1).astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_other_types(tmp_path, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) * 7 % 256).astype(dtype)
    if dtype != np.uint8:
        arr -= 100  # negatives check the signed, big-endian decoding
    write_idx(tmp_path / "a", arr)
    out = read_idx(str(tmp_path / "a"))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_corrupt_idx_magic_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0:4] = b"\x1f\x8b\x08\x03"  # e.g. a gzipped file saved without .gz
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte is not an IDX file.*magic"):
        load_mnist(str(tmp_path))


def test_truncated_idx_is_a_clear_error(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-1])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        load_mnist(str(tmp_path))


def test_mnist_missing_file_names_it(tmp_path):
    write_mnist(tmp_path, gz=False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(ConfigError, match=r"missing t10k-labels-idx1-ubyte\..*MNIST/raw"):
        load_mnist(str(tmp_path))


def test_download_without_torchvision_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ConfigError, match="missing train-images.*torchvision is not installed"):
        load_mnist(str(tmp_path), download=True)
    with pytest.raises(ConfigError, match="missing data_batch_1.*torchvision is not installed"):
        load_cifar10(str(tmp_path), download=True)


def test_download_uses_torchvision_when_present(tmp_path, monkeypatch):
    calls = []

    def fake_mnist(root, train, download):  # writes what torchvision would, where it would
        calls.append((root, train, download))
        if not train:
            write_mnist(os.path.join(root, "MNIST", "raw"), gz=False)

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=fake_mnist, CIFAR10=None)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    ds = load_mnist(str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert ds.x_train.shape == (5, 784)


def test_cifar10_round_trips(tmp_path):
    batches = write_cifar(tmp_path)
    ds = load_cifar10(str(tmp_path))
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (20, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    # Batches in order 1..5, rows kept channel-first exactly as stored.
    expected = np.concatenate([d for d, _ in train]) / np.float32(255)
    np.testing.assert_array_equal(ds.x_train, expected)
    np.testing.assert_array_equal(ds.y_train, np.concatenate([lbl for _, lbl in train]))
    np.testing.assert_array_equal(ds.x_test, batches["test_batch"][0] / np.float32(255))
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])


def test_cifar10_missing_batch_names_it(tmp_path):
    write_cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(ConfigError, match="missing data_batch_3.*cifar-10-batches-py"):
        load_cifar10(str(tmp_path))


def test_cifar10_bad_batch_shape(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ConfigError, match=r"test_batch: expected uint8 data \(N, 3072\)"):
        load_cifar10(str(tmp_path))


def test_load_dataset_by_name(tmp_path):
    assert load_dataset("digits").x_train.shape == (1437, 64)
    assert load_dataset("digits", test_size=0.5).x_test.shape == (899, 64)
    write_mnist(tmp_path, gz=True)
    assert load_dataset("mnist", root=str(tmp_path)).x_test.shape == (3, 784)


def test_load_dataset_import_path(monkeypatch):
    module = types.ModuleType("my_fl_data")
    z = np.zeros((2, 3), np.float32)
    y = np.zeros(2, np.int64)
    module.make = lambda root=None, n=2: Dataset(f"mine-{root}-{n}", z, y, z, y, 1)
    module.wrong = lambda: "not a dataset"
    monkeypatch.setitem(sys.modules, "my_fl_data", module)
    assert load_dataset("my_fl_data:make", root="/data", n=3).name == "mine-/data-3"
    assert load_dataset("my_fl_data:make").name == "mine-None-2"
    with pytest.raises(ConfigError, match="returned str"):
        load_dataset("my_fl_data:wrong")
    with pytest.raises(ConfigError, match="could not be imported"):
        load_dataset("my_fl_data:missing")
    with pytest.raises(ConfigError, match="could not be imported"):
        load_dataset("no_such_module_xyz:make")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "imagenet"}, "unknown dataset 'imagenet'.*cifar10.*digits.*mnist"),
        ({"name": "digits", "root": "/data"}, "does not take parameters.*root"),
        ({"name": "digits", "download": True}, "does not take parameters.*download"),
        ({"name": "digits", "test_size": 1.5}, "test_size must be in"),
        ({"name": "mnist"}, "mnist needs root="),
        ({"name": "cifar10"}, "cifar10 needs root="),
    ],
)
def test_load_dataset_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset(**kwargs)


def test_dataset_checks_types():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(ConfigError, match="float32"):
        Dataset("bad", z.astype(np.float64), np.zeros(2, np.int64), z, np.zeros(2, np.int64), 1)
    with pytest.raises(ConfigError, match="one label per row"):
        Dataset("bad", z, np.zeros(3, np.int64), z, np.zeros(2, np.int64), 1)
