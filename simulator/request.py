"""A request: trace data plus its outcome and the scheduler's bookkeeping.

Requests are plain data (slots), not simpy processes: one simpy process per replica steps the
engine, so simulation cost grows with requests and scheduler events, not with tokens.
"""

from __future__ import annotations

# Scheduler states.
QUEUED, PREFILL, DECODE, DONE, REJECTED = range(5)


class Request:
    __slots__ = (
        "rid", "arrival", "input_tokens", "output_tokens", "line", "session_id", "hash_ids",
        # outcome
        "replica", "first_token_t", "finish_t", "preemptions", "rejected",
        # scheduler bookkeeping
        "state", "prompt_len", "computed", "blocks", "gen", "join_step", "key", "heap_token",
        "last_token_t", "accept", "rate", "v0", "groups", "shared", "remote_kv", "stash",
    )

    def __init__(
        self,
        rid: str,
        arrival: float,
        input_tokens: int,
        output_tokens: int,
        line: int = 0,
        session_id: str | None = None,
        hash_ids: list[int] | None = None,
        accept: float | None = None,
    ) -> None:
        self.rid = rid
        self.arrival = arrival
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.line = line
        self.session_id = session_id
        self.hash_ids = hash_ids
        self.replica = -1
        self.first_token_t: float | None = None
        self.finish_t: float | None = None
        self.preemptions = 0
        self.rejected: str | None = None
        self.state = QUEUED
        # Tokens to (re)compute before the next token: the prompt, or prompt + generated so far
        # after a preemption (vLLM v1 preempts by recompute).
        self.prompt_len = input_tokens
        self.computed = 0
        self.blocks = 0
        self.gen = 0
        self.join_step = 0
        self.key = 0
        self.heap_token = 0
        self.last_token_t = 0.0
        # Speculative decoding: this request's acceptance rate (None: the config's), the tokens
        # it gains per decode step, and its KV offset in step units (see kv_cache.py).
        self.accept = accept
        self.rate = 1.0
        self.v0 = 0
        # Prefix caching: the cached hash groups this request holds, and their KV blocks.
        self.groups: list[int] | None = None
        self.shared = 0
        # Preempted with prefix caching on: the key of its own computed blocks, left cached.
        self.stash: tuple[int, int] | None = None
        # Disaggregated serving: prompt tokens whose KV arrived from a prefill replica.
        self.remote_kv = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_t is None else self.first_token_t - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish_t is None else self.finish_t - self.arrival

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1), as vllm bench serve defines it."""
        if self.finish_t is None or self.first_token_t is None or self.output_tokens < 2:
            return None
        return (self.finish_t - self.first_token_t) / (self.output_tokens - 1)


def fresh(requests: list[Request], rate_scale: float = 1.0) -> list[Request]:
    """Unsimulated copies (a run writes its outcome into its Request objects), at
    ``rate_scale`` times the load (arrival times divided, as ``--rate-scale`` does)."""
    return [Request(r.rid, r.arrival / rate_scale, r.input_tokens, r.output_tokens, r.line,
                    r.session_id, r.hash_ids, r.accept) for r in requests]
