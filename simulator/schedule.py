"""vLLM v1 scheduling policy for one replica: who runs in the next engine step.

Per step (``vllm/v1/core/sched/scheduler.py``): running requests first (decodes take one token
each, then partial prefills take chunks), within ``max_num_batched_tokens`` and
``max_num_seqs``; when KV blocks run out, the most recently admitted running request is
preempted by recompute and goes back to the front of the queue; only if nothing was preempted
are waiting requests admitted, first come first served, each with as large a prefill chunk as
the token budget allows (chunked prefill is always on in v1), stopping at the first that does
not fit.

Decoding requests are never walked one by one: their contexts and block needs live in
aggregates (:class:`~simulator.kv_cache.KVCache`, ``ctx_sum``) and their completions in a heap
keyed by the step at which they finish. With speculative decoding a request gains ``r.rate``
tokens per step (its mean accepted length): it finishes after ``ceil(remaining / rate)`` steps
and the summed context grows by ``rate_sum`` per step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable

from simulator.kv_cache import KVCache, blocks_for
from simulator.prefix_cache import PrefixCache
from simulator.request import DECODE, DONE, PREFILL, QUEUED, Request


class Step:
    """A general engine step: the decoding batch plus prefill chunks ``(request, tokens)``."""

    __slots__ = ("n_decode", "decode_ctx", "chunks")

    def __init__(self, n_decode: int, decode_ctx: int) -> None:
        self.n_decode = n_decode
        self.decode_ctx = decode_ctx
        self.chunks: list[tuple[Request, int]] = []


class Scheduler:
    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int,
                 tokens_per_step: Callable[[float | None], float] | None = None,
                 prefix: PrefixCache | None = None) -> None:
        self.prefix = prefix
        # Speculative decoding: tokens a request gains per step, from its acceptance rate.
        self.rate_of = tokens_per_step
        mean = tokens_per_step(None) if tokens_per_step else 1.0
        self.kv = KVCache(num_blocks, block_size, max(1, round(block_size / mean)))
        self.max_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.prefilling: list[Request] = []
        self.decoding: dict[int, Request] = {}  # insertion order = order they began decoding
        self.heap: list[tuple[int, int, Request]] = []  # (finish step, token, request)
        self.ctx_sum = 0.0  # tokens in the KV cache, summed over decoding requests
        self.rate_sum = 0.0  # tokens the decoding requests gain per step, summed
        self.step_no = 0  # engine steps run so far; a decoding request gains one token per step
        self._token = 0
        self.preemptions = 0

    # --- state -------------------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self.decoding) + len(self.prefilling)

    def busy(self) -> bool:
        return bool(self.decoding or self.prefilling or self.waiting)

    def load(self) -> int:
        return len(self.waiting) + self.running

    def _ctx_of(self, r: Request) -> float:
        """Tokens in KV of a decoding request now (its mean, when speculating)."""
        return r.prompt_len + (self.step_no - r.join_step) * r.rate

    def _blocks_of(self, r: Request) -> int:
        return self.kv.held(r.prompt_len, r.v0, self.step_no - r.join_step)

    def can_admit_head(self, head: Request | None = None) -> bool:
        """Would the next general step admit the head of the queue, or ``head`` if it were at
        the head? (exact, absent preemption)"""
        if head is None:
            if not self.waiting:
                return False
            head = self.waiting[0]
        if self.running >= self.max_seqs:
            return False
        budget = self.max_tokens - len(self.decoding)
        if budget <= 0:
            return False
        free = self.kv.free - self.kv.new_blocks(self.step_no, 1)
        for r in self.prefilling:
            n = min(r.prompt_len - r.computed, budget)
            free -= blocks_for(r.computed + n, self.kv.bs) - r.blocks
            budget -= n
            if budget <= 0:
                return False
        return self._admission(head, budget)[3] <= free

    def _admission(self, r: Request, budget: int) -> tuple[int, int, int, int]:
        """(cached groups, tokens already computed, tokens to prefill now, KV blocks newly
        charged) for admitting r. Computed tokens come from KV shipped by a prefill replica
        (all but the last prompt token) or from cached hash groups; cached groups held by
        another request cost nothing, free ones are revived (charged again)."""
        pc = self.prefix
        h = pre = cached = 0  # cached: blocks of held groups, not charged again
        if r.remote_kv:
            pre = min(r.remote_kv, r.prompt_len - 1)
        elif pc is not None:
            if r.hash_ids:
                h = pc.match(r)
                pre = h * pc.hash_block
                cached = sum(1 for g in r.hash_ids[:h] if g not in pc.free_lru) * pc.bpg
            if r.stash is not None:  # preempted: what is left of its own blocks
                pre = min(pre + pc.own_hit(r, h) * self.kv.bs, r.prompt_len - 1)
        n = min(r.prompt_len - pre, budget)
        return h, pre, n, blocks_for(pre + n, self.kv.bs) - cached

    def _release(self, r: Request, blocks: int) -> None:
        """Free r's KV blocks: its own now, its cached groups once nobody else holds them."""
        self.kv.used -= blocks - r.shared
        if self.prefix is not None and r.groups is not None:
            self.kv.used -= self.prefix.release(r)
        r.shared = 0

    def _evict(self) -> None:
        """Allocation ate into free blocks holding cached groups: evict the oldest."""
        if self.prefix is not None:
            self.prefix.shrink(self.kv.total - self.kv.used)

    # --- preemption ----------------------------------------------------------------------------
    def _preempt_tail(self, now: float) -> Request:
        """Preempt the most recently admitted running request (vLLM: running.pop())."""
        if self.prefilling:
            r = self.prefilling.pop()
            in_kv = r.computed
        else:
            _, r = self.decoding.popitem()
            steps = self.step_no - r.join_step
            self.kv.remove_decoder(r.key)
            in_kv = self._ctx_of(r)
            self.ctx_sum -= in_kv
            self.rate_sum -= r.rate
            r.blocks = self._blocks_of(r)
            r.gen = min(r.gen + int(steps * r.rate), r.output_tokens - 1)
            r.prompt_len = r.input_tokens + r.gen  # recompute prompt and generated tokens
            r.last_token_t = now
        start = r.shared
        self._release(r, r.blocks)
        if self.prefix is not None:  # its own full blocks stay cached (prefix_cache.py)
            self.prefix.stash(r, start, int(in_kv) // self.kv.bs - start)
        r.blocks = 0
        r.computed = 0
        r.remote_kv = 0  # preempted: its shipped KV is gone, recompute here
        r.state = QUEUED
        r.heap_token = -1
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)
        return r

    # --- general step ------------------------------------------------------------------------
    def plan_step(self, now: float) -> Step:
        kv, bs = self.kv, self.kv.bs
        preempted = False
        need = kv.new_blocks(self.step_no, 1)
        while need > kv.free and (self.decoding or self.prefilling):
            self._preempt_tail(now)
            preempted = True
            need = kv.new_blocks(self.step_no, 1)
        kv.used += need
        budget = self.max_tokens - len(self.decoding)
        step = Step(len(self.decoding), self.ctx_sum)
        for r in list(self.prefilling):
            if budget <= 0:
                break
            n = min(r.prompt_len - r.computed, budget)
            nb = blocks_for(r.computed + n, bs) - r.blocks
            while nb > kv.free and r.state == PREFILL:
                self._preempt_tail(now)
                preempted = True
            if r.state != PREFILL:
                break
            kv.used += nb
            r.blocks += nb
            step.chunks.append((r, n))
            budget -= n
        if not preempted:
            while self.waiting and budget > 0 and self.running < self.max_seqs:
                r = self.waiting[0]
                h, pre, n, nb = self._admission(r, budget)
                if nb > kv.free:
                    break
                self.waiting.popleft()
                r.state = PREFILL
                r.computed = pre
                r.blocks = blocks_for(pre + n, bs)  # its context, shared groups included
                kv.used += nb
                if self.prefix is not None and not r.remote_kv and (r.hash_ids or r.stash):
                    # The groups it holds and its stash's hit; revivals are charged in nb.
                    self.prefix.acquire(r, h, pre - h * self.prefix.hash_block)
                    r.shared = h * self.prefix.bpg
                self.prefilling.append(r)
                step.chunks.append((r, n))
                budget -= n
        self._evict()
        return step

    def finish_step(self, step: Step, now: float, on_token, on_done) -> None:
        """Apply a general step that ended at ``now``."""
        self.step_no += 1
        self.ctx_sum += self.rate_sum
        for r, n in step.chunks:
            if r.state != PREFILL:
                continue
            r.computed += n
            if r.computed < r.prompt_len:
                continue
            self.prefilling.remove(r)
            if self.prefix is not None and r.hash_ids:
                r.shared += self.prefix.publish(r)  # its full groups are now cached, held by r
            on_token(r, now)
            r.gen += 1
            if r.gen >= r.output_tokens:
                self._done(r, now, r.blocks, on_done)
                continue
            r.state = DECODE
            r.join_step = self.step_no
            r.rate = self.rate_of(r.accept) if self.rate_of else 1.0
            r.v0 = self.kv.offset(r.prompt_len)
            r.key = self.kv.key(r.v0, self.step_no)
            self.kv.add_decoder(r.key)
            self.ctx_sum += r.prompt_len
            self.rate_sum += r.rate
            self.decoding[id(r)] = r
            self._token += 1
            r.heap_token = self._token
            left = r.output_tokens - r.gen
            steps = left if r.rate == 1.0 else math.ceil(left / r.rate - 1e-9)
            heapq.heappush(self.heap, (self.step_no + steps, self._token, r))
        self._complete_due(now, on_done)

    # --- decode runs ---------------------------------------------------------------------------
    def next_completion_in(self) -> int:
        h = self.heap
        while h and h[0][2].heap_token != h[0][1]:
            heapq.heappop(h)
        return h[0][0] - self.step_no if h else 0

    def decode_run_length(self) -> int:
        """Steps a pure-decode run can take before the next completion or KV exhaustion."""
        return self.kv.steps_that_fit(self.step_no, self.next_completion_in())

    def advance_decode(self, m: int, now: float, on_done) -> int:
        """Apply m decode-only steps; return the blocks in use at the run's peak."""
        kv = self.kv
        kv.used += kv.new_blocks(self.step_no, m)
        peak = kv.used
        self.ctx_sum += self.rate_sum * m
        self.step_no += m
        self._evict()
        self._complete_due(now, on_done)
        return peak

    def _complete_due(self, now: float, on_done) -> None:
        h = self.heap
        while h and h[0][0] <= self.step_no:
            _, tok, r = heapq.heappop(h)
            if r.heap_token != tok:
                continue
            del self.decoding[id(r)]
            self.kv.remove_decoder(r.key)
            self.ctx_sum -= self._ctx_of(r)
            self.rate_sum -= r.rate
            r.gen = r.output_tokens
            self._done(r, now, self._blocks_of(r), on_done)

    def _done(self, r: Request, now: float, blocks: int, on_done) -> None:
        self._release(r, blocks)
        r.blocks = 0
        r.state = DONE
        r.finish_t = now
        on_done(r)
