"""``BatchScheduler``: a ``BatchDecoder`` (``decoding/batch.py``) on a worker thread, for any number of callers.

Any thread ``submit``s a request and gets a ``concurrent.futures.Future``; the worker lets queued requests join
between steps (up to ``max_batch`` rows) and resolves each future when its request finishes (continuous batching:
a new question does not wait for a long answer). ``Cascade.submit`` and ``LiveSession(batched=True)`` use one
scheduler per cascade, so questions from many threads and many sessions are verified together.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from evcascade.decoding.batch import BatchDecoder, BatchRequest, BatchResult, KVBatch
from evcascade.errors import InputError


class BatchScheduler:
    """A ``BatchDecoder`` on a worker thread: any thread ``submit``s a request and gets a future; new requests
    join between steps (up to ``max_batch`` rows), finished ones leave. An error in one request's prefill fails
    that request's future; an error in a batched step fails every request in that step (clearly, none lost)."""

    def __init__(self, decoder: BatchDecoder, *, max_batch: int = 8,
                 on_result: Callable[[BatchResult], Any] | None = None) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.decoder, self.max_batch, self.on_result = decoder, max_batch, on_result
        self._queue: "queue.Queue[tuple[BatchRequest, Future] | None]" = queue.Queue()
        self._futures: dict[int, Future] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.batch_sizes: collections.Counter = collections.Counter()
        """How many batched steps ran with each number of rows (a counter: bounded however long the service runs)."""

    def submit(self, item: BatchRequest) -> Future:
        """Queue ``item``; the future resolves to its ``BatchResult`` (``tag`` is the caller's)."""
        if self._closed:
            raise RuntimeError("the batch scheduler is closed")
        future: Future = Future()
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="evcascade-batch")
                self._thread.start()
        self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Stop the worker after the requests in flight; later ``submit`` calls raise."""
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        decoder = self.decoder
        while True:
            # wait for work only when nothing is decoding; otherwise take what has arrived and step
            block = not decoder.rows
            while len(decoder.rows) < self.max_batch:
                try:
                    entry = self._queue.get(block=block)
                except queue.Empty:
                    break
                block = False
                if entry is None:
                    if not decoder.rows:
                        return
                    self._queue.put(None)  # finish the rows in flight first
                    break
                item, future = entry
                if not future.set_running_or_notify_cancel():
                    continue
                key = id(future)
                self._futures[key] = future
                try:
                    done = decoder.add(BatchRequest(item.request, item.context, item.options, (key, item.tag),
                                                    item.inputs, item.drafter))
                except BaseException as exc:  # this request's own error (bad input, its prefill)
                    self._futures.pop(key)
                    future.set_exception(exc)
                    continue
                if done is not None:
                    self._resolve(done)
            if not decoder.rows:
                continue
            self.batch_sizes[len(decoder.rows)] += 1
            try:
                results = decoder.step()
            except BaseException as exc:  # a failed batched forward: every request in it hears why
                for row in decoder.rows:
                    future = self._futures.pop(row.item.tag[0], None)
                    if future is not None:
                        future.set_exception(RuntimeError(f"batched step failed: {type(exc).__name__}: {exc}"))
                decoder.rows, decoder.kv = [], KVBatch()
                continue
            for result in results:
                self._resolve(result)

    def _resolve(self, result: BatchResult) -> None:
        key, tag = result.tag
        result.tag = tag
        future = self._futures.pop(key)
        if self.on_result is not None:
            self.on_result(result)
        future.set_result(result)
