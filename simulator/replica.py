"""One vLLM engine replica as a simpy process: it plans steps, waits their roofline time, applies them.

A general step (any prefill, admission or preemption) is one event. When only decodes remain,
the replica advances a whole run of steps, up to the next completion, KV exhaustion or arrival,
in one event whose duration is the closed-form sum of
:class:`~simulator.cost.decode_run.DecodeRun`.

vLLM (0.25, async scheduling on by default) forms batch k+1 while batch k runs, so a request
that arrives after batch k started can join batch k+2 at the earliest; only an engine with
nothing running schedules it at once. The replica keeps arrivals in ``arrivals`` and lets the
scheduler see one only at the first step boundary whose finished step started after it arrived
(measured on H100/H200: this one-step lag is most of light-load TTFT beyond the prefill itself).
A run always ends on the step boundary where the scheduler would first see a new request:

- pre-routed arrivals (routers whose choice does not depend on load, e.g. round-robin) are
  known to the replica in advance, so it cuts the run there itself, with no extra event;
- arrivals routed on load (least-loaded) interrupt the run when they could be admitted; the
  replica finishes the step in progress and replans.
"""

from __future__ import annotations

from collections import deque

import simpy

from simulator.cost.roofline import Roofline
from simulator.metrics import LogHistogram, ReplicaStats
from simulator.prefix_cache import PrefixCache
from simulator.request import Request
from simulator.schedule import Scheduler


class Replica:
    def __init__(self, env: simpy.Environment, index: int, roofline: Roofline, num_blocks: int,
                 block_size: int, max_num_seqs: int, max_num_batched_tokens: int,
                 itl: LogHistogram, done: list[Request], sample_every: float,
                 incoming: list[Request] | None = None, async_scheduling: bool = True,
                 prefix: PrefixCache | None = None) -> None:
        self.env = env
        self.index = index
        self.rf = roofline
        self.sched = Scheduler(num_blocks, block_size, max_num_seqs, max_num_batched_tokens,
                               roofline.spec.tokens_per_step if roofline.spec else None,
                               prefix)
        self.itl = itl
        self.done = done
        self.stats = ReplicaStats()
        self.sample_every = sample_every
        self.next_sample = 0.0
        self.idle = True
        self.interruptible = False
        self.wake: simpy.Event | None = None
        # Pre-routed arrivals, in arrival order (None: the router enqueues them live).
        self.incoming: deque[Request] | None = None if incoming is None else deque(incoming)
        for r in incoming or ():
            r.replica = index
        # Arrived (or pre-routed) requests the scheduler cannot see yet, in arrival order.
        self.arrivals: deque[Request] = self.incoming if self.incoming is not None else deque()
        self.last_start = 0.0  # start of the step that ended at the current boundary
        # vLLM's async scheduling forms batch k+1 while batch k runs: an arrival during batch k
        # waits for batch k+2. Without it (draft-model and n-gram speculation) it joins k+1.
        self.async_sched = async_scheduling
        self.proc = env.process(self._run())

    # --- called by a live router ---------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        s = self.sched
        req.replica = self.index
        self.arrivals.append(req)
        if self.idle:
            if self.wake is not None and not self.wake.triggered:
                self.wake.succeed()
        elif (self.interruptible and len(self.arrivals) == 1 and not s.waiting
              and s.can_admit_head(req)):  # admissible once the scheduler sees it
            self.interruptible = False
            self.proc.interrupt()

    def load(self) -> int:
        return self.sched.load() + len(self.arrivals)

    def prefix_match(self, req: Request) -> int:
        """Cached hash groups at the start of req's prompt here (0 without prefix caching)."""
        pc = self.sched.prefix
        return 0 if pc is None else pc.match(req)

    def _reveal(self, now: float) -> None:
        """Move the arrivals the scheduler can see at this boundary into its queue."""
        s, a = self.sched, self.arrivals
        if not (s.decoding or s.prefilling):
            # Nothing running: every arrival so far is scheduled now (a live router's requests
            # have all arrived; their float arrival may exceed env.now by an ulp).
            cutoff = now if self.incoming is not None else float("inf")
        else:
            cutoff = min(self.last_start, now) if self.async_sched else now
        while a and a[0].arrival <= cutoff:
            r = a.popleft()
            s.waiting.append(r)
            # Arrived but not yet visible to the scheduler: in the system all the same.
            self.stats.occupancy_integral += max(now - r.arrival, 0.0)

    def _visible_after(self, run, t: float, arrival: float, m: int) -> int:
        """Steps of a run starting at ``t`` after which a request arriving at ``arrival`` is
        visible: through the first step that starts at or after the arrival (async
        scheduling), or through the step it arrives in (synchronous)."""
        if arrival <= t:
            return min(1, m)
        k = run.steps_done_by(arrival - t, m)
        if run.duration(k) < arrival - t:
            k += 1
        return min(k + 1, m) if self.async_sched else min(max(k, 1), m)

    # --- callbacks from the scheduler ----------------------------------------------------------
    def _on_token(self, r: Request, now: float) -> None:
        """A prefill finished and sampled a token: the first one, or the first after recompute."""
        if r.first_token_t is None:
            r.first_token_t = now
        else:
            self.itl.add(now - r.last_token_t)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _sample(self, now: float) -> None:
        s = self.sched
        self.stats.samples.append((round(now, 6), len(s.waiting), s.running, s.kv.used / s.kv.total,
                                   s.preemptions))
        self.next_sample = (now // self.sample_every + 1) * self.sample_every

    # --- the engine loop -----------------------------------------------------------------------
    def _run(self):
        env, s, rf, inc = self.env, self.sched, self.rf, self.incoming
        while True:
            now = env.now
            self._reveal(now)
            if now >= self.next_sample:
                self._sample(now)
            if not s.busy():
                if inc:
                    yield env.timeout(inc[0].arrival - now)
                    continue
                if inc is not None:
                    return  # pre-routed and all served
                if self.arrivals:
                    continue  # nothing running: they are visible now
                self.idle = True
                self.wake = env.event()
                yield self.wake
                self.idle = False
                continue
            m = 0 if (s.prefilling or s.can_admit_head()) else s.decode_run_length()
            used0 = s.kv.used
            if m == 0:
                step = s.plan_step(now)
                if not step.chunks and not step.n_decode:
                    continue  # everything was preempted; next iteration admits from the queue
                peak = s.kv.used
                prefills = [(n, r.computed) for r, n in step.chunks]
                cost = rf.step(step.n_decode, step.decode_ctx, prefills,
                               step.n_decode + len(prefills))
                self.last_start = now
                occupancy = s.running + len(s.waiting)
                yield env.timeout(cost.time_s)
                self._finish_general(step, cost, len(prefills), used0, peak, occupancy)
                continue
            if inc is not None:
                # Pre-routed: nothing outside this replica reads its state, so every decode run
                # up to the next scheduling decision is applied now and waited out as one event.
                yield env.timeout(self._decode_chain(now, m))
                continue
            # Live routing: one run, up to m steps; an admissible arrival cuts it short.
            batch = len(s.decoding)
            run = rf.decode_run(batch, s.ctx_sum, s.rate_sum)
            if self.arrivals and not s.waiting:
                m = self._visible_after(run, now, self.arrivals[0].arrival, m)
            dur = run.duration(m)
            self.interruptible = not s.waiting and not self.arrivals
            try:
                yield env.timeout(dur)
            except simpy.Interrupt:
                m = self._visible_after(run, now, env.now, m)
                dur = run.duration(m)
                yield env.timeout(now + dur - env.now)
            self.interruptible = False
            self._apply_run(run, m, dur, env.now, used0)

    def _decode_chain(self, now: float, m: int) -> float:
        """Apply decode runs back to back until the next arrival, a preemption or an admission
        becomes possible; return their total duration. Completions are stamped at their step."""
        s, rf, inc = self.sched, self.rf, self.incoming
        t = now
        while True:
            used0 = s.kv.used
            run = rf.decode_run(len(s.decoding), s.ctx_sum, s.rate_sum)
            dur = run.duration(m)
            cut = bool(inc) and not s.waiting and t + dur > inc[0].arrival
            if cut:
                # The next request arrives during the run: stop where it becomes visible.
                m = self._visible_after(run, t, inc[0].arrival, m)
                dur = run.duration(m)
            t += dur
            self._apply_run(run, m, dur, t, used0)
            if cut or not s.decoding or s.waiting:
                return t - now
            m = s.decode_run_length()
            if m == 0:
                return t - now

    def _apply_run(self, run, m: int, dur: float, end: float, used0: int) -> None:
        self.last_start = end - run.step_time(m - 1)
        self.itl.add_range(run.step_time(0), run.step_time(m - 1), run.batch * m, dur / m)
        s = self.sched
        occupancy = run.batch + len(s.waiting)
        peak = s.advance_decode(m, end, self.done.append)
        self.stats.add(dur, m, run.batch * m, run.flops(m), run.hbm_bytes(m), used0, s.kv.used,
                       peak, s.kv.total, occupancy)

    def _finish_general(self, step, cost, n_prefills: int, used0: int, peak: int,
                        occupancy: int) -> None:
        s = self.sched
        if step.n_decode:
            self.itl.add(cost.time_s, step.n_decode)
        self.stats.prefill_tokens += sum(n for _, n in step.chunks)
        s.finish_step(step, self.env.now, self._on_token, self.done.append)
        self.stats.add(cost.time_s, 1, step.n_decode + n_prefills, cost.flops, cost.hbm_bytes,
                       used0, s.kv.used, peak, s.kv.total, occupancy)
