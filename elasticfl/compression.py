"""Compressed client updates, with error feedback (pure numpy).

A client sends its delta Δ = client weights − global weights through a codec;
the server decodes it and aggregates what it decoded. Each codec works array by
array (floating-point arrays only: integer or boolean arrays, e.g. BatchNorm's
``num_batches_tracked``, travel as they are under every codec):

``none``
    The arrays as they are: 4 bytes a value for float32 (8 for float64).
``fp16``
    A cast to IEEE half precision: 2 bytes a value, ~3 significant digits.
    Values beyond fp16's range are clipped to ±65504 rather than becoming ±inf
    (with error feedback, the clipped excess is carried in the residual).
``int8``
    QSGD-style quantisation (Alistarh et al. 2017, "QSGD: Communication-Efficient
    SGD via Gradient Quantization"), one scale per array: x is mapped to
    y = x / s with s = max|x| / 127, and y is rounded to one of its two
    neighbouring integers in [-127, 127] *stochastically*, up with probability
    equal to its fractional part. Then E[decode(encode(x))] = x: the codec is
    unbiased, with an error below s in every entry. 1 byte a value plus a
    4-byte float32 scale per array.
``topk``
    Top-k sparsification (Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with
    Memory"; Aji & Heafield 2017): each array keeps its k = max(1,
    ceil(topk_fraction · size)) largest-magnitude entries and drops the rest.
    8 bytes per kept value (an int32 index and a float32 value): at the default
    fraction of 1 %, 0.08 bytes per value of the array.

Error feedback (Seide et al. 2014, "1-bit SGD"; Karimireddy et al. 2019, "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes"): the client keeps
a residual e, sends C(Δ + e) and keeps e' = (Δ + e) − C(Δ + e). Everything
compressed away is sent later, so the sum of what the server received tracks the
sum of the true deltas up to the current (bounded) residual. This matters for
biased codecs: top-k sends the same large coordinates round after round and,
without error feedback, coordinates that are small but consistent are never sent
at all, a bias that does not average out. Unbiased codecs (int8 with stochastic
rounding) lose no mass in expectation, so error feedback only lowers their
variance and is optional. The residual is the caller's to keep per client (and
to checkpoint); this module only computes it.

Everything is deterministic given the ``rng`` passed in (only int8 draws from
it: one uniform number per value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .weights import Weights

__all__ = ["CODECS", "EncodedArray", "Encoded", "encode", "decode", "compress", "topk_count"]

CODECS = ("none", "fp16", "int8", "topk")

_FP16_MAX = float(np.finfo(np.float16).max)  # 65504
_INT8_LEVELS = 127  # symmetric: codes in [-127, 127], so -128 is never used


@dataclass(frozen=True)
class EncodedArray:
    """One array as it travels: its payload arrays plus what is needed to rebuild it.

    ``codec`` is the codec applied to this array ("none" for a non-float array).
    Payload by codec: none (values,); fp16 (float16 values,); int8 (int8 codes,
    float32 scale of shape ()); topk (int32 flat indices, float32 values).
    """

    codec: str
    shape: tuple[int, ...]
    dtype: np.dtype
    payload: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.payload))


@dataclass(frozen=True)
class Encoded:
    """One client's delta as it travels; ``nbytes`` is the exact payload size in bytes."""

    codec: str
    arrays: tuple[EncodedArray, ...]
    nbytes: int


# -- validation --------------------------------------------------------------------------

def _check_settings(codec: str, topk_fraction: float) -> None:
    if codec not in CODECS:
        raise ValueError(f"compression.codec must be one of {CODECS}, got {codec!r}")
    if isinstance(topk_fraction, bool) or not isinstance(topk_fraction, (int, float)) or not 0 < topk_fraction <= 1:
        raise ValueError(f"compression.topk_fraction must be in (0, 1], got {topk_fraction!r}")


def _check_delta(delta: Sequence[np.ndarray], name: str = "delta") -> None:
    if not isinstance(delta, (list, tuple)):
        raise TypeError(f"{name} must be a list of numpy arrays, got {type(delta).__name__}")
    for i, a in enumerate(delta):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} array {i} is a {type(a).__name__}, not a numpy array")
        if a.dtype.kind not in "fiub":
            raise ValueError(f"{name} array {i} has dtype {a.dtype}, which cannot be compressed")


# -- per-array codecs --------------------------------------------------------------------

def topk_count(size: int, topk_fraction: float) -> int:
    """k = max(1, ceil(fraction · size)), at most size (0 for an empty array).

    The product is rounded to 9 decimals before the ceiling, so that float noise
    (0.07 · 100 = 7.000000000000001) does not add an entry.
    """
    if size == 0:
        return 0
    return min(size, max(1, math.ceil(round(topk_fraction * size, 9))))


def _encode_int8(flat: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    amax = float(np.max(np.abs(flat))) if flat.size else 0.0
    if amax == 0.0:
        return np.zeros(flat.shape, np.int8), np.array(0.0, np.float32)
    scale = np.float32(amax / _INT8_LEVELS)
    if float(scale) * _INT8_LEVELS < amax:  # float32 rounded the scale down: round it up, so |y| <= 127
        scale = np.nextafter(scale, np.float32(np.inf))
    y = flat.astype(np.float64) / float(scale)
    low = np.floor(y)
    # Stochastic rounding: up with probability y - floor(y), so E[code] = y (unbiased).
    codes = low + (rng.random(flat.size) < (y - low))
    np.clip(codes, -_INT8_LEVELS, _INT8_LEVELS, out=codes)  # a safeguard: |y| <= 127 already
    return codes.astype(np.int8), np.array(scale, np.float32)


def _encode_topk(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest |x|; ties at the threshold go to the lowest indices, so the
    choice is reproducible (np.argpartition alone is not stable). O(size)."""
    if flat.size > np.iinfo(np.int32).max:
        raise ValueError(f"topk indexes arrays with int32, and an array has {flat.size} entries")
    if k == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    mag = np.abs(flat)
    threshold = np.partition(mag, flat.size - k)[flat.size - k]  # the k-th largest magnitude
    above = np.flatnonzero(mag > threshold)
    at = np.flatnonzero(mag == threshold)[: k - above.size]
    index = np.sort(np.concatenate([above, at]))
    return index.astype(np.int32), flat[index].astype(np.float32)


def _encode_array(a: np.ndarray, codec: str, rng: np.random.Generator, topk_fraction: float, i: int) -> EncodedArray:
    shape, dtype = tuple(a.shape), a.dtype
    if codec == "none" or dtype.kind != "f":
        return EncodedArray("none", shape, dtype, (np.ascontiguousarray(a),))
    flat = a.reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError(f"delta array {i} contains NaN or infinite values")
    if codec == "fp16":
        # Clip to fp16's largest finite value: a cast alone would turn larger values into ±inf.
        payload: tuple[np.ndarray, ...] = (np.clip(flat, -_FP16_MAX, _FP16_MAX).astype(np.float16),)
    elif codec == "int8":
        payload = _encode_int8(flat, rng)
    else:
        payload = _encode_topk(flat, topk_count(flat.size, topk_fraction))
    return EncodedArray(codec, shape, dtype, payload)


def _decode_array(e: EncodedArray) -> np.ndarray:
    if e.codec == "none":
        return e.payload[0].reshape(e.shape).copy()
    if e.codec == "fp16":
        return e.payload[0].astype(e.dtype).reshape(e.shape)
    if e.codec == "int8":
        codes, scale = e.payload
        return (codes.astype(e.dtype) * e.dtype.type(scale)).reshape(e.shape)
    index, values = e.payload
    out = np.zeros(math.prod(e.shape), e.dtype)
    out[index] = values
    return out.reshape(e.shape)


# -- the API -----------------------------------------------------------------------------

def encode(delta: Weights, codec: str, *, rng: np.random.Generator, topk_fraction: float = 0.01) -> Encoded:
    """``delta`` as it would travel under ``codec``. Lossy codecs reject NaN/inf;
    only int8 draws from ``rng``."""
    _check_settings(codec, topk_fraction)
    _check_delta(delta)
    arrays = tuple(_encode_array(a, codec, rng, topk_fraction, i) for i, a in enumerate(delta))
    return Encoded(codec, arrays, int(sum(e.nbytes for e in arrays)))


def decode(encoded: Encoded) -> Weights:
    """The arrays the server sees: the original shapes and dtypes."""
    return [_decode_array(e) for e in encoded.arrays]


def compress(
    delta: Weights,
    residual: Weights | None,
    codec: str,
    *,
    rng: np.random.Generator,
    topk_fraction: float = 0.01,
    error_feedback: bool = True,
) -> tuple[Weights, Weights | None, int]:
    """(decoded delta as the server sees it, new residual, payload bytes).

    With error feedback, ``delta + residual`` is compressed (``residual`` None is
    a zero residual) and the new residual is ``(delta + residual) - decoded``.
    The new residual is None without error feedback, and under "none", which
    sends everything (a residual passed in is then flushed: sent in full).
    """
    _check_settings(codec, topk_fraction)
    _check_delta(delta)
    target = list(delta)
    if error_feedback and residual is not None:
        _check_delta(residual, "residual")
        if len(residual) != len(delta):
            raise ValueError(f"residual has {len(residual)} arrays, the delta has {len(delta)}")
        for i, (d, r) in enumerate(zip(delta, residual)):
            if d.shape != r.shape:
                raise ValueError(f"residual array {i} has shape {r.shape}, the delta's is {d.shape}")
        target = [d + r for d, r in zip(delta, residual)]
    encoded = encode(target, codec, rng=rng, topk_fraction=topk_fraction)
    decoded = decode(encoded)
    new_residual = None
    if error_feedback and codec != "none":
        new_residual = [t - d for t, d in zip(target, decoded)]
    return decoded, new_residual, encoded.nbytes
