"""``m`` consecutive decode-only steps of one batch, summed in closed form.

Between two scheduler events a replica only decodes: the batch is fixed and the summed context
grows by a known amount per step, so only decode attention changes, linearly. Summing the steps
in closed form is what lets the simulator advance a whole run in one event instead of one event
per token. Built by :meth:`simulator.cost.roofline.Roofline.decode_run`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.cost.roofline import Roofline

INF = math.inf

class DecodeRun:
    """``m`` consecutive decode-only steps of a fixed batch, summed in closed form.

    Step ``i`` (from 0) reads ``ctx0 + B*(i+1)`` KV tokens per layer, so its attention costs
    ``L * max(a1 + b1*i, a2 + b2*i)``; everything else is the constant ``K(B)``. Each step lasts
    at least the engine thread's share (:mod:`simulator.engine_loop`: with async scheduling its
    whole cycle of harvest, preparation and launch; without, an eager launch): step ``i`` takes
    ``K + max(L * att(i), spare)``, where ``spare`` is that floor less the constant part.
    Attention only grows, so the floor binds for a leading block of steps. ``lead`` delays the
    first step when the engine thread was still busy with the step before the run.
    """

    __slots__ = ("batch", "k_time", "k_flops", "k_bytes", "a1", "b1", "a2", "b2", "L",
                 "f0", "f1", "by0", "by1", "a", "b", "spare", "_s", "first", "out", "lead")

    def __init__(self, rf: Roofline, batch: int, ctx0: float, k: tuple, growth: float | None = None):
        # k: what depends on the batch size alone (Roofline.decode_run caches it per size).
        (self.k_time, self.k_flops, self.k_bytes, spare, self.first, self.out, L, q, pf, kvb,
         qo_bytes, rc, rm) = k
        self.batch, self.spare, self.L, self.lead = batch, spare, L, 0.0
        if growth is None:
            growth = batch
        c = ctx0 + batch * q
        self.f0 = f0 = pf * c * q
        self.f1 = f1 = pf * growth * q
        by0 = c * kvb + qo_bytes
        by1 = growth * kvb
        sp = rf.spec
        if sp is not None and sp.draft is not None:
            # The draft's k decode passes read its own (smaller) KV cache: folded in as layers
            # of the target's (same ctx, scaled bytes), memory-bound like decode attention.
            d = sp.draft
            scale = sp.k * d.layers * d.kv_bytes_token_layer / (L * kvb)
            by0 += scale * (ctx0 + batch) * kvb + sp.k * d.layers / L * batch * d.attn_qo_bytes
            by1 += scale * growth * kvb
        self.by0, self.by1 = by0, by1
        self.a1, self.b1 = a1, b1 = f0 / rc, f1 / rc
        self.a2, self.b2 = a2, b2 = by0 / rm, by1 / rm
        # One line dominates for every step (the usual case: decode attention is memory-bound).
        if a2 >= a1 and b2 >= b1:
            self.a, self.b = a2, b2
        elif a1 >= a2 and b1 >= b2:
            self.a, self.b = a1, b1
        else:
            self.a = self.b = None
        self._s = self._floor_steps() if spare > 0 else 0

    def _floor_steps(self) -> float:
        """Number of leading steps whose attention is below the launch floor."""
        thr = self.spare / self.L
        s = INF
        for a, b in ((self.a1, self.b1), (self.a2, self.b2)):
            if a >= thr:
                return 0
            if b > 0:
                s = min(s, math.ceil((thr - a) / b))
        return s

    @staticmethod
    def _lin(a: float, b: float, lo: int, hi: int) -> float:
        """sum_{i=lo}^{hi-1} (a + b*i)."""
        n = hi - lo
        return a * n + b * (lo + hi - 1) * n / 2 if n > 0 else 0.0

    def duration(self, m: int) -> float:
        """Time of the first ``m`` steps."""
        t = m * self.k_time + self._attention(m)
        if self._s:
            s = min(self._s, m)
            t += s * self.spare - self._attention(s)
        return t + self.lead if m else t

    def _attention(self, m: int) -> float:
        """Attention time of the first ``m`` steps."""
        if self.a is not None:
            return m * self.L * self.a + self.L * self.b * m * (m - 1) / 2
        a1, b1, a2, b2 = self.a1, self.b1, self.a2, self.b2
        # a1 + b1*i >= a2 + b2*i  <=>  i >= x (if b1 > b2) or i <= x (if b1 < b2)
        x = (a2 - a1) / (b1 - b2)
        if b1 > b2:
            s = min(max(math.ceil(x), 0), m)
            att = self._lin(a2, b2, 0, s) + self._lin(a1, b1, s, m)
        else:
            s = min(max(math.floor(x) + 1, 0), m)
            att = self._lin(a1, b1, 0, s) + self._lin(a2, b2, s, m)
        return self.L * att

    def _att(self, i: int) -> float:
        """Step ``i``'s attention time."""
        if self.a is not None:  # the line max would pick, bit for bit
            return self.L * (self.a + self.b * i)
        return self.L * max(self.a1 + self.b1 * i, self.a2 + self.b2 * i)

    def step_time(self, i: int) -> float:
        att = self._att(i)
        t = self.k_time + (att if att > self.spare else self.spare)
        return t + self.lead if i == 0 else t

    def gpu_time(self, i: int) -> float:
        """Step ``i``'s GPU work alone (no engine-thread floor, no lead)."""
        return self.first.time_s + self._att(i)

    def first_step(self):
        """Step 0's cost as :func:`simulator.engine_loop.place` reads it."""
        f = self.first
        return type(f)(self.gpu_time(0), 0.0, 0.0, f.cpu_s, f.launch_s)

    def steps_done_by(self, dt: float, m_max: int) -> int:
        """Largest m <= m_max whose first m steps finish within dt.

        Steps only grow longer (but for step 0's lead), so ``dt / (step_time(0) - lead)`` bounds
        m from above, and cutting ``ceil(excess / step_time(m-1))`` steps never cuts too many: a
        few evaluations suffice.
        """
        m = min(m_max, int(dt / (self.step_time(0) - self.lead)))
        while m > 0:
            d = self.duration(m)
            if d <= dt:
                break
            m -= max(1, math.ceil((d - dt) / self.step_time(m - 1)))
        m = max(m, 0)
        while m < m_max and self.duration(m + 1) <= dt:
            m += 1
        return m

    def last_step(self, m: int) -> tuple[float, float]:
        """``(step_time(m-1), gpu_time(m-1))``, the run's last step, its attention once."""
        i = m - 1
        att = self._att(i)
        t = self.k_time + (att if att > self.spare else self.spare)
        return (t + self.lead if i == 0 else t), self.first.time_s + att

    def work(self, m: int) -> tuple[float, float]:
        """``(FLOPs, HBM bytes)`` of the first ``m`` steps."""
        n = (m - 1) * m / 2 if m > 0 else 0.0
        return (m * self.k_flops + self.L * (self.f0 * m + self.f1 * n),
                m * self.k_bytes + self.L * (self.by0 * m + self.by1 * n))
