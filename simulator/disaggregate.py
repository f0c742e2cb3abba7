"""Disaggregated prefill and decode (``--disaggregate P:D``), as vLLM's P/D connectors run it.

The first P replicas only prefill: a request goes there first (routed by ``--router``), as a
one-token request whose output is discarded. When its prefill ends, its prompt's KV cache is
shipped to a decode replica (the least loaded of the D): ``prompt tokens x KV bytes per token
per GPU / link bandwidth + a fixed latency``, every TP rank sending its shard in parallel. The
decode replica admits it with that KV already computed, computes the prompt's last token (which
yields the first output token, so TTFT includes the transfer) and decodes the rest.
"""

from __future__ import annotations

import simpy

from simulator.request import Request


class Handoff(list):
    """The prefill replicas' completion list: each finished prefill starts a KV transfer."""

    def __init__(self, env: simpy.Environment, dep, decode_pick, real: dict[int, Request],
                 times: list[float]) -> None:
        super().__init__()
        self.env, self.dep, self.pick, self.real, self.times = env, dep, decode_pick, real, times

    def append(self, shadow: Request) -> None:  # called by the scheduler as on_done
        self.env.process(self._ship(self.real.pop(id(shadow)), shadow))

    def _ship(self, r: Request, shadow: Request):
        dep = self.dep
        dt = (r.input_tokens * dep.kv_bytes_per_token / dep.kv_transfer_bytes_per_s
              + dep.kv_transfer_latency_s)
        yield self.env.timeout(dt)
        self.times.append(dt)
        r.remote_kv = r.input_tokens
        r.preemptions += shadow.preemptions
        self.pick(r)


def shadow_of(r: Request) -> Request:
    """The prefill-side request: the same prompt, one token out."""
    return Request(r.rid, r.arrival, r.input_tokens, 1, r.line, r.session_id, r.hash_ids)


def transfer_summary(times: list[float], dep) -> dict:
    s = sorted(times)
    return {"prefill_replicas": dep.prefill_replicas,
            "decode_replicas": dep.replicas - dep.prefill_replicas,
            "kv_transfer_gbs": dep.kv_transfer_bytes_per_s / 1e9,
            "kv_transfers": len(s),
            "kv_transfer_s": {"mean": sum(s) / len(s) if s else None,
                              "p50": s[len(s) // 2] if s else None,
                              "p99": s[min(len(s) - 1, int(len(s) * 0.99))] if s else None}}

