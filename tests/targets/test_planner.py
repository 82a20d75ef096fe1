"""Memory planner: nncase v0.1's allocators replayed exactly, the offline planner's guarantees, and errors."""
import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.errors import KpucError
from shared_data import GOLDEN, KMODELS, require
from targets.k210.kmodel_v3 import layer_io, read_v3
from targets.k210.kpu_layout import KPU_RAM_ROWS
from targets.k210.planner import Buffer, Pool, Step, _Problem, lifetimes, plan_memory

YOLO = GOLDEN / "yolo20-v3/yolo.kmodel"
IRIS = GOLDEN / "iris-v3/iris.kmodel"
MNIST = KMODELS / "maixpy_mnist.v3.kmodel"
FACEDETECT = KMODELS / "maixpy_facedetect.v3.kmodel"
NNCASE_MAIN = Pool("main", None, 8, "bytes", "nncase_main")
NNCASE_KPU = Pool("kpu", KPU_RAM_ROWS, 1, "rows", "nncase_kpu")


def offsets(plan):
    return {name: a.offset for name, a in plan.allocations.items()}


# ---- nncase v0.1 replay (kmodel-v3.md §12) --------------------------------------------------------------------

def test_iris_main_memory_is_nncase_s():
    steps = [Step("fc0", ("in",), ("h",)), Step("fc1", ("h",), ("out",))]
    bufs = [Buffer("in", "main", 16), Buffer("h", "main", 40), Buffer("out", "main", 12)]
    plan = plan_memory(steps, bufs, [NNCASE_MAIN], keep=["out"])
    assert offsets(plan) == {"in": 0, "h": 16, "out": 0}
    assert plan.pools["main"].used == 56 and plan.pools["main"].strategy == "nncase_main"
    assert plan.allocations["out"].size == 16                     # rounded up to 8


def _schedule_of(model):
    """The schedule a v3 file implies: each layer reads the buffers last written at its input addresses
    (or, never written, the model input) and writes new ones; K210Conv's main output first (nncase
    allocates the consumer's main input, then the KPU copy). Returns steps, buffers, outputs, addresses."""
    steps, bufs, want, live = [], {}, {}, {}
    for i, layer in enumerate(model.layers):
        ins, outs = layer_io(layer)
        reads, writes = [], []
        for r in ins:
            if (r.mem, r.address) not in live:
                live[r.mem, r.address] = f"input_{r.mem}"
                bufs[f"input_{r.mem}"], want[f"input_{r.mem}"] = Buffer(f"input_{r.mem}", r.mem, r.size), r.address
            reads.append(live[r.mem, r.address])
        for r in sorted(outs, key=lambda r: r.mem != "main"):
            name = live[r.mem, r.address] = f"{i}_{r.mem}"
            bufs[name], want[name] = Buffer(name, r.mem, r.size), r.address
            writes.append(name)
        steps.append(Step(f"{i}:{layer.type_name}", tuple(reads), tuple(writes)))
    return steps, list(bufs.values()), [live["main", o.address] for o in model.outputs], want


@pytest.mark.parametrize("path, kpu", [(YOLO, "nncase_kpu"), (IRIS, "nncase_kpu"), (MNIST, "nncase_kpu_from_end"),
                                       (FACEDETECT, "nncase_kpu_from_end")], ids=lambda p: getattr(p, "name", p))
def test_replays_give_every_address_of_nncase_s_files(path, kpu):
    """Replaying the schedule of each real v3 file gives every main and KPU address nncase chose, its
    main_mem_usage and max_start_address (rc5 alternates KPU ends; MaixPy's nncase always took the end)."""
    require(path)
    model = read_v3(path.read_bytes())
    steps, bufs, outputs, want = _schedule_of(model)
    plan = plan_memory(steps, bufs, [NNCASE_MAIN, Pool("kpu", KPU_RAM_ROWS, 1, "rows", kpu)], keep=outputs)
    assert offsets(plan) == want
    assert plan.pools["main"].used == model.header.main_mem_usage
    assert (plan.pools["kpu"].lowest if plan.pools["kpu"].lowest is not None else KPU_RAM_ROWS) \
        == model.header.max_start_address


def test_offline_takes_over_when_nncase_fragments():
    # nncase: b0 from the end [5,8), b1 from the start [0,2), b2 from the end [4,5); after b0 dies the
    # free space is [2,4) + [5,8) and b3 (4 rows) finds no block, although only 7 of 8 rows are live.
    steps = [Step("s0", (), ("b0",)), Step("s1", ("b0",), ("b1",)), Step("s2", ("b0",), ("b2",)),
             Step("s3", ("b1", "b2"), ("b3",))]
    bufs = [Buffer("b0", "kpu", 3), Buffer("b1", "kpu", 2), Buffer("b2", "kpu", 1), Buffer("b3", "kpu", 4)]
    pool = Pool("kpu", 8, 1, "rows", "nncase_kpu")
    plan = plan_memory(steps, bufs, [pool], keep=["b3"])
    assert plan.pools["kpu"].strategy.startswith("offline")
    assert plan.pools["kpu"].used <= 8
    assert_valid(plan, steps, bufs, ["b3"])


def test_overflow_names_the_step_its_needs_and_what_is_free():
    steps = [Step("conv1", ("x",), ("y",)), Step("conv2", ("y",), ("z",))]
    bufs = [Buffer("x", "kpu", 10000), Buffer("y", "kpu", 20000), Buffer("z", "kpu", 15000)]
    with pytest.raises(KpucError) as err:
        plan_memory(steps, bufs, [Pool("kpu", KPU_RAM_ROWS, 1, "rows", "offline", "KPU RAM")], keep=["z"])
    msg = str(err.value)
    assert "KPU RAM overflows at 'conv2'" in msg and "writes 15000 rows ('z' 15000)" in msg
    assert "20000 rows stay live ('y' 20000)" in msg and "leaving 12768 of 32768 rows free" in msg
    assert "2232 rows too many" in msg


def test_exact_search_places_what_every_greedy_order_misses():
    problem = _Problem(*_instance(HARD))
    greedy = min(int((problem.place(o, bf) + problem.size).max()) for o in problem.orders() for bf in (True, False))
    assert greedy == 17
    steps, bufs = HARD
    plan = plan_memory(steps, bufs, [Pool("kpu", 14, 1, "rows")])
    assert plan.pools["kpu"].strategy == "offline (exact search)" and plan.pools["kpu"].used == 14
    assert_valid(plan, steps, bufs, [])


# ---- properties --------------------------------------------------------------------------------------------

def assert_valid(plan, steps, bufs, keep):
    life = lifetimes(steps, {b.name: b for b in bufs}, keep)
    allocs = list(plan.allocations.values())
    for a, b in itertools.combinations(allocs, 2):
        if a.buffer.pool == b.buffer.pool and a.first <= b.last and b.first <= a.last:
            assert a.end <= b.offset or b.end <= a.offset, (a, b)
    for a in allocs:
        pool = plan.pools[a.buffer.pool].pool
        assert a.offset % pool.align == 0 and a.size >= a.buffer.size
        assert (a.first, a.last) == life[a.buffer.name]
    for p in plan.pools.values():
        assert p.used == max((a.end for a in allocs if a.buffer.pool == p.pool.name), default=0)
        assert p.pool.capacity is None or p.used <= p.pool.capacity
        assert p.live_peak <= p.used


@st.composite
def schedules(draw, max_steps=12, max_size=40):
    n = draw(st.integers(1, max_steps))
    steps, bufs, names = [], [], []
    for i in range(n):
        reads = tuple(draw(st.lists(st.sampled_from(names), max_size=2, unique=True))) if names else ()
        writes = tuple(f"b{i}_{k}" for k in range(draw(st.integers(1, 2))))
        for w in writes:
            bufs.append(Buffer(w, draw(st.sampled_from(["main", "kpu"])), draw(st.integers(1, max_size))))
        names += writes
        steps.append(Step(f"s{i}", reads, writes))
    keep = [names[-1]]
    return steps, bufs, keep


POOLS = st.tuples(st.sampled_from(["offline", "nncase_main"]), st.sampled_from(["offline", "nncase_kpu"]),
                  st.integers(20, 120))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(), POOLS)
def test_plans_never_overlap_live_buffers_and_respect_capacity(sched, pools):
    steps, bufs, keep = sched
    main_strategy, kpu_strategy, capacity = pools
    pool_list = [Pool("main", None, 8, "bytes", main_strategy), Pool("kpu", capacity, 1, "rows", kpu_strategy)]
    try:
        plan = plan_memory(steps, bufs, pool_list, keep=keep)
    except KpucError as e:
        assert "overflows" in str(e) or "could not place" in str(e)
        return
    assert_valid(plan, steps, bufs, keep)
    again = plan_memory(steps, bufs, pool_list, keep=keep)
    assert offsets(again) == offsets(plan)                       # deterministic


def _brute_force_fits(sizes, first, last, capacity) -> bool:
    n = len(sizes)
    conflict = [(i, j) for i in range(n) for j in range(i + 1, n) if first[i] <= last[j] and first[j] <= last[i]]
    for offs in itertools.product(*[range(capacity - s + 1) for s in sizes]):
        if all(offs[i] + sizes[i] <= offs[j] or offs[j] + sizes[j] <= offs[i] for i, j in conflict):
            return True
    return False


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=5),
       st.integers(4, 8))
def test_offline_finds_a_placement_whenever_one_exists(specs, capacity):
    """Tiny instances against brute force: the offline planner fails only if no placement exists."""
    sizes = [s for s, _, _ in specs]
    first = [f for _, f, _ in specs]
    last = [f + d for _, f, d in specs]
    steps = [Step(f"s{t}", (), tuple(f"b{i}" for i in range(len(specs)) if first[i] <= t <= last[i]))
             for t in range(max(last) + 1)]
    bufs = [Buffer(f"b{i}", "kpu", s) for i, s in enumerate(sizes)]
    exists = _brute_force_fits(sizes, first, last, capacity) if max(sizes) <= capacity else False
    try:
        plan = plan_memory(steps, bufs, [Pool("kpu", capacity, 1, "rows")])
    except KpucError:
        assert not exists
        return
    assert exists
    assert_valid(plan, steps, bufs, [])


def _instance(sched):
    steps, bufs = sched
    life = lifetimes(steps, {b.name: b for b in bufs})
    names = [b.name for b in bufs]
    return names, {b.name: b.size for b in bufs}, life


def _steps_from_spans(spans):
    """Steps that keep buffer i live over spans[i] = (size, first, last)."""
    t_max = max(l for _, _, l in spans)
    steps = [Step(f"s{t}", (), tuple(f"b{i}" for i, (_, f, l) in enumerate(spans) if f <= t <= l))
             for t in range(t_max + 1)]
    return steps, [Buffer(f"b{i}", "kpu", s) for i, (s, _, _) in enumerate(spans)]


# Found by random search: at most 14 rows are live at once, every greedy order needs 17, 14 is reachable.
HARD = _steps_from_spans([(3, 3, 6), (5, 0, 0), (4, 4, 5), (5, 2, 2), (3, 2, 3), (4, 2, 4), (1, 3, 4), (2, 2, 5)])
