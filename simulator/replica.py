"""One vLLM engine replica as a simpy process: it plans steps, places them on the engine's CPU
and GPU timelines, applies them. (A pre-routed replica's process runs on its own clock,
:class:`simulator.run.OwnClock`, which stands in for the environment: it waits on nothing else.)

A general step (any prefill, admission or preemption) is one event. When only decodes remain,
the replica advances a whole run of steps, up to the next completion, KV exhaustion or arrival,
in one event whose duration is the closed-form sum of
:class:`~simulator.cost.decode_run.DecodeRun`.

Timing follows vLLM's engine loop (:mod:`simulator.engine_loop`): the engine thread forms and
launches batch k+1 while the GPU runs batch k, and emits batch k's tokens once batch k+1 is
launched. The replica's clock is the GPU's; ``cpu_free`` is when the engine thread starts its
next call, and the step that just ended stays ``pending`` until the next launch says when its
tokens (first tokens, completions, inter-token gaps) reach the client. A batch is formed at its
call's start, so a request that arrives while batch k runs joins batch k+2 at the earliest
(k+1 when batch k is a launch-bound eager step); only an engine with nothing running schedules
it at once. The replica keeps arrivals in ``arrivals`` and lets the scheduler see one only when
a call starts after it. A run always ends on the step boundary where the scheduler would first
see a new request:

- pre-routed arrivals (routers whose choice does not depend on load, e.g. round-robin) are
  known to the replica in advance, so it cuts the run there itself, with no extra event;
- arrivals routed on load (least-loaded) interrupt the run when they could be admitted; the
  replica finishes the step in progress and replans.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import simpy

from simulator.cost.power import Heat, slowed
from simulator.cost.roofline import Roofline
from simulator.engine_loop import hidden_emit, place
from simulator.jitter import LaunchJitter
from simulator.metrics import LogHistogram, ReplicaStats
from simulator.prefix_cache import PrefixCache
from simulator.request import Request
from simulator.schedule import Scheduler

if TYPE_CHECKING:
    from simulator.run import OwnClock


@dataclass(slots=True)
class Pending:
    """A step that ended on the GPU at ``end`` and whose tokens are not emitted yet: requests
    stamped there (first tokens, completions), decode tokens to count as gaps, and the engine
    thread's time to harvest the batch, and its extra when the call has to wait for a batch
    that held prefill (``prefill_harvest_s``)."""

    end: float
    out_s: float
    n_gaps: int = 0
    stamped: list[Request] = field(default_factory=list)
    wait_s: float = 0.0


class Replica:
    def __init__(self, env: simpy.Environment | OwnClock, index: int, roofline: Roofline,
                 num_blocks: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int,
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
        # vLLM's async scheduling forms batch k+1 while batch k runs; without it (draft-model
        # and n-gram speculation) the engine thread's costs sit between steps.
        self.async_sched = async_scheduling
        # The engine thread (simulator.engine_loop): when its next call starts, the step whose
        # tokens wait for it (a batch in flight), and when tokens last went out.
        self.cpu_free = 0.0
        self.pending: Pending | None = None
        self.last_emit = 0.0
        self.restart = True  # the engine idles: the next call starts when a request comes
        # Harvests that take longer (measured): of a batch holding prefill the call waited
        # for, and of the last batch before an idle spell.
        self.prefill_harvest_s = roofline.overhead.prefill_harvest_s
        self.drain_s = roofline.overhead.drain_s
        # Each placed call's CPU time varies around the profile's mean (simulator.jitter);
        # replicas start at different points of the sequence, as different hosts would.
        sigma = roofline.overhead.launch_jitter
        self.jitter = LaunchJitter(sigma, index * 0.1) if sigma > 0 else None
        # The GPU's recent compute load, which slows prefill steps at its power cap.
        self.heat = Heat.of(roofline) if roofline.power_k else None
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
        else:  # the next batch is formed when the engine thread's next call starts
            cutoff = min(self.cpu_free, now) if self.async_sched else now
        while a and a[0].arrival <= cutoff:
            r = a.popleft()
            s.waiting.append(r)
            # Arrived but not yet visible to the scheduler: in the system all the same.
            self.stats.occupancy_integral += max(now - r.arrival, 0.0)

    def _visible_after(self, run, t: float, arrival: float, m: int) -> int:
        """Steps of a run starting at ``t`` after which a request arriving at ``arrival`` is
        visible. Async: the call launching step i+1 starts once step i-1's tokens are out,
        ``out`` after step i starts, so through the first step that starts at or after
        ``arrival - out``. Synchronous: through the step it arrives in."""
        if self.async_sched:
            arrival -= run.out
        if arrival <= t:
            return min(1, m)
        k = run.steps_done_by(arrival - t, m)
        if run.duration(k) < arrival - t:
            k += 1
        return min(k + 1, m) if self.async_sched else min(max(k, 1), m)

    # --- the engine thread (simulator.engine_loop) ----------------------------------------------
    def _emit(self, t: float) -> None:
        """The pending step's tokens reach the client at ``t``."""
        p = self.pending
        for r in p.stamped:
            if r.first_token_t == p.end:
                r.first_token_t = t
            if r.finish_t == p.end:
                r.finish_t = t
                self.stats.occupancy_integral += t - p.end  # in the system until it is out
        if p.n_gaps:
            self.itl.add(t - self.last_emit, p.n_gaps)
        self.last_emit = t
        self.pending = None

    def _launch(self, now: float, cost) -> float:
        """Place the next step (GPU free at ``now``); emit the pending step's tokens once it is
        launched; return the step's end."""
        p = self.pending
        call = now if self.restart else self.cpu_free  # after idling, the arrival starts it
        self.restart = False
        out = p.out_s if p is not None else self.rf.output_time(0)
        if self.jitter is not None:
            f = self.jitter.next()
            cost = cost._replace(cpu_s=cost.cpu_s * f, launch_s=cost.launch_s * f)
        pl = place(now, call, cost, out, in_flight=p is not None, async_sched=self.async_sched,
                   wait_s=p.wait_s if p is not None else 0.0)
        if self.async_sched:
            if p is not None:
                self._emit(pl.prev_emit)
            self.cpu_free = pl.next_call
        return pl.end

    def _ended(self, end: float, out_s: float, n_gaps: int, stamped: list[Request],
               wait_s: float = 0.0) -> None:
        """A step ended at ``end``: async, its tokens wait for the next launch; synchronous,
        they go out once harvested, and the next call starts then."""
        self.pending = Pending(end, out_s, n_gaps, stamped, wait_s)
        if not self.async_sched:
            self._emit(end + out_s)
            self.cpu_free = end + out_s

    def _drain(self, now: float) -> None:
        """Nothing left to launch: the engine thread's next call waits for the last batch and
        harvests it, later than a call that launched one first (``drain_s``, measured)."""
        if self.pending is not None:
            self._emit(max(self.cpu_free, now) + self.pending.out_s + self.drain_s)

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
                self._drain(now)
                self.restart = True
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
                heat = self.heat
                if prefills:
                    if heat is not None:
                        slow = slowed(cost, rf.power_k, heat.at(now))
                        self.stats.power_added_s += slow.time_s - cost.time_s
                        cost = slow
                    self.stats.prefill_gpu_s += cost.time_s
                dur = self._launch(now, cost) - now
                occupancy = s.running + len(s.waiting)
                if heat is not None:
                    heat.add(now + dur, cost.time_s, cost.flops)
                yield env.timeout(dur)
                self._finish_general(step, cost, dur, len(prefills), used0, peak, occupancy)
                continue
            if inc is not None:
                # Pre-routed: nothing outside this replica reads its state, so every decode run
                # up to the next scheduling decision is applied now and waited out as one event.
                yield env.timeout(self._decode_chain(now, m))
                continue
            # Live routing: one run, up to m steps; an admissible arrival cuts it short.
            run = self._start_run(now)
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

    def _start_run(self, now: float):
        """A decode run from ``now``: its first step waits for the engine thread's launch
        (a lead), which also emits the pending step's tokens."""
        s = self.sched
        run = self.rf.decode_run(len(s.decoding), s.ctx_sum, s.rate_sum)
        p = self.pending
        if self.async_sched and p is not None and not self.restart:
            emit = hidden_emit(now, self.cpu_free, run.first, p.out_s, p.wait_s)
            if emit is not None:  # no lead: the launch was done before the GPU freed
                self._emit(emit)
                self.cpu_free = emit
                return run
        run.lead = max(self._launch(now, run.first_step()) - now - run.step_time(0), 0.0)
        return run

    def _decode_chain(self, now: float, m: int) -> float:
        """Apply decode runs back to back until the next arrival, a preemption or an admission
        becomes possible; return their total duration. Completions are stamped at their step."""
        s, inc = self.sched, self.incoming
        t = now
        while True:
            used0 = s.kv.used
            run = self._start_run(t)
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
        """Apply ``m`` decode steps ending at ``end``. Inside the run each step's tokens go out
        ``out`` after it ends (its successor's launch is hidden), so their gaps are the step
        times; the last step's tokens wait for the next launch."""
        s, itl, out = self.sched, self.itl, run.out
        b = run.batch
        last, last_gpu = run.last_step(m)
        if m > 1:
            first = run.step_time(0)
            gap0 = end - dur + first + out - self.last_emit  # step 0's tokens' gap
            if not self.async_sched or abs(gap0 - first) <= 1e-12 * first:
                # Step 0's gap is its step time (synchronous, or nothing delayed the tokens
                # before it): one range over steps 0..m-2.
                itl.add_range(first, run.step_time(m - 2), b * (m - 1), (dur - last) / (m - 1))
            else:
                itl.add(gap0, b)
                if m > 2:
                    itl.add_range(run.step_time(1), run.step_time(m - 2), b * (m - 2),
                                  (dur - first - last) / (m - 2))
            self.last_emit = end - last + out
        occupancy = b + len(s.waiting)
        done = self.done
        n0 = len(done)
        peak = s.advance_decode(m, end, done.append)
        if self.async_sched:
            # The next call starts once step m-2's tokens are out: out after step m-1 began
            # on the GPU, or after its launch when the engine thread is the bottleneck.
            self.cpu_free = end - last_gpu + out
        self._ended(end, out, b, done[n0:] if len(done) > n0 else [])
        flops, hbm = run.work(m)
        if self.heat is not None:
            self.heat.add(end, dur, flops)
        kv = s.kv
        self.stats.add(dur, m, b * m, flops, hbm, used0, kv.used, peak, kv.total, occupancy)

    def _finish_general(self, step, cost, dur: float, n_prefills: int, used0: int, peak: int,
                        occupancy: int) -> None:
        s = self.sched
        now = self.env.now
        self.stats.prefill_tokens += sum(n for _, n in step.chunks)
        n0 = len(self.done)
        s.finish_step(step, now, self._on_token, self.done.append)
        firsts = [r for r, _ in step.chunks if r.first_token_t == now]
        self._ended(now, self.rf.output_time(step.n_decode + n_prefills), step.n_decode,
                    firsts + self.done[n0:],
                    self.prefill_harvest_s if step.chunks else 0.0)
        self.stats.add(dur, 1, step.n_decode + n_prefills, cost.flops, cost.hbm_bytes,
                       used0, s.kv.used, peak, s.kv.total, occupancy)
