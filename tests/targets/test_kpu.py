"""The KPU layer simulator: field tables, tables decoding, layout, and the simulator against kpuc's scalar
reference (its agreement with nncase's runtimes is checked on golden outputs in test_kmodel_v3/v4)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.errors import MalformedModel
from shared_data import GOLDEN, require
from targets.k210 import kpu_layout
from targets.k210.bits import Record, pack_bits, unpack_bits
from targets.k210.kmodel_v3 import read_v3
from targets.k210.kpu import (
    ARG_WORDS,
    POOL_TYPES,
    ActTable,
    BatchNorm,
    KpuArgs,
    carry_shift,
    carry_shift_banker,
    kpu_conv2d,
    kpu_conv2d_reference,
    run_kpu_layer,
)

YOLO_V3 = GOLDEN / "yolo20-v3" / "yolo.kmodel"


def signed(bits):
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def unsigned(bits):
    return st.integers(0, (1 << bits) - 1)


# ---- bit fields --------------------------------------------------------------------------------------------

def test_every_argument_word_table_covers_64_bits_once():
    for word, table in ARG_WORDS:
        bits = sorted(b for _, lsb, width in table for b in range(lsb, lsb + width))
        assert bits == list(range(64)), word


@given(st.data())
def test_kpu_args_round_trip_any_words(data):
    words = [data.draw(unsigned(64)) for _ in ARG_WORDS]
    args = KpuArgs.from_words(words)
    assert args.to_words() == tuple(words)


def test_pack_bits_rejects_a_value_wider_than_its_field():
    table = (("a", 0, 4), ("b", 4, 4))
    assert pack_bits(table, {"a": 15, "b": -8}, signed={"b"}) == 0x8F
    assert unpack_bits(table, 0x8F, signed={"b"}) == {"a": 15, "b": -8}
    with pytest.raises(MalformedModel, match="a = 16 does not fit u4"):
        pack_bits(table, {"a": 16, "b": 0})
    with pytest.raises(MalformedModel, match="does not fit s4"):
        pack_bits(table, {"a": 0, "b": 8}, signed={"b"})


def test_record_round_trip():
    rec = Record("Demo", "<2If", "flags count scale")
    r = rec.make(flags=1, count=7, scale=0.5)
    assert rec.unpack(rec.pack(r)) == r and rec.size == 12


def test_yolo_layer0_words_from_kpu_md_section3():
    # kpu.md §3 example: the 12 words of yolo.kmodel layer 0 and what they mean.
    words = [0x0, 0x71F0, 0x000F000F00000002, 0x0001DC9F0003BD3F, 0x0F0411, 0xD80001, 0x0,
             0x900504B0, 0x130168, 0x00BD0000000000F0, 0x0, 0x0004AFFF4AFF0000]
    a = KpuArgs.from_words(words)
    assert (a.image_src_addr, a.image_dst_addr) == (29168, 0)
    assert a.in_shape == (3, 240, 320) and a.out_shape == (16, 120, 160) and a.o_ch_num_coef == 15
    assert (a.kernel, a.pool_type, a.load_para, a.dma_burst_size, a.pad_value) == (3, 1, 1, 15, 0)
    assert (a.load_time, a.para_size) == (0, 432)
    assert (a.channel_switch_addr, a.row_switch_addr, a.coef_group, a.load_act) == (1200, 5, 1, 1)
    assert (a.wb_channel_switch_addr, a.wb_row_switch_addr, a.wb_group) == (360, 3, 1)
    assert (a.shr_w, a.shr_x, a.arg_w, a.arg_x, a.arg_add) == (0, 15, 0, -4390912, 0)
    assert (a.channel_byte_num, a.dma_total_byte) == (19199, 307199)
    assert a.to_words() == tuple(words)


@given(st.lists(unsigned(64), min_size=1, max_size=8))
def test_batch_norm_table_round_trip(words):
    words = np.array(words, np.uint64)
    bn = BatchNorm.from_words(words)
    assert (BatchNorm.from_words(words).to_words() == words).all()
    assert bn.norm_mul.min() >= -(1 << 23) and bn.norm_add.max() < (1 << 31) and bn.norm_shift.max() < 16


@given(st.lists(unsigned(64), min_size=18, max_size=18))
def test_activation_table_round_trip(words):
    words = np.array(words, np.uint64)
    act = ActTable.from_words(words)
    assert (act.to_words() == words).all()
    assert act.y_add.tolist() == list(words[16:].astype("<u8").tobytes())


# ---- rounding helpers ---------------------------------------------------------------------------------------

def test_carry_shift_hand_cases():
    # SDK kpu_carry_shift: round half up for t >= 0; for t < 0 the last bit rounds away: -1 -> -2, -5 -> -4
    # (kpu.md §5.6: not symmetric)
    assert carry_shift([5, 6, 7, -1, -5, 9], [1, 1, 1, 1, 1, 0]).tolist() == [3, 3, 4, -2, -4, 9]


def test_carry_shift_banker_hand_cases():
    # nncase v0.2 banker carry shift: half to even for t >= 0; t = -1, s = 2 gives -2 (kmodel-v4.md §10.5)
    t = [512 * 1024, 1536 * 1024, 513 * 1024, 3, 5, -1, -4, -6, 7]
    s = [20, 20, 20, 1, 1, 2, 2, 2, 0]
    assert carry_shift_banker(t, s).tolist() == [0, 2, 1, 2, 2, -2, -1, -2, 7]


def _banker_scalar(t, s):
    if s == 0:
        return t
    q, half = t >> s, 1 << (s - 1)
    f = t - (q << s)
    sign = -1 if t < 0 else 1
    return q if f < half else q + sign if f > half else (q + sign if q & 1 else q)


@given(st.lists(st.tuples(signed(64), st.integers(0, 255)), min_size=1, max_size=20))
def test_carry_shift_banker_matches_exact_integers(pairs):
    t, s = zip(*pairs)
    assert carry_shift_banker(list(t), list(s)).tolist() == [_banker_scalar(a, b) for a, b in pairs]


# ---- KPU RAM layout -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, rows", [((3, 240, 320), 3600), ((16, 120, 160), 5760), ((125, 7, 10), 224),
                                         ((32, 4, 4), 32), ((16, 14, 14), 56), ((1, 28, 28), 28)])
def test_kpu_rows_of_known_maps(shape, rows):
    # kmodel-v3.md §9.2 examples and the maps of the real files
    assert kpu_layout.kpu_rows(*shape) == rows


def test_byte_formula():
    # W = 20: 2 channels per row, 32 bytes apart; c=3, y=1, x=5 in a 4×6×20 map
    assert kpu_layout.byte_offsets(4, 6, 20)[3, 1, 5] == 1 * 6 * 64 + 1 * 32 + 1 * 64 + 5
    # W = 100: 2 rows per line; c=2, y=3, x=70
    assert kpu_layout.byte_offsets(3, 5, 100)[2, 3, 70] == 2 * 2 * 5 * 64 + 3 * 2 * 64 + 70


@given(st.integers(1, 9), st.integers(1, 5), st.sampled_from([1, 4, 15, 16, 17, 31, 32, 33, 63, 64, 65, 128, 130]),
       st.integers(0, 2**32 - 1))
def test_layout_round_trip(c, h, w, seed):
    x = np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)
    rows = kpu_layout.to_rows(x)
    assert len(rows) == 64 * kpu_layout.kpu_rows(c, h, w)
    assert np.array_equal(kpu_layout.from_rows(rows, (c, h, w)), x)
    offsets = kpu_layout.byte_offsets(c, h, w)
    assert len(np.unique(offsets)) == x.size and offsets.max() < len(rows)


# ---- the simulator against the scalar reference -------------------------------------------------------------

@st.composite
def kpu_layers(draw):
    depthwise = draw(st.booleans())
    k = draw(st.sampled_from([1, 3]))
    ic = draw(st.integers(1, 4))
    oc = ic if depthwise else draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    eight_bit = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, (ic, h, w), dtype=np.uint8)
    wts = rng.integers(0, 256 if eight_bit else 65536, (oc, 1 if depthwise else ic, k, k)).astype(
        np.uint8 if eight_bit else np.uint16)
    small = draw(st.booleans())    # half the cases stay in the hardware's s36 range, half use full-width fields
    bn = BatchNorm(np.array([draw(signed(12 if small else 24)) for _ in range(oc)]),
                   np.array([draw(signed(20 if small else 32)) for _ in range(oc)]),
                   np.array([draw(st.integers(0, 15)) for _ in range(oc)]))
    x_start = [draw(signed(24 if small else 36)) for _ in range(16)]
    if draw(st.booleans()):
        x_start[0] = -(1 << 35)         # nncase always writes segment 0 at the s36 minimum
    act = ActTable(np.array(x_start), np.array([draw(signed(16)) for _ in range(16)]),
                   np.array([draw(st.one_of(st.integers(0, 24), st.integers(0, 255))) for _ in range(16)]),
                   np.array([draw(unsigned(8)) for _ in range(16)]))
    kw = dict(depthwise=depthwise, pad_value=draw(unsigned(8)), arg_x=draw(signed(24)), shr_x=draw(st.integers(0, 15)),
              arg_w=draw(signed(24)), shr_w=draw(st.integers(0, 15)), arg_add=draw(signed(20 if small else 40)),
              pool_type=draw(st.sampled_from(sorted(POOL_TYPES))))
    return x, wts, bn, act, kw


@settings(max_examples=300, deadline=None)
@given(kpu_layers())
def test_simulator_equals_scalar_reference(layer):
    x, w, bn, act, kw = layer
    np.testing.assert_array_equal(kpu_conv2d(x, w, bn, act, **kw), kpu_conv2d_reference(x, w, bn, act, **kw))


@pytest.mark.parametrize("pool_type", sorted(POOL_TYPES))
@pytest.mark.parametrize("depthwise", [False, True])
def test_every_pool_type_on_odd_sizes(pool_type, depthwise):
    rng = np.random.default_rng(pool_type)
    x = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    w = rng.integers(0, 256, (3, 1 if depthwise else 3, 3, 3), dtype=np.uint8)
    bn = BatchNorm(np.full(3, 1 << 14), np.array([0, 100, -100]), np.full(3, 15))
    act = ActTable(np.array([-(1 << 35)] + [1 << 34] * 15), np.array([1024] + [0] * 15), np.array([20] + [0] * 15),
                   np.array([7] + [0] * 15))
    kw = dict(depthwise=depthwise, pad_value=5, arg_x=-128 << 15, shr_x=15, arg_w=-5 << 15, shr_w=15,
              arg_add=128 * 5 * 9, pool_type=pool_type)
    out = kpu_conv2d(x, w, bn, act, **kw)
    _, _, s = POOL_TYPES[pool_type]
    assert out.shape == (3, 9 // s, 11 // s)
    np.testing.assert_array_equal(out, kpu_conv2d_reference(x, w, bn, act, **kw))


# ---- worked example: kpu.md §11, yolo.kmodel layer 1 --------------------------------------------------------

@pytest.fixture(scope="module")
def yolo_layer1():
    require(YOLO_V3)
    with open(YOLO_V3, "rb") as f:
        return read_v3(f.read()).layers[1].body


def test_worked_example_fields(yolo_layer1):
    a, bn, act = yolo_layer1.args, yolo_layer1.bn, yolo_layer1.act
    assert (a.image_src_addr, a.image_dst_addr, a.depth_wise_layer) == (0, 27008, 1)
    assert (a.i_ch_num, a.o_ch_num, a.o_ch_num_coef, a.kernel_type, a.pool_type, a.pad_value) == (15, 15, 15, 1, 0, 13)
    assert (a.para_size, a.load_time, a.channel_switch_addr, a.row_switch_addr, a.coef_group) == (144, 0, 360, 3, 1)
    assert (a.wb_channel_switch_addr, a.wb_row_switch_addr, a.wb_group) == (360, 3, 1)
    assert (a.shr_w, a.shr_x, a.arg_w, a.arg_x, a.arg_add) == (15, 15, -13 << 15, -130 << 15, 15210)
    assert (a.channel_byte_num, a.dma_total_byte) == (19199, 307199)
    assert bn.norm_shift.tolist() == [15] * 16
    assert (bn.norm_mul[0], bn.norm_add[0]) == (121031, 38680)
    assert act.y_add.tolist() == [0, 0, 1, 3, 4, 6, 7, 9, 11, 12, 14, 15, 17, 18, 20, 22]
    assert act.x_start.tolist()[1:3] == [-202752, -192512] and act.x_start.tolist()[14:] == [2048, 22528]
    assert act.y_mul.tolist() == [0] + [102] * 14 + [1024] and act.shift_number.tolist() == [0] + [20] * 15


def test_worked_example_by_hand(yolo_layer1):
    # Input codes 13 mean real 0 (pad_value); one pixel of channel 0 at (1,1) is 113 (13 + 100).
    # Channel 0 weights: [[188 158 105] [141 0 72] [164 66 68]], offset 130, so acc = Σ (x-13)(w-130).
    b = yolo_layer1
    x = np.full((16, 120, 160), 13, np.uint8)
    x[0, 1, 1] = 113
    assert b.weights[0, 0].tolist() == [[188, 158, 105], [141, 0, 72], [164, 66, 68]]
    out = run_kpu_layer(b.args, x, b.weights, b.bn, b.act)
    # far pixels: acc = 0 -> bn = norm_add = 38680 > 22528 -> segment 15:
    #   (38680-22528)·1024 >> 20 = 15.77 -> 16, + y_add 22 = 38
    assert out[0, 60, 80] == 38
    # (1,1): acc = 100·(0-130) = -13000; bn = floor(-13000·121031 / 2^15) + 38680 = -48017 + 38680 = -9337
    #   segment 13 (x_start -18432): (−9337+18432)·102 = 927690; /2^20 = 0.885 -> 1; + y_add 18 = 19
    assert out[0, 1, 1] == 19
    # (1,2): the pixel is tap (1,0), w 141: acc = 100·11 = 1100; bn = 4062 + 38680 = 42742
    #   segment 15: (42742-22528)/1024 = 19.74 -> 20; + 22 = 42
    assert out[0, 1, 2] == 42
    # (0,0): tap (2,2), w 68; the border taps read pad_value 13 = real 0: acc = 100·(-62) = -6200
    #   bn = floor(-750392200 / 32768) + 38680 = -22901 + 38680 = 15779 -> segment 14 (x_start 2048):
    #   (15779-2048)·102 = 1400562; /2^20 = 1.34 -> 1; + y_add 20 = 21
    assert out[0, 0, 0] == 21
    # every other channel sees only real zeros: its output is the code of its own norm_add
    assert (out[1] == out[1, 0, 0]).all()
