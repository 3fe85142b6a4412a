"""Per model scheduling: a concurrency limit with a bounded queue, and optional dynamic batching.

Without batching each request runs on its own, at most ``max_concurrency`` at a time; up to
``max_queue`` more wait, and the next one is refused with :class:`OverloadedError` (HTTP 503) so a
flood cannot pile up unbounded latency and memory. With batching (``max_batch_size`` > 1, only for
models whose inputs and outputs all have a dynamic first dimension) waiting requests with the
same tensor shapes are joined along that dimension, up to ``max_batch_size`` rows or until the
oldest has waited ``max_queue_delay_ms``, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from sdk.errors import OverloadedError

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunFn = Callable[[Tensors, "list[str] | None"], Tensors]


@dataclass(frozen=True)
class SchedulingConfig:
    max_concurrency: int = 4
    max_queue: int = 64
    #: 0 or 1: batching off (the default).
    max_batch_size: int = 0
    max_queue_delay_ms: float = 2.0
    #: models whose executions average less than this run on the event loop, not a worker thread.
    inline_below_ms: float = 0.3
    #: ... and, while a request is alone (:class:`Activity`), models averaging less than this:
    #: nothing waits behind them, and the hop to a worker thread and back (two thread wake-ups)
    #: cost 0.2-0.4 ms of c=1 latency on a loaded 2-core host (bench/agent.py: small, mid and
    #: medium models; the medium one's gain is at the edge of the host's noise). Health checks
    #: wait at most this long. Off when ``inline_below_ms`` is 0.
    inline_alone_below_ms: float = 10.0

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


@dataclass
class Result:
    outputs: Tensors
    queue_s: float
    batch_size: int
    #: True for one request per model execution, so batch sizes are counted once per batch.
    leader: bool = True


@dataclass
class _Item:
    inputs: Tensors
    names: list[str] | None
    rows: int
    key: Hashable
    future: asyncio.Future[Result]
    enqueued: float = field(default_factory=time.perf_counter)


class Activity:
    """Requests inside the schedulers that share it (one agent's models), waiting or running, and
    how many client connections the server holds: a request is alone only when it is the one in
    flight and its connection is the only one. Requests still unread on other connections are
    invisible to the schedulers; counting connections keeps a burst from many clients on the
    workers (and the queue bound, 503) rather than run one by one on the event loop."""

    def __init__(self) -> None:
        self.count = 0
        #: the server's open connections; set by the service once its server exists
        self.connections: Callable[[], int] = lambda: 1

    def alone(self) -> bool:
        return self.count == 1 and self.connections() <= 1


class Scheduler:
    def __init__(
        self,
        label: str,
        run: RunFn,
        executor: Executor,
        config: SchedulingConfig,
        batchable: bool,
        activity: Activity | None = None,
    ) -> None:
        self.label = label
        self._activity = activity or Activity()
        self._run = run
        self._executor = executor
        self.config = config
        self.batching = config.batching and batchable
        if config.batching and not batchable:
            log.info("%s: batching off, the model has no dynamic batch dimension", label)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._waiting = 0
        self._running = 0
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # Start pessimistic: every model runs on a worker until it has shown it is tiny.
        self._run_ewma_s = 0.01
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return self._waiting + self._running + len(self._pending)

    async def submit(self, inputs: Tensors, names: list[str] | None) -> Result:
        self._loop = asyncio.get_running_loop()
        if self.batching:
            return await self._submit_batched(inputs, names)
        return await self._submit_direct(inputs, names)

    def close(self) -> None:
        """Stop taking work once the queue is empty (after a hot swap); thread-safe."""
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def wait_idle(self, timeout: float) -> bool:
        """Block (from another thread) until nothing is queued or running: the drain after a swap."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self.in_flight

    # ---------------------------------------------------------------------------- one at a time

    async def _submit_direct(self, inputs: Tensors, names: list[str] | None) -> Result:
        if self._slots.locked() and self._waiting >= self.config.max_queue:
            raise OverloadedError(
                f"{self.label} is busy: {self.config.max_queue} requests already waiting; retry later"
            )
        start = time.perf_counter()
        self._waiting += 1
        self._activity.count += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self._activity.count -= 1
            raise
        finally:
            self._waiting -= 1
        began = time.perf_counter()
        self._running += 1
        inline_ms = self.config.inline_below_ms
        if inline_ms > 0 and self._activity.alone():
            inline_ms = max(inline_ms, self.config.inline_alone_below_ms)
        try:
            if self._run_ewma_s < inline_ms / 1000.0:
                # A tiny model (or one alone in the agent) runs faster than the hop to a worker
                # thread and back; the event loop pauses for less time than it spends parsing the
                # request, or while nothing else is waiting for it.
                outputs = self._timed_run(inputs, names)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._timed_run, inputs, names
                )
        finally:
            self._running -= 1
            self._activity.count -= 1
            self._slots.release()
        return Result(outputs, began - start, 1)

    def _timed_run(self, inputs: Tensors, names: list[str] | None) -> Tensors:
        began = time.perf_counter()
        try:
            return self._run(inputs, names)
        finally:
            self._run_ewma_s += 0.1 * (time.perf_counter() - began - self._run_ewma_s)

    # ---------------------------------------------------------------------------------- batched

    async def _submit_batched(self, inputs: Tensors, names: list[str] | None) -> Result:
        if len(self._pending) >= self.config.max_queue:
            raise OverloadedError(
                f"{self.label} is busy: {self.config.max_queue} requests already waiting; retry later"
            )
        first = next(iter(inputs.values()))
        rows = first.shape[0] if first.ndim else 1
        same_rows = all(v.ndim and v.shape[0] == rows for v in inputs.values())
        key: Hashable = (
            (
                tuple(sorted((n, v.shape[1:], v.dtype.str) for n, v in inputs.items())),
                tuple(names) if names else None,
            )
            if same_rows
            else object()
        )
        item = _Item(inputs, names, rows, key, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._batch_loop())
        self._activity.count += 1
        try:
            return await item.future
        finally:
            self._activity.count -= 1

    def _ready_rows(self, key: Hashable) -> int:
        return sum(it.rows for it in self._pending if it.key == key)

    async def _batch_loop(self) -> None:
        delay = self.config.max_queue_delay_ms / 1000.0
        limit = self.config.max_batch_size
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # Take a slot first: while every slot is busy, requests keep gathering into a bigger batch.
            await self._slots.acquire()
            first = self._pending[0]
            while self._ready_rows(first.key) < limit:
                remaining = first.enqueued + delay - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(first.key, limit)
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self, key: Hashable, limit: int) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        keep: deque[_Item] = deque()
        while self._pending:
            it = self._pending.popleft()
            if it.key == key and (not batch or rows + it.rows <= limit):
                batch.append(it)
                rows += it.rows
            else:
                keep.append(it)
        keep.extend(self._pending)
        self._pending = keep
        return batch

    async def _run_batch(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                merged = batch[0].inputs
            else:
                merged = {n: np.concatenate([it.inputs[n] for it in batch]) for n in batch[0].inputs}
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, merged, batch[0].names
            )
            offset = 0
            for i, it in enumerate(batch):
                part = (
                    {n: v[offset : offset + it.rows] for n, v in outputs.items()}
                    if len(batch) > 1
                    else outputs
                )
                offset += it.rows
                if not it.future.done():
                    it.future.set_result(Result(part, start - it.enqueued, len(batch), i == 0))
        except Exception as exc:
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
        finally:
            self._running -= 1
            self._slots.release()
