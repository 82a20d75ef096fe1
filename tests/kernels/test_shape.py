"""Data-movement kernels against onnxruntime, and space/batch ops against TensorFlow's documented examples."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_array_equal

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import infer_types

rng = np.random.default_rng(0)


def run(ir_op, *args, **attrs):
    out = KERNELS[ir_op](*args, **attrs)
    got = out if isinstance(out, tuple) else (out,)
    want = infer_types(ir_op, [TensorType(a.shape, a.dtype) for a in args], attrs)
    assert [TensorType(o.shape, o.dtype) for o in got] == want
    return out


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_reshape_transpose_concat(ort):
    x = rand(2, 3, 4, 5)
    assert_array_equal(run("reshape", x, shape=(6, 20)), ort("Reshape", [x, np.array([6, 20], np.int64)])[0])
    assert_array_equal(run("transpose", x, perm=(0, 2, 3, 1)), ort("Transpose", [x], perm=(0, 2, 3, 1))[0])
    y, z = rand(2, 1, 4, 5), rand(2, 7, 4, 5)
    assert_array_equal(run("concat", x, y, z, axis=1), ort("Concat", [x, y, z], axis=1)[0])


def test_split(ort):
    x = rand(2, 9, 4)
    got = run("split", x, axis=1, sizes=(2, 3, 4))
    want = ort("Split", [x, np.array([2, 3, 4], np.int64)], n_outputs=3, axis=1)
    assert len(got) == 3
    for g, w in zip(got, want):
        assert_array_equal(g, w)


@st.composite
def slice_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    begin, end, strides = [], [], []
    for d in shape:
        s = draw(st.sampled_from([-3, -2, -1, 1, 2, 3]))
        begin.append(draw(st.integers(0, d - 1)))
        end.append(draw(st.integers(-1, d)))
        strides.append(s)
    return shape, tuple(begin), tuple(end), tuple(strides)


@settings(max_examples=50, deadline=None)
@given(case=slice_cases())
def test_strided_slice(case, ort):
    shape, begin, end, strides = case
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    got = run("strided_slice", x, begin=begin, end=end, strides=strides)
    # ONNX Slice reads a negative end from the back; -(dim + 1) clamps to "before index 0".
    ends = [-(d + 1) if e == -1 else e for d, e in zip(shape, end)]
    want = ort("Slice", [x, np.array(begin, np.int64), np.array(ends, np.int64),
                         np.arange(len(shape), dtype=np.int64), np.array(strides, np.int64)])[0]
    assert_array_equal(got, want)


def test_strided_slice_reverse_to_zero():
    x = np.arange(6, dtype=np.float32)
    assert_array_equal(run("strided_slice", x, begin=(4,), end=(-1,), strides=(-2,)), [4, 2, 0])
    assert_array_equal(run("strided_slice", x, begin=(5,), end=(-1,), strides=(-1,)), x[::-1])
    assert run("strided_slice", x, begin=(2,), end=(-1,), strides=(1,)).shape == (0,)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("pads", [((0, 0), (1, 2), (2, 1)), ((1, 0), (-1, 2), (0, -2)), ((0, 0), (0, 0), (-1, -1))])
def test_pad(mode, pads, ort):
    x = rand(2, 4, 5)
    got = run("pad", x, pads=pads, mode=mode, value=1.5)
    onnx_pads = np.array([p[0] for p in pads] + [p[1] for p in pads], np.int64)
    want = ort("Pad", [x, onnx_pads, np.float32(1.5)], mode=mode)[0]
    assert_array_equal(got, want)


def test_pad_symmetric_repeats_the_edge():
    x = np.array([[1, 2, 3]], np.float32)
    assert_array_equal(run("pad", x, pads=((0, 0), (2, 2)), mode="symmetric"), [[2, 1, 1, 2, 3, 3, 2]])
    assert_array_equal(run("pad", x, pads=((0, 0), (2, 2)), mode="reflect"), [[3, 2, 1, 2, 3, 2, 1]])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather(axis, ort):
    x = rand(4, 5, 6)
    idx = np.array([[0, -1], [2, -3]], np.int64)
    assert_array_equal(run("gather", x, idx, axis=axis), ort("Gather", [x, idx], axis=axis)[0])
    assert_array_equal(run("gather", x, np.array(1, np.int64), axis=axis), np.take(x, 1, axis=axis))


def test_space_to_depth_and_depth_to_space(ort):
    x = rand(2, 3, 4, 6)
    assert_array_equal(run("space_to_depth", x, block=2), ort("SpaceToDepth", [x], blocksize=2)[0])
    y = rand(2, 18, 2, 3)
    for mode in ("DCR", "CRD"):
        assert_array_equal(run("depth_to_space", y, block=3, mode=mode),
                           ort("DepthToSpace", [y], blocksize=3, mode=mode)[0])
    assert_array_equal(run("depth_to_space", run("space_to_depth", x, block=2), block=2), x)


def nhwc(values) -> np.ndarray:
    """A TF example tensor (NHWC nested lists) as an NCHW array."""
    return np.array(values, np.float32).transpose(0, 3, 1, 2)


# The examples of tf.space_to_batch_nd / tf.batch_to_space_nd (block [2, 2]), written as TF prints them.
TF_EXAMPLES = [
    ([[[[1], [2]], [[3], [4]]]], ((0, 0), (0, 0)), [[[[1]]], [[[2]]], [[[3]]], [[[4]]]]),
    ([[[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]], ((0, 0), (0, 0)),
     [[[[1, 2, 3]]], [[[4, 5, 6]]], [[[7, 8, 9]]], [[[10, 11, 12]]]]),
    ([[[[1], [2], [3], [4]], [[5], [6], [7], [8]], [[9], [10], [11], [12]], [[13], [14], [15], [16]]]],
     ((0, 0), (0, 0)),
     [[[[1], [3]], [[9], [11]]], [[[2], [4]], [[10], [12]]], [[[5], [7]], [[13], [15]]], [[[6], [8]], [[14], [16]]]]),
    ([[[[1], [2], [3], [4]], [[5], [6], [7], [8]]], [[[9], [10], [11], [12]], [[13], [14], [15], [16]]]],
     ((0, 0), (2, 0)),
     [[[[0], [1], [3]]], [[[0], [9], [11]]], [[[0], [2], [4]]], [[[0], [10], [12]]],
      [[[0], [5], [7]]], [[[0], [13], [15]]], [[[0], [6], [8]]], [[[0], [14], [16]]]]),
]


@pytest.mark.parametrize("x,pads,y", TF_EXAMPLES)
def test_space_to_batch_tf_examples(x, pads, y):
    assert_array_equal(run("space_to_batch", nhwc(x), block=(2, 2), pads=pads), nhwc(y))
    assert_array_equal(run("batch_to_space", nhwc(y), block=(2, 2), crops=pads), nhwc(x))


def test_space_to_batch_round_trip_and_layout():
    x = rand(3, 2, 5, 7)
    pads = ((1, 0), (2, 3))
    y = run("space_to_batch", x, block=(3, 4), pads=pads)
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    for by in range(3):
        for bx in range(4):
            for n in range(3):
                assert_array_equal(y[(by * 4 + bx) * 3 + n], xp[n, :, by::3, bx::4])
    assert_array_equal(run("batch_to_space", y, block=(3, 4), crops=pads), x)
