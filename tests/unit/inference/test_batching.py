"""Dynamic batching, tested the way it is used: many threads calling at once."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.inference.batching import DynamicBatcher


class FakeModel:
    """Doubles its input; records the rows of each call; slow enough that callers queue up."""

    def __init__(self, seconds: float = 0.005, fail_on: int | None = None) -> None:
        self.seconds, self.fail_on = seconds, fail_on
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, feeds):
        x = feeds["x"]
        with self.lock:
            self.batches.append(len(x))
        time.sleep(self.seconds)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("model failed")
        return x * 2, x.sum(axis=1, keepdims=True)


def call_concurrently(batcher, values, threads=16):
    start = threading.Barrier(threads)

    def one(v):
        start.wait() if v < threads else None
        return batcher.run({"x": np.full((1, 3), v, dtype=np.int64)})

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, values))


def test_each_caller_gets_its_own_rows_and_calls_are_gathered():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch=8)
    results = call_concurrently(batcher, range(64))
    for v, (doubled, total) in enumerate(results):
        np.testing.assert_array_equal(doubled, np.full((1, 3), 2 * v))
        assert total.tolist() == [[3 * v]]
    assert sum(model.batches) == 64
    assert max(model.batches) > 1  # concurrent callers shared calls
    assert max(model.batches) <= 8
    assert len(model.batches) < 64
    batcher.close()


def test_a_wait_gathers_callers_that_arrive_later():
    model = FakeModel(seconds=0.0)
    batcher = DynamicBatcher(model, max_batch=4, max_wait_s=0.2)
    results = call_concurrently(batcher, range(4), threads=4)
    assert [int(r[0][0, 0]) for r in results] == [0, 2, 4, 6]
    assert model.batches == [4]  # the first waited for the other three
    batcher.close()


def test_multi_row_calls_stay_whole_and_big_ones_run_alone():
    model = FakeModel()
    batcher = DynamicBatcher(model, max_batch=4)
    sizes = [3, 2, 1, 3, 2, 4, 5]

    def one(i):
        rows = np.arange(sizes[i] * 3).reshape(sizes[i], 3) + 100 * i
        out = batcher.run({"x": rows})[0]
        np.testing.assert_array_equal(out, rows * 2)
        return len(out)

    with ThreadPoolExecutor(len(sizes)) as pool:
        assert list(pool.map(one, range(len(sizes)))) == sizes
    assert max(model.batches) == 5  # only the 5-row call exceeds max_batch, alone
    assert all(b <= 4 for b in model.batches if b != 5)
    batcher.close()


def test_a_failing_call_fails_its_batch_and_the_batcher_goes_on():
    model = FakeModel(fail_on=7)
    batcher = DynamicBatcher(model, max_batch=8)
    outcomes = []

    def one(v):
        try:
            batcher.run({"x": np.full((1, 3), v)})
            return "ok"
        except RuntimeError:
            return "failed"

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(32)))
    assert outcomes[7] == "failed"
    assert outcomes.count("ok") >= 32 - 8  # only the batch holding 7 failed
    assert batcher.run({"x": np.ones((1, 3))})[0].tolist() == [[2, 2, 2]]
    batcher.close()


def test_close_while_callers_race_loses_no_call():
    model = FakeModel(seconds=0.001)
    batcher = DynamicBatcher(model, max_batch=8)
    stop = threading.Event()

    def closer():
        time.sleep(0.02)
        batcher.close()
        stop.set()

    threading.Thread(target=closer).start()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda v: batcher.run({"x": np.full((1, 3), v)})[0], range(400)))
    assert [int(r[0, 0]) for r in results] == [2 * v for v in range(400)]
    assert stop.wait(5)
    assert not batcher.alive
    assert batcher.run({"x": np.ones((1, 3))})[0].tolist() == [[2, 2, 2]]  # after close: alone


def test_max_batch_one_is_refused():
    with pytest.raises(ValueError, match="max_batch"):
        DynamicBatcher(FakeModel(), max_batch=1)


class OverlapModel(FakeModel):
    """FakeModel that records how many of its calls ran at the same moment."""

    def __init__(self, seconds: float = 0.02) -> None:
        super().__init__(seconds)
        self.running = 0
        self.most_at_once = 0

    def __call__(self, feeds):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().__call__(feeds)
        finally:
            with self.lock:
                self.running -= 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_model_threads_run_batches_side_by_side_and_never_more(threads):
    model = OverlapModel()
    batcher = DynamicBatcher(model, max_batch=4, threads=threads)
    results = call_concurrently(batcher, range(48))
    for v, (doubled, _) in enumerate(results):
        np.testing.assert_array_equal(doubled, np.full((1, 3), 2 * v))
    assert sum(model.batches) == 48
    assert model.most_at_once == threads  # 16 racing callers keep every model thread busy
    assert all(b <= 4 for b in model.batches)
    batcher.close()
    assert not batcher.alive


def test_close_with_several_model_threads_loses_no_call():
    model = FakeModel(seconds=0.001)
    batcher = DynamicBatcher(model, max_batch=8, threads=3)
    threading.Timer(0.02, batcher.close).start()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda v: batcher.run({"x": np.full((1, 3), v)})[0], range(400)))
    assert [int(r[0, 0]) for r in results] == [2 * v for v in range(400)]
    deadline = time.monotonic() + 5
    while batcher.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not batcher.alive


def test_zero_model_threads_are_refused():
    with pytest.raises(ValueError, match="threads"):
        DynamicBatcher(FakeModel(), max_batch=4, threads=0)


def test_a_call_that_finds_a_slot_free_and_nobody_queued_runs_on_its_own_thread():
    threads_seen = []

    def model(feeds):
        threads_seen.append(threading.current_thread())
        return (feeds["x"] * 2,)

    batcher = DynamicBatcher(model, max_batch=8, threads=2)
    for v in range(5):  # one after another: never anyone to share a call with
        assert batcher.run({"x": np.full((1, 3), v)})[0].tolist() == [[2 * v] * 3]
    assert threads_seen == [threading.current_thread()] * 5
    batcher.close()
    waiting = DynamicBatcher(model, max_batch=8, max_wait_s=0.001)  # a wait asks for company: model thread
    assert waiting.run({"x": np.ones((1, 3))})[0].tolist() == [[2, 2, 2]]
    assert threads_seen[-1] is not threading.current_thread()
    waiting.close()
