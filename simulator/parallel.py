"""Run many simulations at once: local worker processes by default, or a Ray cluster.

Both yield ``(index, result)`` as each task finishes, so callers keep every finished result
even when the user presses Ctrl-C: the pool is then torn down, unfinished tasks are dropped and
``KeyboardInterrupt`` propagates for the caller to report.

Workers load the trace themselves (once per process) from its path, so a million requests are
never pickled per task.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from simulator.errors import InputError

_TRACES: dict[tuple, list] = {}


def cached_trace(path: str, fmt: str | None, rate_scale: float = 1.0) -> list:
    """The trace's requests, loaded once per process, as fresh copies (a run mutates them)."""
    from simulator.request import fresh
    from simulator.trace import load_trace

    key = (path, fmt)
    if key not in _TRACES:
        _TRACES[key] = load_trace(path, fmt)  # never simulated itself: only copies are
    return fresh(_TRACES[key], rate_scale)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does


def run_tasks(fn: Callable, tasks: list, jobs: int | None = None,
              ray_address: str | None = None) -> Iterator[tuple[int, object]]:
    """Yield (index, fn(task)) in completion order."""
    if ray_address:
        yield from _ray(fn, tasks, ray_address)
        return
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    if jobs == 1:
        for i, t in enumerate(tasks):
            yield i, fn(t)
        return
    ex = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_quiet_worker)
    try:
        pending = {ex.submit(fn, t): i for i, t in enumerate(tasks)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield pending.pop(f), f.result()
    finally:
        for p in list(getattr(ex, "_processes", {}).values()):  # drop unfinished work now
            p.terminate()
        ex.shutdown(wait=True, cancel_futures=True)


def _ray(fn: Callable, tasks: list, address: str) -> Iterator[tuple[int, object]]:
    try:
        import ray
    except ImportError:
        raise InputError("Ray is not installed: pip install 'llm-serving-simulator[ray]'",
                         field="ray-address") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=None if address == "local" else address, log_to_driver=False,
                     include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise InputError(f"cannot reach Ray at {address!r}: {e}",
                             field="ray-address") from None
    remote = ray.remote(fn)
    refs = {remote.remote(t): i for i, t in enumerate(tasks)}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                yield refs.pop(ref), ray.get(ref)
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
