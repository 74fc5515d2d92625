"""Compressed client updates: codecs' round trips and sizes, int8's unbiasedness, error feedback."""

import time

import numpy as np
import pytest

from elasticfl import compression as cx


def rng(seed=0):
    return np.random.default_rng(seed)


def model(seed=0):
    r = rng(seed)
    return [r.normal(size=(20, 50)).astype(np.float32), r.normal(size=50).astype(np.float32), r.normal(size=(3, 3, 4)).astype(np.float32)]


def roundtrip(delta, codec, seed=0, **kw):
    enc = cx.encode(delta, codec, rng=rng(seed), **kw)
    return enc, cx.decode(enc)


# -- round trips -------------------------------------------------------------------------

def test_none_is_exact_and_keeps_shapes_and_dtypes():
    delta = model() + [np.arange(3, dtype=np.int64), rng().normal(size=4)]  # an int counter, a float64 array
    _, out = roundtrip(delta, "none")
    for got, want in zip(out, delta):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    out[0][0, 0] = 123.0  # the decoded arrays are copies, not the caller's arrays
    assert delta[0][0, 0] != 123.0


def test_fp16_within_half_precision_and_clips_instead_of_inf():
    delta = model()
    _, out = roundtrip(delta, "fp16")
    for got, want in zip(out, delta):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2.0**-11, atol=2.0**-24)
    _, (big,) = roundtrip([np.array([1e6, -1e9, 70000.0, 1.0], np.float32)], "fp16")
    np.testing.assert_array_equal(big, [65504.0, -65504.0, 65504.0, 1.0])


def test_int8_error_below_scale_codes_in_range():
    delta = model()
    enc, out = roundtrip(delta, "int8")
    for e, got, want in zip(enc.arrays, out, delta):
        codes, scale = e.payload
        assert codes.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == ()
        assert codes.min() >= -127 and codes.max() <= 127
        assert float(scale) == pytest.approx(np.abs(want).max() / 127, rel=1e-6)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= float(scale)
    # the largest magnitude is exactly ±127 levels
    enc, _ = roundtrip([np.array([0.5, -2.0, 1.0], np.float32)], "int8")
    assert enc.arrays[0].payload[0][1] == -127


def test_topk_keeps_exactly_the_k_largest_and_zeros_elsewhere():
    x = rng(3).normal(size=(40, 25)).astype(np.float32)
    enc, (out,) = roundtrip([x], "topk", topk_fraction=0.01)
    k = 10
    idx, vals = enc.arrays[0].payload
    assert idx.dtype == np.int32 and vals.dtype == np.float32 and idx.size == k
    assert out.shape == x.shape and out.dtype == np.float32
    want = np.argsort(-np.abs(x.ravel()), kind="stable")[:k]
    assert set(idx.tolist()) == set(want.tolist())
    assert np.count_nonzero(out) == k
    np.testing.assert_array_equal(out.ravel()[want], x.ravel()[want])
    assert np.abs(x.ravel()[want]).min() >= np.abs(np.delete(x.ravel(), want)).max()


def test_topk_ties_go_to_the_lowest_indices():
    x = np.zeros(1000, np.float32)
    x[[5, 500, 900]] = 3.0
    x[::7] += 1.0  # many ties at magnitude 1
    idx = cx.encode([x], "topk", rng=rng(), topk_fraction=0.01).arrays[0].payload[0]
    assert idx.tolist() == sorted(np.argsort(-np.abs(x), kind="stable")[:10].tolist())  # sent in index order
    assert {5, 500, 900} <= set(idx.tolist())
    # 7 places left for the ties at magnitude 1: the first seven multiples of 7
    assert [i for i in idx.tolist() if i not in (5, 500, 900)] == [0, 7, 14, 21, 28, 35, 42]


@pytest.mark.parametrize("size,frac,k", [(1000, 0.01, 10), (100, 0.07, 7), (3, 0.01, 1), (1, 1.0, 1), (10, 1.0, 10), (0, 0.5, 0), (1001, 0.01, 11)])
def test_topk_count(size, frac, k):
    assert cx.topk_count(size, frac) == k


def test_topk_of_float64_returns_float64_and_topk_fraction_one_is_exact_up_to_float32():
    x = rng().normal(size=(7, 3))
    _, (out,) = roundtrip([x], "topk", topk_fraction=1.0)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.astype(np.float32).astype(np.float64))


# -- sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,nbytes", [("none", 4000), ("fp16", 2000), ("int8", 1000 + 4), ("topk", 10 * (4 + 4))])
def test_exact_nbytes_for_1000_float32(codec, nbytes):
    delta = [rng().normal(size=1000).astype(np.float32)]
    enc = cx.encode(delta, codec, rng=rng(), topk_fraction=0.01)
    assert enc.nbytes == nbytes == sum(p.nbytes for e in enc.arrays for p in e.payload)
    assert cx.compress(delta, None, codec, rng=rng())[2] == nbytes


def test_nbytes_over_several_arrays():
    delta = model()  # 1000 + 50 + 36 values
    assert cx.encode(delta, "int8", rng=rng()).nbytes == 1086 + 3 * 4
    assert cx.encode(delta, "topk", rng=rng()).nbytes == (10 + 1 + 1) * 8


def test_non_float_arrays_travel_as_they_are():
    counter = np.array(7, np.int64)
    for codec in cx.CODECS:
        enc, out = roundtrip([np.ones(100, np.float32), counter], codec)
        assert enc.arrays[1].codec == "none" and out[1].dtype == np.int64 and out[1] == 7


# -- int8 is unbiased ----------------------------------------------------------------------

def test_int8_stochastic_rounding_is_unbiased():
    levels = np.array([0.3, 0.5, 0.9, 0.1, -0.3, -0.7, 2.3, -5.6, 126.5])
    scale = np.float32(1.0 / 127)
    # 1.0 sets the scale to 1/127 (to within a float32 ulp); the rest sit between quantisation levels
    x = np.concatenate([[1.0], np.repeat(levels, 20) * float(scale)]).astype(np.float32)
    seeds = 400
    decodes = np.stack([cx.decode(cx.encode([x], "int8", rng=rng(s)))[0] for s in range(seeds)])
    assert len({d.tobytes() for d in decodes}) > seeds // 2  # really stochastic
    mean = decodes.mean(axis=0)

    # per level: the mean over 20 entries × 400 seeds; its standard error is
    # scale·sqrt(p(1-p)/8000) <= 0.0056·scale, and the tolerance is 0.03·scale (> 5 sigma)
    def biased(values):
        return [lv for lv, m in zip(levels, values[1:].reshape(len(levels), 20).mean(axis=1)) if abs(m - lv * scale) > 0.03 * scale]

    assert biased(mean) == []
    # deterministic rounding to nearest is off by >= 0.1·scale at every one of these levels
    # (0.3 -> 0, 0.5 and 126.5 -> even): this check would catch it
    nearest = np.round(x.astype(np.float64) / float(scale)) * float(scale)
    assert biased(nearest) == levels.tolist()


# -- error feedback --------------------------------------------------------------------------

def run_topk(error_feedback, steps=400, n=1000):
    """Deltas with a consistent drift g plus noise; top-k sends 10 of 1000 values a step."""
    r = rng(11)
    g = (0.1 * r.normal(size=n)).astype(np.float32)
    residual, sent, true, norms = None, np.zeros(n), np.zeros(n), []
    for t in range(steps):
        delta = [(g + 0.1 * r.normal(size=n)).astype(np.float32)]
        decoded, residual, nbytes = cx.compress(delta, residual, "topk", rng=rng(t), error_feedback=error_feedback)
        assert nbytes == 80
        sent += decoded[0]
        true += delta[0]
        if residual is not None:
            norms.append(float(np.linalg.norm(residual[0])))
    return sent, true, residual, norms


def test_error_feedback_tracks_the_sum_of_deltas_and_without_it_mass_is_lost():
    sent, true, residual, norms = run_topk(error_feedback=True)
    sent_no, true_no, residual_no, _ = run_topk(error_feedback=False)
    np.testing.assert_array_equal(true, true_no)
    assert residual_no is None
    # with EF, what was sent + the residual is everything (up to float32 rounding)
    np.testing.assert_allclose(sent + residual[0], true, atol=1e-3)
    err_ef = np.linalg.norm(sent - true)
    err_no = np.linalg.norm(sent_no - true)
    assert err_ef == pytest.approx(np.linalg.norm(residual[0]), rel=1e-4)
    assert err_no > 5 * err_ef  # without EF, ~90% of the drift is never sent
    assert err_no > 0.8 * np.linalg.norm(true)
    # the residual stays bounded: it does not grow over the second half of the run
    assert max(norms[len(norms) // 2 :]) < 1.2 * max(norms[: len(norms) // 2])


@pytest.mark.parametrize("codec", ["fp16", "int8", "topk"])
def test_new_residual_is_exactly_target_minus_decoded(codec):
    delta, old = model(1), [0.01 * a for a in model(2)]
    decoded, residual, _ = cx.compress(delta, old, codec, rng=rng(4))
    for d, o, dec, res in zip(delta, old, decoded, residual):
        np.testing.assert_array_equal(res, (d + o) - dec)
        assert res.dtype == np.float32
    # the decoded delta is the encoding of delta + residual, drawn from the same rng
    again = cx.decode(cx.encode([d + o for d, o in zip(delta, old)], codec, rng=rng(4)))
    for a, b in zip(decoded, again):
        np.testing.assert_array_equal(a, b)


def test_no_residual_without_error_feedback_or_under_none():
    delta = model()
    assert cx.compress(delta, None, "topk", rng=rng(), error_feedback=False)[1] is None
    old = [np.ones_like(a) for a in delta]
    decoded, residual, _ = cx.compress(delta, old, "none", rng=rng())
    assert residual is None
    for dec, d in zip(decoded, delta):  # the residual passed in is flushed
        np.testing.assert_array_equal(dec, d + 1)
    decoded, _, _ = cx.compress(delta, old, "topk", rng=rng(), error_feedback=False, topk_fraction=1.0)
    for dec, d in zip(decoded, delta):  # without EF the residual is ignored
        np.testing.assert_array_equal(dec, d)


def test_residual_must_match_the_delta():
    with pytest.raises(ValueError, match="residual has 1 arrays"):
        cx.compress(model(), [np.zeros(3, np.float32)], "topk", rng=rng())
    with pytest.raises(ValueError, match="shape"):
        cx.compress([np.zeros(3, np.float32)], [np.zeros(4, np.float32)], "topk", rng=rng())


# -- edge cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", cx.CODECS)
def test_all_zero_arrays(codec):
    delta = [np.zeros((4, 5), np.float32), np.zeros(1, np.float32)]
    decoded, residual, _ = cx.compress(delta, None, codec, rng=rng())
    for dec in decoded:
        assert dec.dtype == np.float32 and not dec.any()
    if codec == "int8":
        assert all(float(e.payload[1]) == 0.0 for e in cx.encode(delta, codec, rng=rng()).arrays)
    if residual is not None:
        assert not any(r.any() for r in residual)


@pytest.mark.parametrize("codec", cx.CODECS)
def test_empty_models(codec):
    assert cx.decode(cx.encode([], codec, rng=rng())) == []
    assert cx.compress([], None, codec, rng=rng())[2] == 0
    delta = [np.zeros(0, np.float32), np.zeros((0, 3), np.float32)]
    decoded, residual, nbytes = cx.compress(delta, None, codec, rng=rng())
    assert [d.shape for d in decoded] == [(0,), (0, 3)]
    assert nbytes == (8 if codec == "int8" else 0)  # int8 still sends each array's scale


def test_scalar_arrays_keep_their_shape():
    for codec in cx.CODECS:
        (out,) = cx.decode(cx.encode([np.array(2.5, np.float32)], codec, rng=rng()))
        assert out.shape == () and abs(float(out) - 2.5) < 0.02


@pytest.mark.parametrize("codec", ["fp16", "int8", "topk"])
def test_lossy_codecs_reject_non_finite_values(codec):
    with pytest.raises(ValueError, match="array 1 contains NaN"):
        cx.encode([np.ones(3, np.float32), np.array([1.0, np.nan], np.float32)], codec, rng=rng())


@pytest.mark.parametrize("codec", cx.CODECS)
def test_same_seed_same_bits(codec):
    delta = model(5)
    a = cx.encode(delta, codec, rng=rng(9))
    b = cx.encode(delta, codec, rng=rng(9))
    assert a.nbytes == b.nbytes
    for ea, eb in zip(a.arrays, b.arrays):
        assert ea.shape == eb.shape and ea.dtype == eb.dtype and ea.codec == eb.codec
        for pa, pb in zip(ea.payload, eb.payload):
            assert pa.dtype == pb.dtype and pa.tobytes() == pb.tobytes()
    if codec == "int8":  # and a different seed rounds differently
        c = cx.encode(delta, codec, rng=rng(10))
        assert a.arrays[0].payload[0].tobytes() != c.arrays[0].payload[0].tobytes()


# -- settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["gzip", "", "INT8", None])
def test_bad_codec(codec):
    with pytest.raises(ValueError, match=r"compression.codec must be one of \('none', 'fp16', 'int8', 'topk'\)"):
        cx.encode(model(), codec, rng=rng())
    with pytest.raises(ValueError, match="compression.codec"):
        cx.compress(model(), None, codec, rng=rng())


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_bad_topk_fraction(fraction):
    with pytest.raises(ValueError, match=r"compression.topk_fraction must be in \(0, 1\], got"):
        cx.encode(model(), "topk", rng=rng(), topk_fraction=fraction)
    with pytest.raises(ValueError, match="compression.topk_fraction"):
        cx.compress(model(), None, "topk", rng=rng(), topk_fraction=fraction)


def test_not_a_list_of_arrays():
    with pytest.raises(TypeError, match="list of numpy arrays"):
        cx.encode(np.zeros(3), "none", rng=rng())
    with pytest.raises(TypeError, match="array 0 is a list"):
        cx.encode([[1.0]], "none", rng=rng())


def test_topk_on_a_million_values_is_fast():
    x = [rng().normal(size=1_000_000).astype(np.float32)]
    cx.encode(x, "topk", rng=rng())
    start = time.perf_counter()
    enc = cx.encode(x, "topk", rng=rng())
    assert time.perf_counter() - start < 1.0  # ~7 ms here; generous for loaded CI machines
    assert enc.nbytes == 10_000 * 8
