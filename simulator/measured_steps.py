"""A measured run's engine steps placed on both timelines of vLLM's engine loop, read back from
the profiler's records (:mod:`simulator.profiler.vllm_replay`).

Each record is one engine call: its wall-clock start and return (``start_s``, ``end_s``) and the
batch it scheduled, with that batch's device time ``gpu_s`` (CUDA events around
``execute_model`` .. ``sample_tokens``). Runs profiled since 2026-12-02 also place both events
on the replay's clock (``gpu_start_s``, ``gpu_end_s``) and time the engine thread's launch
(``launched_s``); for older runs the GPU timeline is rebuilt from the device times: a batch
starts when the previous one ends, or when its start event is recorded if the GPU was idle by
then, and lasts ``gpu_s``. Where the rebuilt timeline sits is checked by the data itself: no
call ever returns (emitting the previous batch's tokens) before that batch ends on it, in any
committed run (the smallest margin is 0.1-0.7 ms per run).

A call has a batch in flight (one to harvest before it returns) when the call before it launched
one: a batch is harvested by the next call only. After a call that scheduled nothing (it waited
for the last batch itself: the step it harvested keeps that call's return as ``drained``) or an
idle spell (the replay loop sleeps only when nothing is unfinished), nothing is in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from simulator.errors import InputError

# Assumption: the start event is recorded this long after its call starts (the scheduler's
# pass over the batch, before execute_model); it only matters when the GPU idled.
RECORD_AFTER_S = 0.0003


@dataclass(slots=True)
class MeasuredStep:
    n_decode: int
    decode_ctx: float
    prefill: list[tuple[int, int]]
    gpu_s: float  # measured device time
    call_start: float  # wall clock, the engine call that formed and launched the batch
    call_end: float  # ... and its return, when the previous batch's tokens were emitted
    gpu_free: float  # the previous batch's end on the rebuilt GPU timeline
    gpu_start: float  # when this batch's device time began (previous end or its start event)
    in_flight: bool  # a previous batch was harvested by this call
    prev_seqs: int  # sequences in that batch
    launched: float | None = None  # wall clock, the engine thread finished launching it
    prev_tokens: int = 0  # tokens of the batch before it (0: none in flight)
    # The return of the call after it when that call launched nothing (it waited for this
    # batch itself, harvested it and left the engine idle); None otherwise.
    drained: float | None = None
    prev_prefill: bool = False  # the batch in flight held a prefill (a first token to emit)

    @property
    def tokens(self) -> int:
        return self.n_decode + sum(n for n, _ in self.prefill)

    @property
    def seqs(self) -> int:
        return self.n_decode + len(self.prefill)


# Steps of this many tokens or more that hold prefill are "large": where the GEMMs slow past
# 2,048 tokens (gemm_compute_decay) and the power cap shows most (simulator.cost.power).
LARGE_PREFILL_TOKENS = 2048


def step_class(prefill_tokens: int, tokens: int, graph_top: int) -> str:
    """What a step is, for the diagnostics that split a run by it (``simulate validate
    --steps``, the clock report): decode-only, or holding prefill and run within the CUDA-graph
    limit, eagerly above it, or large."""
    if not prefill_tokens:
        return "decode"
    if tokens >= LARGE_PREFILL_TOKENS:
        return f"prefill >= {LARGE_PREFILL_TOKENS} tokens"
    return "prefill, eager" if tokens > graph_top else "prefill, graphs"


def read_records(run_dir: Path) -> list[dict]:
    """The run's raw per-call records (``steps.jsonl``), every call included."""
    path = run_dir / "steps.jsonl"
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder: {e}", file=str(path)) from None


def read_steps(run_dir: Path, records: list[dict] | None = None) -> list[MeasuredStep]:
    """Every call that ran a batch with a device time, in order, placed on both timelines
    (from ``records`` when the caller has read them already)."""
    path = run_dir / "steps.jsonl"
    rows = read_records(run_dir) if records is None else records
    out: list[MeasuredStep] = []
    gpu_end = -1e9
    prev = None  # the previous call's record
    for i, s in enumerate(rows, 1):
        try:
            t0, t1, g = float(s["start_s"]), float(s["end_s"]), s.get("gpu_s")
            pre = [(int(n), int(p)) for n, p in s["prefill"]]
            n, ctx = int(s["n_decode"]), float(s["decode_ctx"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed step record ({e})", file=str(path), line=i) from None
        if g is not None:
            free = gpu_end
            if s.get("gpu_end_s") is not None:  # measured on the replay's clock
                start, end = float(s["gpu_start_s"]), float(s["gpu_end_s"])
            else:
                start = max(gpu_end, t0 + RECORD_AFTER_S)
                end = start + g
            gpu_end = end
            # A previous call with a device time is the last step placed: its batch is in flight.
            in_flight = prev is not None and prev.get("gpu_s") is not None
            prev_seqs = out[-1].seqs if in_flight else 0
            prev_tokens = out[-1].tokens if in_flight else 0
            out.append(MeasuredStep(n, ctx, pre, float(g), t0, t1, free, start, in_flight,
                                    prev_seqs, s.get("launched_s"), prev_tokens, None,
                                    in_flight and bool(out[-1].prefill)))
        elif out and prev is not None and prev.get("gpu_s") is not None:
            out[-1].drained = t1  # this call scheduled nothing and harvested the last batch
        prev = s
    return out
