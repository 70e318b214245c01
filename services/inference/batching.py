"""Dynamic batching: concurrent model calls gathered into one ONNX Runtime call.

As Triton's dynamic batcher does: callers (the request threads of Recommend and ScoreItems) put
their rows on a queue and wait; a model thread takes the first waiting call, adds whatever else
is queued (up to `max_batch` rows, waiting at most `max_wait_s` for more), runs the model once on
the stacked rows and hands each caller its own slice. With `max_wait_s` 0 nothing waits for
company: a call that finds a model slot free and nobody queued runs the model itself, on its
own thread (at low load every call, with no hand-over to a model thread and back: that hop cost
more CPU than the batching saved, and its wake-ups added to the tail), and under load the calls
that queued while every slot was busy share the next run. `threads` model slots run batches
side by side (ONNX Runtime and faiss release the GIL), as Triton's model instances do: one
would hold all model work to one core. No gRPC here; numpy in and out.
"""

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from shared import metrics

Feeds = dict[str, np.ndarray]
Outputs = tuple[np.ndarray, ...]


@dataclass
class _Call:
    feeds: Feeds
    rows: int
    future: Future[Outputs] = field(default_factory=Future)


class DynamicBatcher:
    """Runs `run_batch` (feeds of B rows -> outputs whose first axis is B) for many callers at
    once, on `threads` model threads. Thread-safe; `close()` serves what is queued, then calls
    run directly."""

    def __init__(self, run_batch: Callable[[Feeds], Outputs], *, max_batch: int, max_wait_s: float = 0.0,
                 threads: int = 1, name: str = "batcher") -> None:
        if max_batch < 2:
            raise ValueError("max_batch must be at least 2 (1 means no batching: do not build one)")
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        # model calls running now, inline or from a model thread: never more than `threads`
        self._slots = threading.BoundedSemaphore(threads)
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, feeds: Feeds) -> Outputs:
        """The outputs for these rows, computed alongside whatever other calls are waiting."""
        rows = len(next(iter(feeds.values())))
        if rows >= self.max_batch:
            return self.run_batch(feeds)
        if self.max_wait_s == 0 and self._queue.empty() and self._slots.acquire(blocking=False):
            try:  # nobody to share a call with and a slot free: run it here
                outputs = self.run_batch(feeds)
            finally:
                self._slots.release()
            metrics.INFERENCE_BATCH_ROWS.observe(rows)
            return outputs
        call = _Call(feeds, rows)
        with self._lock:  # nothing is queued behind the close marker
            if self._closed:
                return self.run_batch(feeds)
            self._queue.put(call)
        return call.future.result()

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in self._threads:  # one close marker per thread, behind every queued call
                self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether any model thread still runs."""
        return any(thread.is_alive() for thread in self._threads)

    def _loop(self) -> None:
        """One model thread: batches until it takes a close marker (each thread takes one)."""
        carry: _Call | None = None
        closing = False
        while not (closing and carry is None):
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                closing = True
                continue
            calls, rows = [first], first.rows
            self._slots.acquire()  # while every slot is busy, more calls queue up to join this one
            deadline = time.monotonic() + self.max_wait_s
            while rows < self.max_batch and not closing:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    closing = True
                elif rows + nxt.rows > self.max_batch:
                    carry = nxt  # starts the next batch
                    break
                else:
                    calls.append(nxt)
                    rows += nxt.rows
            try:
                self._execute(calls, rows)
            finally:
                self._slots.release()

    def _execute(self, calls: list[_Call], rows: int) -> None:
        try:
            if len(calls) == 1:
                outputs = self.run_batch(calls[0].feeds)
            else:
                names = list(calls[0].feeds)
                outputs = self.run_batch({n: np.concatenate([c.feeds[n] for c in calls]) for n in names})
        except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error; the loop goes on
            for call in calls:
                call.future.set_exception(exc)
            return
        metrics.INFERENCE_BATCH_ROWS.observe(rows)
        start = 0
        for call in calls:
            end = start + call.rows
            call.future.set_result(tuple(o[start:end] for o in outputs))
            start = end
