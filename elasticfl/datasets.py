"""In-memory data sets as numpy arrays: digits, MNIST, CIFAR-10, or your own.

MNIST and CIFAR-10 are read from the files torchvision's datasets keep on disk
(IDX files; CIFAR python pickles), so a folder torchvision filled works as is,
and so does one filled by hand on a machine without internet or torchvision.
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from elasticfl.errors import ConfigError

__all__ = ["Dataset", "load_digits", "load_mnist", "load_cifar10", "load_synthetic", "read_idx", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays: x float32 (rows first), y 1-D int64 class ids."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # A natural partition: client k's rows of x_train. None: the run's data.partition splits the rows.
    client_rows: tuple[np.ndarray, ...] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Catch a bad custom loader here, not rounds later inside an executor.
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.float32 or y.dtype != np.int64 or y.ndim != 1 or len(x) != len(y):
                raise ConfigError(
                    f"dataset {self.name!r}: x_{split} must be float32 and y_{split} 1-D int64 "
                    f"with one label per row; got x {x.dtype} {x.shape}, y {y.dtype} {y.shape}"
                )


def load_digits(test_size: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, split as in benchmarks/WORKLOADS.md (1437 train, 360 test)."""
    from sklearn.datasets import load_digits as sk_load_digits  # heavy; only when asked for
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"digits: test_size must be in (0, 1), e.g. 0.2; got {test_size!r}")
    raw = sk_load_digits()
    x = (raw.data / 16).astype(np.float32)  # pixels are 0..16
    y = raw.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


# IDX type codes (LeCun's MNIST page); all multi-byte values are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into an array of its declared type and shape."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    # Header: two zero bytes, a type code, the number of dims, then one uint32 per dim.
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ConfigError(
            f"{path} is not an IDX file (bad magic number 0x{data[:4].hex()}); "
            f"replace it with the original MNIST file"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    start = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:start]) if len(data) >= start else None
    if dims is None or len(data) - start != int(np.prod(dims)) * dtype.itemsize:
        raise ConfigError(
            f"{path}: the data does not match the IDX header's shape {dims}; "
            f"the file is truncated or corrupt, replace it"
        )
    # astype to native byte order also copies out of the read-only buffer.
    return np.frombuffer(data, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def _check_root(what: str, root: object) -> str:
    if not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"{what} needs root=<folder holding its data files>, got {root!r}")
    return os.fspath(root)


def _ensure_files(
    what: str, root: str, missing: Callable[[], list[str]], where: str, download: bool
) -> None:
    """Raise a ConfigError naming the missing files, after a torchvision download if asked."""
    if not missing():
        return
    hint = f"Put them in {where}, or pass download=True with torchvision installed."
    if download:
        try:
            import torchvision  # optional; only to fetch files we cannot find
        except ImportError:
            hint = "torchvision is not installed, so download=True cannot fetch them. " + hint
        else:
            cls = {"MNIST": torchvision.datasets.MNIST, "CIFAR-10": torchvision.datasets.CIFAR10}
            try:
                for train in (True, False):
                    cls[what](root, train=train, download=True)
            except Exception as e:  # network, disk, checksum: the fix is the same
                raise ConfigError(f"downloading {what} into {root!r} failed ({e}). {hint}") from e
    if missing():
        raise ConfigError(f"{what} files not found: missing {', '.join(missing())}. {hint}")


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_mnist_file(root: str, name: str) -> str | None:
    # torchvision keeps them in root/MNIST/raw; accept a flat folder too.
    for folder in (os.path.join(root, "MNIST", "raw"), root):
        for candidate in (name, name + ".gz"):
            if os.path.isfile(os.path.join(folder, candidate)):
                return os.path.join(folder, candidate)
    return None


def _read_mnist_split(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, lbl_path = (_find_mnist_file(root, n) for n in _MNIST_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"{img_path}: expected uint8 images (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise ConfigError(f"{lbl_path}: expected {len(images)} labels in 0..9")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def load_mnist(root: str, download: bool = False) -> Dataset:
    """MNIST from IDX files in ``root/MNIST/raw/`` or ``root/`` (60000 + 10000 rows x 784)."""
    root = _check_root("mnist", root)
    names = [n for pair in _MNIST_FILES.values() for n in pair]
    where = f"{os.path.join(root, 'MNIST', 'raw')} or {root} (plain or .gz)"
    _ensure_files(
        "MNIST", root, lambda: [n for n in names if not _find_mnist_file(root, n)], where, download
    )
    x_tr, y_tr = _read_mnist_split(root, "train")
    x_te, y_te = _read_mnist_split(root, "test")
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10)


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def _read_cifar_batches(folder: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in (os.path.join(folder, n) for n in names):
        # pickle can run code from the file: point root only at files you trust
        # (the official archive, or torchvision's copy of it).
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], np.int64)
        except Exception as e:
            raise ConfigError(f"{path} is not a CIFAR-10 python batch ({e}); replace it") from e
        if data.dtype != np.uint8 or data.shape != (len(labels), 3072):
            raise ConfigError(
                f"{path}: expected uint8 data (N, 3072) and N labels, "
                f"got {data.dtype} {data.shape} and {len(labels)} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(f"{path}: CIFAR-10 labels must be 0..9")
        xs.append(data)
        ys.append(labels)
    # Rows stay channel-first (1024 red, 1024 green, 1024 blue values), as in the files.
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def load_cifar10(root: str, download: bool = False) -> Dataset:
    """CIFAR-10 from ``root/cifar-10-batches-py/`` (50000 + 10000 rows x 3072, channel-first)."""
    root = _check_root("cifar10", root)
    folder = os.path.join(root, "cifar-10-batches-py")
    names = _CIFAR_TRAIN + _CIFAR_TEST
    where = f"{folder} (unpack cifar-10-python.tar.gz in {root})"
    _ensure_files(
        "CIFAR-10",
        root,
        lambda: [n for n in names if not os.path.isfile(os.path.join(folder, n))],
        where,
        download,
    )
    x_tr, y_tr = _read_cifar_batches(folder, _CIFAR_TRAIN)
    x_te, y_te = _read_cifar_batches(folder, _CIFAR_TEST)
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, 10)


def load_synthetic(
    num_devices: int = 30, alpha: float = 1.0, beta: float = 1.0, seed: int = 0, test_fraction: float = 0.1
) -> Dataset:
    """Synthetic(α, β) of Li et al. (FedProx, Sec. 5.1, after Shamir et al.): one data set per device.

    Device k draws u_k ~ N(0, α), B_k ~ N(0, β); W_k ~ N(u_k, 1) (60x10), b_k ~ N(u_k, 1);
    v_k ~ N(B_k, 1) (60); rows x ~ N(v_k, Σ) with Σ_jj = j^-1.2; y = argmax(W_k·x + b_k)
    (softmax does not change the argmax). α and β are standard deviations, as in the
    reference code (litian96/FedProx, data/synthetic_*/generate_niid.py), and so is its
    power law of sizes: lognormal(4, 2) + 50 rows per device. Each device's first
    (1 - test_fraction) rows go to x_train, the rest to the shared test set.

    Device k draws from its own generator seeded (seed, k), so its data do not depend
    on how many devices there are. ``client_rows[k]`` holds device k's training rows.
    """
    if num_devices < 1 or alpha < 0 or beta < 0 or not 0 < test_fraction < 1:
        raise ConfigError(
            f"synthetic: need num_devices >= 1, alpha >= 0, beta >= 0, 0 < test_fraction < 1; "
            f"got {num_devices}, {alpha}, {beta}, {test_fraction}"
        )
    dim, classes = 60, 10
    sd = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of Σ's diagonal j^-1.2
    parts = []
    for k in range(num_devices):
        rng = np.random.default_rng([seed, k])
        n = int(rng.lognormal(4, 2)) + 50
        u, big_b = rng.normal(0, alpha), rng.normal(0, beta)
        w, b = rng.normal(u, 1, (dim, classes)), rng.normal(u, 1, classes)
        v = rng.normal(big_b, 1, dim)
        x = v + rng.standard_normal((n, dim)) * sd
        y = np.argmax(x @ w + b, axis=1)
        parts.append((x.astype(np.float32), y.astype(np.int64), n - max(1, round(n * test_fraction))))
    x_train = np.concatenate([x[:t] for x, _, t in parts])
    y_train = np.concatenate([y[:t] for _, y, t in parts])
    ends = np.cumsum([t for *_, t in parts])
    rows = tuple(np.arange(end - t, end) for end, (*_, t) in zip(ends, parts))
    x_test = np.concatenate([x[t:] for x, _, t in parts])
    y_test = np.concatenate([y[t:] for _, y, t in parts])
    return Dataset(f"synthetic({alpha:g},{beta:g})", x_train, y_train, x_test, y_test, classes, rows)


_BUILTIN = {"digits": load_digits, "mnist": load_mnist, "cifar10": load_cifar10, "synthetic": load_synthetic}


def load_dataset(name: str, root: str | None = None, **params: object) -> Dataset:
    """Load a built-in data set by name, or call ``"package.module:function"``.

    ``root`` is the data folder (mnist and cifar10 need one; digits and synthetic
    take none); ``params`` go to the loader (digits: test_size, seed; mnist, cifar10:
    download; synthetic: num_devices, alpha, beta, seed). A custom function gets ``root=`` when given, and ``params``.
    """
    if name in _BUILTIN:
        fn = _BUILTIN[name]
    elif isinstance(name, str) and ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"dataset {name!r} could not be imported ({e})") from e
    else:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {sorted(_BUILTIN)} "
            f"or an import path 'package.module:function' that returns a Dataset"
        )
    if root is not None or name in ("mnist", "cifar10"):
        params = {"root": root, **params}
    try:  # check keywords first, so a TypeError raised inside the loader is not misreported
        inspect.signature(fn).bind(**params)
    except TypeError as e:
        raise ConfigError(f"dataset {name!r} does not take parameters {sorted(params)}") from e
    ds = fn(**params)
    if not isinstance(ds, Dataset):
        raise ConfigError(
            f"dataset loader {name!r} returned {type(ds).__name__}, not elasticfl.datasets.Dataset"
        )
    return ds
