"""One thread for all of an engine's torch work: model load, buffers, every step, persist and load.

Why one: PyTorch's CPU kernels run on an OpenMP team per calling thread.
Once two threads have each run a parallel op (say the model loaded on the
replica's thread, then decoded on the batcher's), libgomp manages more
threads than there are cores and throttles its spin-wait, so every small op
pays a futex wake-up. Measured on this 2-core machine with the demo model: a
batch-16 decode step takes 13 ms when load and steps share one thread and
22 ms when they do not (a 16x512 by 512x1376 matmul 1.5x slower, silu 4x),
and the second team, once made, stays for the life of the process.

So an engine owns a `ComputeThread`; `call` runs a function there and
returns its result (inline when already there), and the continuous
batcher's loop runs there as a long job that serves queued calls between
its iterations (`run_pending`), so a persist from another thread never
becomes a second team either.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class ComputeThread:
    """A daemon thread that runs submitted functions one at a time, in order."""

    def __init__(self, name: str = "torch-compute") -> None:
        self._jobs: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._cond = threading.Condition()
        self._loop_wake: Callable[[], None] | None = None
        self._has_loop = False
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the thread; blocks for the result (or raises what it raised)."""
        if self.on_thread():
            return fn(*args, **kwargs)
        return self.submit(partial(fn, *args, **kwargs)).result()

    def submit(self, job: Callable[[], T]) -> Future:
        """Queue ``job``; a long job running there (the batcher's loop) is woken to serve it."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the compute thread is closed")
            self._jobs.append((job, future))
            self._cond.notify()
            wake = self._loop_wake
        if wake is not None:
            wake()
        return future

    @property
    def has_loop(self) -> bool:
        """A long job holds the thread (a second one could only run inside its iterations)."""
        with self._cond:
            return self._has_loop

    def start_loop(self, loop: Callable[[], None], *, wake: Callable[[], None]) -> Future:
        """Run ``loop`` there until it returns; it must call `run_pending` between iterations and wake
        from its idle wait when ``wake`` is called (a job arrived). One loop at a time (RuntimeError)."""

        def run() -> None:
            with self._cond:
                self._loop_wake = wake
            try:
                loop()
            finally:
                with self._cond:
                    self._loop_wake = None
                    self._has_loop = False

        with self._cond:
            if self._has_loop:
                raise RuntimeError("a loop already runs on this compute thread")
            self._has_loop = True
        try:
            return self.submit(run)
        except BaseException:
            with self._cond:
                self._has_loop = False
            raise

    def has_pending(self) -> bool:
        with self._cond:
            return bool(self._jobs)

    def run_pending(self) -> None:
        """Run the queued jobs now (from the long job on this thread)."""
        while True:
            with self._cond:
                if not self._jobs:
                    return
                job, future = self._jobs.popleft()
            _run(job, future)

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued jobs, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if not self.on_thread():
            self._thread.join(timeout=timeout_s)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job, future = self._jobs.popleft()
            _run(job, future)


def _run(job: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = job()
    except BaseException as exc:  # handed to the caller, who raises it
        future.set_exception(exc)
    else:
        future.set_result(result)
