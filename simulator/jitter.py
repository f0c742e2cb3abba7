"""The engine thread's call-to-call variation: a multiplicative factor on the CPU time of each
step the replica places one by one (preparation and launch).

Why: an engine call's preparation and launch are Python on the host, and the same work takes
different times from call to call. Over the H200 runs' timelines (2026-12-02 to 12-04, 14,500
prefill calls), one call's launch against its run's typical one spread from 0.70 (5th
percentile) to 1.40 (95th), the same shape in every run, host and model: a lognormal of
sigma 0.2 (``Overhead.launch_jitter``, measured by :func:`simulator.engine_thread.measure`).
The profile's launch costs are means, and a mean does not give the tails: an idle engine's
first tokens are launch-bound, so their spread is the launch's, and a prefill sweep's median
sits in the upper tail of its short prompts (they cluster, and the long prompts' eager steps
come after them).

The factors have mean 1 (the profile's costs stay the mean) and follow a golden-ratio sequence
through the lognormal's quantiles, not a random draw: deterministic, and every stretch of calls
covers the distribution evenly, so a short run's quantiles do not hang on a seed. Decode runs
advanced in closed form keep the mean (their launches hide under the GPU's work).
"""

from __future__ import annotations

import math
from statistics import NormalDist

GOLDEN = (math.sqrt(5) - 1) / 2
LEVELS = 1024  # quantiles tabulated: finer than any run's calls resolve


class LaunchJitter:
    """Factors for successive engine calls, lognormal with log-sd ``sigma`` and mean 1."""

    __slots__ = ("table", "u")

    def __init__(self, sigma: float, start: float = 0.0) -> None:
        z = NormalDist()
        raw = [math.exp(sigma * z.inv_cdf((i + 0.5) / LEVELS)) for i in range(LEVELS)]
        mean = math.fsum(raw) / LEVELS
        self.table = [x / mean for x in raw]
        self.u = start % 1.0

    def next(self) -> float:
        """The next call's factor."""
        self.u = (self.u + GOLDEN) % 1.0
        return self.table[int(self.u * LEVELS)]
