"""The engine thread's costs measured directly from runs that carry its timeline (profiled since
2026-12-02, :mod:`simulator.profiler.vllm_replay`), instead of inferred from device times.

Per engine call the profiler records when it started, when its batch was launched, and when
it returned; with the previous batch's end on the GPU, that gives, for every call:

- preparation (schedule, prepare inputs, graph replay, sampler launch): launch end - call
  start on full-graph decode steps, regressed on the number of sequences -> ``cpu_step_s`` +
  ``cpu_seq_s`` x n;
- the sampler's share of that, after the graph replay, which the GPU does not wait for: on
  decode steps of one or two sequences that found the GPU idle, their device time in steady
  state (median over those the GPU ran back to back) less what the GPU still ran after the
  launch ended -> ``sample_launch_s``;
- the piecewise and the eager launch: launch end - call start - preparation, per layer, on
  steps that hold prefill within the graph limit / run above it (trimmed means: launches add
  up, so the mean sets the pace) -> ``piecewise_layer_s``, ``eager_layer_s`` (dense 16-bit
  models), and FP8 runs' extra over the 16-bit runs of the same model -> ``piecewise_fp8_layer_s``,
  ``eager_fp8_layer_s`` (their layers launch activation-quantisation kernels too; a model's two
  dtypes are profiled in one session, while engines on different hosts launch 30-40% apart,
  which a difference against every 16-bit run would take for FP8's; over all 16-bit runs only
  where no model has both), and MoE runs' eager launch less the dense layers' ->
  ``eager_moe_layer_s`` (router, top-k, permutation, grouped GEMMs).
  Steps that follow an eager step are left out: there the launch can stall on CUDA's queue
  of pending kernels, full of the previous step's (up to 0.2 s for Qwen2.5-14B's 48 layers at
  8,192 tokens, measured), which costs nothing on either timeline as long as it ends before
  the previous step does;
- harvest (output copy, ``update_from_output``, output processing until the call returns):
  return - max(previous batch's GPU end, launch end) on calls with a batch in flight (but
  those below), regressed on that batch's sequences -> ``output_s`` + ``output_seq_s`` x n;
- a prefill's harvest: a call that launched its batch and then waited for a batch holding
  prefill (first tokens to emit) takes longer to harvest it than one holding decodes only:
  the same harvest time less the line above, median over those calls -> ``prefill_harvest_s``
  (all the H200's timeline runs: 0.29 ms over 14,316 calls, interquartile 0.02-0.58;
  waited-for decode batches: 0.02);
- the drain: a call that launched nothing (the engine's last before it idles) waits for the
  batch in flight itself and takes longer to harvest it than a call that launched one first:
  its return - max(the batch's GPU end, the previous call's return), less the harvest above,
  median over those calls -> ``drain_s`` (all the H200's: 0.32 ms over 1,859 calls, interquartile
  0.22-0.44; a two-token request's TPOT is one decode step plus it).

The regressions are robust (soft-L1: an occasional 50 ms Python pause does not move them).
The profiler's engine runs in-process, so harvest includes vLLM's output processor, which a
server runs in its front-end process instead (about 15 us per sequence, measured on the H200).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.measured_steps import MeasuredStep

if TYPE_CHECKING:
    from simulator.cost.fixed import FixedCosts


@dataclass(frozen=True)
class RunShape:
    """What the measurement needs to know of a run's deployment."""

    steps: list[MeasuredStep]
    layers: int
    moe_layers: int
    graph_max_tokens: float
    fp8: bool = False  # W8A8 GEMMs: more kernels to launch per layer
    model: str = ""  # FP8's extra is measured against 16-bit runs of the same key (model, host)


def _line(xs: list[float], ys: list[float], scale: float) -> tuple[float, float]:
    """Robust intercept and slope of ys against xs (soft-L1 loss at ``scale`` seconds)."""
    import numpy as np
    from scipy.optimize import least_squares

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    res = least_squares(lambda p: (p[0] + p[1] * x - y) / scale, [max(float(np.median(y)), 0.0), 0.0],
                        loss="soft_l1", bounds=([0.0, 0.0], [np.inf, np.inf]))
    return float(res.x[0]), float(res.x[1])


def _mean(xs: list[float], trim: float = 0.02) -> float:
    """Mean without the ``trim`` share at either end (a rare pause or clock glitch): launches
    add up step after step, so their mean, not their median, sets a run's pace."""
    v = sorted(xs)
    k = int(len(v) * trim)
    return statistics.fmean(v[k:len(v) - k])


def _fp8_extra(by_model: dict, i: int, min_calls: int, fp8: list[float], base: float) -> float:
    """FP8's extra launch per layer (``i``: 0 piecewise, 1 eager): over the 16-bit runs of the
    same model, weighted by FP8 calls, for models with enough of both; else over ``base``."""
    pairs = [(by_model[m, True][i], by_model[m, False][i]) for m, f in by_model
             if f and (m, False) in by_model]
    pairs = [(f, b) for f, b in pairs if len(f) >= min_calls and len(b) >= min_calls]
    if not pairs:
        return _mean(fp8) - base
    return sum(len(f) * (_mean(f) - _mean(b)) for f, b in pairs) / sum(len(f) for f, _ in pairs)


def measure(runs: list[RunShape], min_calls: int = 50) -> dict[str, tuple[float, int]]:
    """``{key: (value, calls measured)}`` for each engine-thread cost the runs pin (at least
    ``min_calls`` calls of its kind); empty when no run carries the timeline."""
    prep_n, prep_y, out_n, out_y, sampler = [], [], [], [], []
    drains: list[tuple[int, float]] = []  # (sequences, harvest) of batches a call drained
    first: list[tuple[int, float]] = []  # ... of prefill batches a call waited for
    for r in runs:
        small = [st for st in r.steps if st.launched is not None and not st.prefill
                 and st.n_decode <= 2]
        steady = [st.gpu_s for st in small if st.gpu_free > st.launched + 0.0005]
        if len(steady) >= 5:
            w = statistics.median(steady)
            sampler += [w - (st.gpu_start + st.gpu_s - st.launched) for st in small
                        if st.gpu_free < st.call_start]
        for st in r.steps:
            if st.launched is None:
                continue
            if st.prev_prefill and st.launched <= st.gpu_free:  # measured apart, below
                first.append((st.prev_seqs, st.call_end - st.gpu_free))
            elif st.in_flight:
                out_n.append(st.prev_seqs)
                out_y.append(st.call_end - max(st.gpu_free, st.launched))
            if st.drained is not None:
                drains.append((st.seqs, st.drained - max(st.gpu_start + st.gpu_s, st.call_end)))
            if not st.prefill and st.tokens <= r.graph_max_tokens:
                prep_n.append(st.n_decode)
                prep_y.append(st.launched - st.call_start)
    out: dict[str, tuple[float, int]] = {}
    if len(prep_y) < min_calls:
        return out
    a, b = _line(prep_n, prep_y, 0.0005)
    out["cpu_step_s"], out["cpu_seq_s"] = (a, len(prep_y)), (b, len(prep_y))
    if len(out_y) >= min_calls:
        a, b = _line(out_n, out_y, 0.0005)
        out["output_s"], out["output_seq_s"] = (a, len(out_y)), (b, len(out_y))
        for key, calls in (("prefill_harvest_s", first), ("drain_s", drains)):
            if len(calls) >= min_calls:  # their harvest beyond the line, median
                out[key] = (max(statistics.median(y - a - b * n for n, y in calls), 0.0),
                            len(calls))
    # Launches per layer of each (model, FP8?): (piecewise, eager) lists.
    by_model: dict[tuple[str, bool], tuple[list[float], list[float]]] = {}
    moe: list[tuple[float, int, int]] = []  # (eager launch, layers, MoE layers) of MoE runs
    for r in runs:
        pw, eager = by_model.setdefault((r.model, r.fp8), ([], []))
        for st in r.steps:
            if st.launched is None or not st.tokens or st.prev_tokens > r.graph_max_tokens:
                continue
            launch = (st.launched - st.call_start - out["cpu_step_s"][0]
                      - out["cpu_seq_s"][0] * st.seqs)
            if st.tokens <= r.graph_max_tokens:
                if st.prefill:
                    pw.append(launch / r.layers)
            elif not r.moe_layers:
                eager.append(launch / r.layers)
            elif not r.fp8:  # an FP8 MoE's eager launch holds both extras: left out
                moe.append((launch, r.layers, r.moe_layers))
    for i, (key, extra) in enumerate((("piecewise_layer_s", "piecewise_fp8_layer_s"),
                                      ("eager_layer_s", "eager_fp8_layer_s"))):
        base, fp8 = ([x for (_, f), v in by_model.items() if f == is_fp8 for x in v[i]]
                     for is_fp8 in (False, True))
        if len(base) >= min_calls:
            out[key] = (max(_mean(base), 0.0), len(base))
            if len(fp8) >= min_calls:  # FP8's extra over the 16-bit launch
                out[extra] = (max(_fp8_extra(by_model, i, min_calls, fp8, out[key][0]), 0.0),
                              len(fp8))
        elif len(fp8) >= min_calls:  # FP8 runs alone: their launch is the base, no extra known
            out[key] = (max(_mean(fp8), 0.0), len(fp8))
    if "eager_layer_s" in out and len(moe) >= min_calls:  # an MoE layer's extra launches
        e = out["eager_layer_s"][0]
        out["eager_moe_layer_s"] = (max(_mean([(x - n * e) / m for x, n, m in moe]), 0.0), len(moe))
    if len(sampler) >= 10:
        out["sample_launch_s"] = (min(max(statistics.median(sampler), 0.0),
                                      out["cpu_step_s"][0]), len(sampler))
    jitter = _jitter(runs, out["cpu_step_s"][0], out["cpu_seq_s"][0], min_calls)
    if jitter is not None:
        out["launch_jitter"] = jitter
    return out


def _jitter(runs: list[RunShape], a: float, b: float, min_calls: int) -> tuple[float, int] | None:
    """``(sigma, calls)``: how much a prefill call's preparation and launch vary around its
    run's typical one, as the log-sd of a lognormal (interquartile range / 1.349: a 50 ms
    Python pause does not widen it). Each call is compared with its own run's piecewise or eager
    calls (preparation ``a`` + ``b`` x sequences, plus the run's median launch beyond it), so
    hosts' and models' different speeds stay out of it."""
    logs: list[float] = []
    for r in runs:
        kinds: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for st in r.steps:
            if st.launched is None or not st.prefill or st.prev_tokens > r.graph_max_tokens:
                continue
            prep = a + b * st.seqs
            kinds[st.tokens > r.graph_max_tokens].append((st.launched - st.call_start, prep))
        for calls in kinds.values():
            if len(calls) < 10:
                continue
            rest = statistics.median(t - p for t, p in calls)
            v = [math.log(t / (p + rest)) for t, p in calls if t > 0 and p + rest > 0]
            mid = statistics.median(v)
            logs += [x - mid for x in v]
    if len(logs) < min_calls:
        return None
    q = statistics.quantiles(logs, n=4)
    return (q[2] - q[0]) / 1.349, len(logs)


def host_speed(steps: list[MeasuredStep], costs: FixedCosts, min_calls: int = 50) -> float | None:
    """How long this run's engine thread took to prepare and launch its batches, relative to
    what ``costs`` (a deployment's roofline under a profile) give them: the median over every
    call with a timed launch of measured / modelled (the `--host-speed` that run's host would
    need; None with fewer than ``min_calls`` such calls). Calls after an eager step are left
    out, as in :func:`measure`: their launch can wait on CUDA's queue."""
    ratios = []
    for st in steps:
        if st.launched is None or st.prev_tokens > costs.graph_max_tokens:
            continue
        model = (costs.cpu_prepare(st.seqs)
                 + costs.launch_time(st.tokens, bool(st.prefill), st.n_decode > 0))
        if model > 0:
            ratios.append((st.launched - st.call_start) / model)
    return statistics.median(ratios) if len(ratios) >= min_calls else None
