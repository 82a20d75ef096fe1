"""compiler.parallel: results in item order whatever the threads, and KPUC_THREADS=1 runs inline."""
import threading

from compiler.parallel import parallel_map, workers


def test_parallel_map_keeps_item_order(monkeypatch):
    monkeypatch.setenv("KPUC_THREADS", "2")
    assert workers() == 2
    assert parallel_map(lambda i: i * i, range(50)) == [i * i for i in range(50)]


def test_one_thread_runs_in_the_caller(monkeypatch):
    monkeypatch.setenv("KPUC_THREADS", "1")
    assert workers() == 1
    assert set(parallel_map(lambda _: threading.get_ident(), range(5))) == {threading.get_ident()}
