"""Metrics as ``vllm bench serve`` defines them, and the run's counters.

TTFT = first token - arrival; TPOT = (E2E - TTFT) / (output tokens - 1) per request; ITL = every
gap between consecutive tokens of a request; E2EL = finish - arrival. Percentiles interpolate
linearly between order statistics, as numpy.percentile (which vllm bench serve uses) does.

ITLs are never stored one per token: a decode run of ``m`` steps adds ``m x batch`` gaps whose
values lie between its first and last step time, into a log histogram with 0.5% bins. ITL
percentiles are therefore exact to +-0.25%; the ITL mean is exact.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

PCTS = (50, 90, 95, 99)


def lookup(d: dict, dotted: str):
    """A nested summary value by dotted key (``"ttft_s.p90"``), or None where it is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def percentile(sorted_vals: Sequence[float], q: float) -> float:
    n = len(sorted_vals)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PCTS}}
    s = sorted(values)
    return {"mean": sum(s) / len(s), **{f"p{p}": percentile(s, p) for p in PCTS}}


class LogHistogram:
    """Weighted histogram on log-spaced bins; adds uniform ranges in O(bins spanned).

    On the simulator's hot path (a few adds per decode run), hence the bin index inlined."""

    RATIO = 1.005
    LO = 1e-6

    def __init__(self) -> None:
        self.bins: defaultdict[int, float] = defaultdict(float)
        self.weight = 0.0
        self.total = 0.0  # sum of value x weight, for the exact mean

    def add(self, value: float, weight: float = 1.0) -> None:
        self.bins[int(_log(value * _INV_LO) * _INV_LR) if value > _LO else 0] += weight
        self.weight += weight
        self.total += value * weight

    def add_range(self, lo: float, hi: float, weight: float, mean: float) -> None:
        """``weight`` values spread evenly between lo and hi (lo <= hi), averaging ``mean``."""
        self.weight += weight
        self.total += mean * weight
        a = _log(lo * _INV_LO) * _INV_LR if lo > _LO else 0.0
        ia = int(a)
        if hi <= lo * 1.0001:  # a run whose steps barely differ: one bin
            self.bins[ia] += weight
            return
        b = _log(hi * _INV_LO) * _INV_LR if hi > _LO else 0.0
        ib = int(b)
        if ia == ib:
            self.bins[ia] += weight
            return
        span = b - a
        bins = self.bins
        for i in range(ia, ib + 1):
            part = (min(b, i + 1) - max(a, i)) / span
            if part > 0:
                bins[i] += weight * part

    def mean(self) -> float | None:
        return self.total / self.weight if self.weight else None

    def percentile(self, q: float) -> float | None:
        if not self.weight:
            return None
        target = self.weight * q / 100
        acc = 0.0
        for i in sorted(self.bins):
            acc += self.bins[i]
            if acc >= target:
                return self.LO * self.RATIO ** (i + 0.5)
        return self.LO * self.RATIO ** (max(self.bins) + 0.5)

    def summary(self) -> dict[str, float | None]:
        return {"mean": self.mean(), **{f"p{p}": self.percentile(p) for p in PCTS}}


_log = math.log
_LO = LogHistogram.LO
_INV_LO = 1 / LogHistogram.LO
_INV_LR = 1 / math.log(LogHistogram.RATIO)


class ReplicaStats:
    """Counters one replica accumulates; summed or averaged across replicas at the end."""

    __slots__ = ("steps", "seq_steps", "flops", "hbm_bytes", "busy_s", "kv_integral",
                 "kv_peak_blocks", "samples", "occupancy_integral", "prefill_tokens",
                 "prefill_gpu_s", "power_added_s")

    def __init__(self) -> None:
        self.steps = 0
        self.seq_steps = 0
        self.flops = 0.0
        self.hbm_bytes = 0.0
        self.busy_s = 0.0
        self.kv_integral = 0.0  # sum of utilisation x seconds (trapezoid over each event)
        self.kv_peak_blocks = 0
        # sum of (requests waiting + running) x seconds, for the mean requests in system
        self.occupancy_integral = 0.0
        self.prefill_tokens = 0  # prompt (and recomputed) tokens prefilled, cache hits excluded
        # GPU time of steps holding prefill, and the part the power cap added (cost/power.py)
        self.prefill_gpu_s = 0.0
        self.power_added_s = 0.0
        # (t, queued, running, kv util, preemptions so far)
        self.samples: list[tuple[float, int, int, float, int]] = []

    def add(self, dt: float, steps: int, seq_steps: int, flops: float, hbm_bytes: float,
            used_before: int, used_after: int, peak: int, total: int, occupancy: int) -> None:
        """Account one event: ``steps`` engine steps over ``dt`` seconds, with ``occupancy``
        requests waiting or running throughout."""
        self.occupancy_integral += dt * occupancy
        self.steps += steps
        self.seq_steps += seq_steps
        self.flops += flops
        self.hbm_bytes += hbm_bytes
        self.busy_s += dt
        self.kv_integral += dt * (used_before + used_after) / 2 / total
        if peak > self.kv_peak_blocks:
            self.kv_peak_blocks = peak
