"""The GPU's power cap: prefill steps slow down while the GPU has been computing hard.

Why: an H200 SXM draws up to its 700 W board limit (the datasheet TDP; ``nvidia-smi -q``'s
"Current Power Limit" on the lent GPU), and under sustained prefill it hits that limit and lowers
its SM clock. Logged every 100 ms during the committed runs (``profile_gpu.sh``'s clock log,
:mod:`simulator.profiler.clocks`): the large prefill steps of isolated prompts (the prefill
sweep) ran at 1,980 MHz, those of Llama-3.1-8B at 20-40 req/s at 1,470-1,500 MHz with the power
cap active in 99-100% of samples, and Qwen2.5-32B's at 8 req/s at 1,455 MHz. The steps do not
slow by the clock ratio (their memory-bound parts and the HBM clock do not change) but by a few
percent: with one compute rate per GPU, the simulator had the loaded runs' large prefill steps
2-6% too fast and the isolated ones 1-6% too slow, and past saturation 2% of prefill time moves
TTFT p50 by 7-12% (``simulate validate --sensitivity``).

Model (an assumption shaped by those logs, its one factor fitted): the GPU's recent compute load
``h`` is an exponentially weighted mean, time constant :data:`TAU_S`, of its compute
utilisation (a step's FLOPs over its GPU time times the datasheet dense peak of the GEMMs'
dtype, so an FP8 model's full rate counts as much as a bf16 one's; 0 while idle).
A step that holds prefill takes ``1 + power_slowdown x h`` times its roofline time; decode steps,
bound by HBM bandwidth, are left as they are. ``power_slowdown`` is fitted by ``simulate
calibrate`` on the measured timeline, where ``h`` is computed from the measured steps the same
way; None or 0 turns the model off.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.cost.roofline import Roofline, StepCost

# Time constant of the load average (s): the clock log's power reading averages over about a
# second, and the clock settles within a few 100 ms samples of a load change. An assumption;
# 0.3 s and 3 s fit the committed H200 runs about as well (profiles/calibration/README.md).
TAU_S = 1.0


class Heat:
    """The GPU's recent compute load ``h``: 0 idle, 1 at the datasheet peak throughout."""

    __slots__ = ("h", "t", "peak")

    def __init__(self, peak_flops: float):
        self.h, self.t, self.peak = 0.0, 0.0, peak_flops

    @classmethod
    def of(cls, rf: Roofline) -> Heat:
        """The load of ``rf``'s GPU, against the datasheet peak of its GEMMs' dtype."""
        return cls(rf.gpu.peak_flops(rf.prec.gemm_dtype))

    def at(self, t: float) -> float:
        """The load at time ``t`` (no later work known): decayed since the last busy period."""
        return self.h * math.exp(-(t - self.t) / TAU_S) if t > self.t else self.h

    def add(self, end: float, busy_s: float, flops: float) -> None:
        """The GPU ran ``flops`` for ``busy_s`` ending at ``end``, idle before since the last."""
        if busy_s <= 0:
            return
        start = end - busy_s
        h = self.at(start)
        e = math.exp(-busy_s / TAU_S)
        self.h = h * e + flops / (busy_s * self.peak) * (1 - e)
        self.t = max(end, self.t)


def slowdown(k: float | None, h: float) -> float:
    """The factor on a prefill step's GPU time at load ``h``."""
    return 1.0 + k * h if k else 1.0


def slowed(cost: StepCost, k: float | None, h: float) -> StepCost:
    """A prefill step's ``cost`` with its GPU time slowed by the power cap at load ``h``."""
    return cost._replace(time_s=cost.time_s * slowdown(k, h))
