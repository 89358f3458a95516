"""Worker processes whose results come back in one order: item n from worker n mod count.

Each worker runs ``target(job, index, count, put)`` and puts its results in its own order; the
parent reads them round-robin, so the sequence is what one process would have produced. Queues
are short, so a fast worker waits for a slow parent instead of filling memory.

Stopping: workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process group; the parent
decides), they are started with SIGINT and SIGTERM blocked so that not even their start-up can be
interrupted halfway, and the parent terminates them when it stops for any reason. A parent that
could not (killed, or a second Ctrl-C) still takes them along: on Linux the kernel signals them
when it ends, elsewhere they stop at their next result.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

#: results each worker may have waiting for the parent
_AHEAD = 2
#: how often a wait checks that the other side is still alive (s)
_CHECK_S = 0.5
_SIGNALS = {signal.SIGINT, signal.SIGTERM}
#: prctl(2) option: the signal a process gets when its parent ends (linux/prctl.h)
_PR_SET_PDEATHSIG = 1


class WorkerError(RuntimeError):
    """A worker failed (its message is the one line a person sees) or died."""


@dataclass(frozen=True)
class _Failed:
    message: str


@dataclass(frozen=True)
class _End:
    pass


#: what a worker runs: ``target(job, index, count, put)`` puts the results of share ``index`` of
#: ``count``, in order, and raises an exception whose message is a plain line to fail
Target = Callable[[Any, int, int, Callable[[object], None]], None]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _end_with_parent() -> None:
    """Linux: have the kernel send SIGTERM here when the parent ends, however it ends.

    Covers what the parent cannot: being killed, or exiting at once on a second Ctrl-C while
    this worker is blocked (a FIFO nobody writes to, a slow disk).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker(target: Target, job: Any, index: int, count: int, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        _end_with_parent()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():  # it ended before the line above
        return

    def put(item: object) -> None:
        while True:
            try:
                out.put(item, timeout=_CHECK_S)
            except queue.Full:
                if parent is not None and not parent.is_alive():
                    raise SystemExit(1) from None
            else:
                return

    try:
        target(job, index, count, put)
    except Exception as exc:  # reported to the parent, whose one line it becomes
        put(_Failed(str(exc) or type(exc).__name__))
    else:
        put(_End())


def _take(out: Any, worker: BaseProcess) -> object:
    while True:
        try:
            return out.get(timeout=_CHECK_S)
        except queue.Empty:
            if not worker.is_alive():
                raise WorkerError(
                    f"a simulation worker process stopped (exit code {worker.exitcode}); "
                    "run again with --workers 1 to simulate in this process alone"
                ) from None


async def in_order(target: Target, job: Any, count: int) -> AsyncIterator[Any]:
    """Run ``count`` workers of ``target`` over ``job``; their results, round-robin."""
    context = multiprocessing.get_context("spawn")
    queues = [context.Queue(maxsize=_AHEAD) for _ in range(count)]
    workers = [
        context.Process(target=_worker, args=(target, job, i, count, queues[i]), daemon=True)
        for i in range(count)
    ]
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        for worker in workers:
            worker.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    try:
        turn = 0
        while True:
            item = await asyncio.to_thread(_take, queues[turn % count], workers[turn % count])
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise WorkerError(item.message)
            yield item
            turn += 1
    finally:
        _stop(workers, queues)


def _stop(workers: Sequence[BaseProcess], queues: Sequence[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
    for out in queues:
        out.cancel_join_thread()
        out.close()
