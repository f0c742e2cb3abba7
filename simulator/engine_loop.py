"""vLLM's engine-core loop on two timelines, CPU and GPU: where a step lands and when tokens
reach the client. The replica and the calibration fit both place steps with :func:`place`.

vLLM 0.25 with async scheduling (``EngineCore.step_with_batch_queue``, a batch queue of two)
runs one thread that, in call k, schedules batch k, prepares its inputs and launches it, then
blocks on batch k-1's output, processes it (``update_from_output``) and returns; that return is
when batch k-1's tokens reach the client, and call k+1 starts right after. Hence:

- the CPU launches batch k while the GPU still runs batch k-1, so a launch shorter than batch
  k-1 is hidden;
- the GPU starts batch k when batch k-1 has ended and batch k's first kernel is launched, and
  runs its kernels as they come (a decode step's graph replay, then its sampler; a piecewise or
  eager step layer by layer), so a step cannot end before its last launch;
- batch k-1's tokens are emitted only after batch k has been launched: a long eager launch
  (30-90 ms measured on H100/H200, ``profiles/calibration/measurements``) delays the previous
  step's tokens, first tokens included;
- batch k is formed at call k's start and sees the requests that arrived by then.

The first call after an idle spell has no batch in flight: it launches and returns at once.
Without async scheduling (draft-model and n-gram speculation) call k launches batch k, waits for
it and returns, so the CPU costs sit serially between steps.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Costs(Protocol):
    """What :func:`place` reads of a step's cost (:class:`~simulator.cost.roofline.StepCost`)."""

    time_s: float  # GPU work
    cpu_s: float  # CPU from the call's start to the first kernel (schedule, prepare inputs)
    launch_s: float  # CPU launching the rest (the sampler; a piecewise or eager step's layers)


class Placed(NamedTuple):
    end: float  # the step's end on the GPU
    launched: float  # its last kernel launched (CPU)
    prev_emit: float | None  # when the previous step's tokens are emitted (async, one in flight)
    next_call: float | None  # when the engine thread starts its next call (async)


def place(gpu_free: float, call_start: float, cost: Costs, prev_out_s: float, *,
          in_flight: bool, async_sched: bool = True, wait_s: float = 0.0) -> Placed:
    """Place one step. ``gpu_free``: the previous batch's end on the GPU; ``call_start``: the
    engine call that forms this batch; ``prev_out_s``: CPU time to harvest the previous batch
    and emit its tokens, and ``wait_s`` more when the call had to wait for that batch (a
    batch holding prefill: ``prefill_harvest_s``); ``in_flight``: whether a previous batch is
    still to be harvested. Without async scheduling the caller emits this step's tokens at
    ``end`` + its own output time and starts the next call then."""
    prep = call_start + cost.cpu_s
    launched = prep + cost.launch_s
    start = max(gpu_free, prep)
    end = max(start + cost.time_s, launched)
    if not async_sched:
        return Placed(end, launched, None, None)
    if in_flight:
        emit = (gpu_free + prev_out_s + wait_s if launched <= gpu_free
                else launched + prev_out_s)
        return Placed(end, launched, emit, emit)
    return Placed(end, launched, None, launched + prev_out_s)


def hidden_emit(gpu_free: float, call_start: float, cost: Costs, prev_out_s: float,
                wait_s: float = 0.0) -> float | None:
    """:func:`place`'s emission of the previous step, async with a batch in flight, when this
    step's launch is done by the time the GPU frees (the usual case between decode runs): the
    step then starts at ``gpu_free`` and the engine thread's next call at the emission. None
    when the launch is not hidden and :func:`place` must be asked. Builds nothing: the decode
    runs' hot path."""
    if call_start + cost.cpu_s + cost.launch_s > gpu_free:
        return None
    return gpu_free + prev_out_s + wait_s
