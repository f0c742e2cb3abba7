"""Costs that ``simulate calibrate`` measures directly instead of fitting: the front end's latency
(what requests served alone wait beyond the simulated engine loop) and a draft model's launch
cost per layer and pass. Kept apart from the fit (:mod:`simulator.calibrate`) because each is a
median over a selected set of measured requests or steps, not a least-squares residual.
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.cost.calibration import CalibrationProfile
from simulator.deployment import resolve, with_calibration
from simulator.measured_steps import read_records, read_steps
from simulator.request import Request
from simulator.run import run_simulation
from simulator.validate import load_run

if TYPE_CHECKING:
    from simulator.calibrate import Sample


def alone_requests(run_dir: Path, records: list[dict] | None = None) -> list[dict]:
    """Requests served alone: no other request in flight between their arrival and finish,
    prompt prefilled in one step, no cache hit. What they wait beyond the simulated engine
    loop is the front end's latency.

    Linear in the run's size after sorting: a request is alone when every earlier arrival has
    finished before it arrives and the next arrival comes after it finishes. ``records``: the
    run's per-call records, if already read (:func:`~simulator.measured_steps.read_records`)."""
    reqs = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines() if x]
    steps = sorted(read_records(run_dir) if records is None else records,
                   key=lambda s: s["start_s"])
    starts = [s["start_s"] for s in steps]
    spans = sorted((r["arrival_s"], r["finish_s"], i) for i, r in enumerate(reqs)
                   if r["finish_s"] is not None)
    out, latest = [], -math.inf  # latest finish among earlier arrivals
    for j, (a, f, i) in enumerate(spans):
        alone = latest <= a and (j + 1 == len(spans) or spans[j + 1][0] >= f)
        latest = max(latest, f)
        r, t = reqs[i], reqs[i]["first_token_s"]
        if not alone or t is None or r.get("cached_tokens"):
            continue
        lo, hi = bisect.bisect_left(starts, a), bisect.bisect_right(starts, t)
        pre = [s for s in steps[lo:hi] if s["gpu_s"] and not s["n_decode"]
               and s["prefill"] == [[r["input_tokens"], 0]]]
        if len(pre) == 1:
            out.append(r)
    return out


def draft_pass_time(run_dirs: list[Path], cal: CalibrationProfile) -> tuple[float, int] | None:
    """Per draft layer per draft pass: the engine thread launches a draft's k passes layer by
    layer (piecewise graphs) while the GPU runs the target's (FixedCosts.draft_launch). On the
    decode-only steps of draft speculative runs, (the call's time to its last launch - its
    preparation - the target's own launches) / (k x draft layers), from the engine thread's
    timeline; a run without one gives (device time - the launches before the first kernel and
    the target's) / (k x draft layers), the same where the step is launch-bound (2% apart on
    the H100's timeline runs). The median of the runs' medians, and the steps used; runs with a
    timeline only, where any has one (as the engine thread's own costs: a run's host sets its
    speed). None without such runs."""
    import statistics

    timed: list[tuple[float, int]] = []
    untimed: list[tuple[float, int]] = []
    for d in run_dirs:
        cfg, _, _, _ = load_run(d)
        rf = with_calibration(resolve(cfg.model_copy(update={"calibration": "none"})), cal).roofline
        sp = rf.spec
        if sp is None or sp.draft is None:
            continue
        per = sp.k * sp.draft.layers
        steps = [st for st in read_steps(d)[5:] if st.n_decode and not st.prefill]
        has_timeline = any(st.launched is not None for st in steps)
        # The call's time to its last launch: on the timeline, or the device time after the
        # first kernel plus the wait for it.
        vals = [((st.launched - st.call_start) if has_timeline
                 else st.gpu_s + rf.first_kernel(st.seqs))
                - rf.cpu_prepare(st.seqs) - rf.target_launch(st.tokens, False)
                for st in steps if st.launched is not None or not has_timeline]
        if vals:
            (timed if has_timeline else untimed).append((statistics.median(vals) / per,
                                                        len(vals)))
    runs = timed or untimed
    if not runs:
        return None
    return max(statistics.median(m for m, _ in runs), 0.0), sum(n for _, n in runs)


def front_end_latency(samples: list[Sample], cal: CalibrationProfile) -> tuple[float | None, int]:
    """Median of measured minus simulated TTFT over the requests served alone (each simulated
    alone under ``cal`` with no front-end latency), and their number; None under 5."""
    cal0 = cal.model_copy(update={"overhead": cal.overhead.model_copy(
        update={"request_latency_s": 0.0, "launch_jitter": 0.0})})  # the mean call
    gaps = []
    for s in samples:
        dep = with_calibration(s.dep, cal0)
        for r in s.alone:
            sim = run_simulation(s.cfg, [Request("x", 0.0, r["input_tokens"], r["output_tokens"])],
                                 deployment=dep).requests[0]
            gaps.append(r["first_token_s"] - r["arrival_s"] - sim.ttft)
    gaps.sort()
    return (max(gaps[len(gaps) // 2], 0.0) if len(gaps) >= 5 else None), len(gaps)
