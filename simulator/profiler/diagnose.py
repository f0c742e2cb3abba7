"""What happened inside one engine launch: for ``vllm_replay --diagnose``.

Some launches of vLLM 0.25 end exactly when their own batch ends on the GPU: the engine thread
waited for the device somewhere inside the launch (profiles/calibration/measurements/README.md,
"Launches that wait for their own batch"). A probe read around each launch tells the suspects
apart: a garbage collection pausing the thread (``gc.callbacks``, cheap), or the CUDA caching
allocators: device mallocs and frees, failed-malloc retries and all-stream synchronisations
(``torch.cuda.memory_stats``), and new pinned host blocks (``torch.cuda.host_memory_stats``,
cudaHostAlloc). Reading the allocators' counters costs tens of microseconds a step, so
diagnostic runs are not calibration runs.
"""

from __future__ import annotations

import gc
import time

ALLOC_KEYS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")


class GcClock:
    """Seconds the interpreter spent in garbage collection so far, and full (generation-2)
    collections counted. Costs two clock reads per collection, nothing per step."""

    def __init__(self) -> None:
        self.total, self.full, self._t0 = 0.0, 0, 0.0
        gc.callbacks.append(self._on)

    def _on(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t0
            self.full += info.get("generation") == 2

    def close(self) -> None:
        gc.callbacks.remove(self._on)


class LaunchProbe:
    """``before()`` when a launch starts, ``after(rec)`` when it ends: writes into the step
    record ``gc_s`` and ``gc_full`` (collections inside the launch), ``alloc`` (the device
    allocator's counters' changes) and ``host_alloc`` (the pinned allocator's counters that
    changed). The allocator fields are absent without CUDA."""

    def __init__(self, cuda) -> None:
        self.gc = GcClock()
        self.mem = cuda.memory_stats if cuda is not None else None
        self.host = getattr(cuda, "host_memory_stats", None) if cuda is not None else None
        self._before: tuple = (0.0, 0, None, None)

    def _host(self) -> dict | None:
        if self.host is None:
            return None
        return {k: v for k, v in self.host().items() if isinstance(v, (int, float))
                and ("num_" in k or k.endswith(".total"))}

    def before(self) -> None:
        mem = [self.mem().get(k, 0) for k in ALLOC_KEYS] if self.mem is not None else None
        self._before = (self.gc.total, self.gc.full, mem, self._host())

    def after(self, rec: dict) -> None:
        gc0, full0, mem0, host0 = self._before
        rec["gc_s"], rec["gc_full"] = round(self.gc.total - gc0, 6), self.gc.full - full0
        if mem0 is not None:
            now = self.mem()
            rec["alloc"] = {k: now.get(k, 0) - v for k, v in zip(ALLOC_KEYS, mem0, strict=True)}
        if host0 is not None:
            rec["host_alloc"] = {k: round(v - host0.get(k, 0), 6) for k, v in self._host().items()
                                 if v != host0.get(k, 0)}

    def close(self) -> None:
        self.gc.close()
