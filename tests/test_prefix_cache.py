"""--enable-prefix-caching with the trace's hash_ids: hits skip exactly the cached tokens, freed
groups stay cached until their blocks are needed (least recently freed first), the hit rate is
in the summary, and a prefix-affinity router keeps shared prefixes on one replica."""

from __future__ import annotations

import json

import pytest

from simulator.config import SimulationConfig
from simulator.paths import profiles_dir
from simulator.prefix_cache import PrefixCache
from simulator.request import Request
from simulator.run import run_simulation
from simulator.schedule import Scheduler
from simulator.validate import load_run

H100 = profiles_dir() / "calibration" / "measurements" / "h100-sxm" / "vllm-0.25.1"


def req(rid: str, t: float, inp: int, ids: list[int], out: int = 20) -> Request:
    return Request(rid, t, inp, out, hash_ids=ids)


def run(reqs, gpu="h100", **engine):
    return run_simulation(SimulationConfig(gpu=gpu, engine=engine), reqs).summary


def test_hits_skip_exactly_the_cached_tokens():
    reqs = [req("a", 0.0, 1500, [1, 2, 3]), req("b", 5.0, 1300, [1, 2, 9]),
            req("c", 10.0, 1024, [1, 2])]  # fully cached prompt: the last token is recomputed
    s = run(reqs)
    # b hits groups 1, 2 (1,024 tokens); c's prompt is exactly them: it reuses one group.
    assert s["prefix_cache"]["hit_tokens"] == 1024 + 512
    assert s["prefill_tokens"] == 1500 + (1300 - 1024) + (1024 - 512)
    assert s["prefix_cache"]["hit_rate"] == pytest.approx(1536 / (1500 + 1300 + 1024))
    off = run([req(r.rid, r.arrival, r.input_tokens, r.hash_ids) for r in reqs],
              enable_prefix_caching=False)
    assert off["prefix_cache"]["hit_tokens"] == 0 and off["prefill_tokens"] == 1500 + 1300 + 1024
    ttft = {r.rid: r.ttft for r in reqs}
    assert ttft["b"] < 0.6 * ttft["a"]


def test_freed_groups_stay_cached_and_are_evicted_least_recently_freed_first():
    pc = PrefixCache(512, 16)
    a, b = Request("a", 0, 1100, 5, hash_ids=[1, 2]), Request("b", 0, 1100, 5, hash_ids=[3, 4])
    for r in (a, b):
        r.prompt_len = r.input_tokens
        pc.acquire(r, pc.match(r))
        pc.publish(r)
    assert pc.refs == {1: 1, 2: 1, 3: 1, 4: 1}
    assert pc.release(a) == 64 and pc.release(b) == 64  # 2 groups x 32 blocks each
    assert list(pc.free_lru) == [1, 2, 3, 4] and pc.evictable_blocks == 128
    pc.shrink(70)  # room for two groups: the two freed first go
    assert list(pc.free_lru) == [3, 4]
    c = Request("c", 0, 1100, 5, hash_ids=[1, 2])
    c.prompt_len = 1100
    assert pc.match(c) == 0
    d = Request("d", 0, 1100, 5, hash_ids=[3, 4, 5])
    d.prompt_len = 1100
    assert pc.match(d) == 2 and pc.acquire(d, 2) == 64  # revived: charged to the cache again


def test_prefix_affinity_router_raises_the_hit_rate():
    def trace():
        return [req(f"r{i}", i * 0.5, 2100, [100 + i % 3, 200 + i % 3, 1000 + i])
                for i in range(80)]

    rr = run(trace(), gpu="h100x4")
    aff = run_simulation(SimulationConfig(gpu="h100x4", router="prefix-affinity"),
                         trace()).summary
    # Round-robin spreads 3 system prompts over 4 replicas: each (prompt, replica) pair misses
    # once. Affinity sends each prompt to one replica: only its first request misses.
    assert aff["prefix_cache"]["hit_tokens"] == (80 - 3) * 1024
    assert rr["prefix_cache"]["hit_tokens"] == (80 - 12) * 1024


def _preempt_and_readmit(prefix: PrefixCache | None) -> list[list[tuple[str, int, int]]]:
    """Two 1,000-token prompts fill a 128-block cache; when both need their 65th block, b (the
    later) is preempted. Returns each step's prefill chunks as (request, computed, tokens)."""
    s = Scheduler(128, 16, 8, 8192, prefix=prefix)
    s.waiting.extend([Request("a", 0, 1000, 60), Request("b", 0, 1000, 200)])
    steps = []
    while s.busy() and len(steps) < 2:
        if s.prefilling or s.can_admit_head() or s.decode_run_length() == 0:
            st = s.plan_step(0.0)
            if st.chunks:
                steps.append([(r.rid, r.computed, n) for r, n in st.chunks])
            s.finish_step(st, 0.0, lambda r, t: None, lambda r: None)
        else:
            s.advance_decode(1, 0.0, lambda r: None)
    assert s.preemptions == 1
    return steps


def test_a_preempted_request_skips_its_own_blocks_still_cached():
    pc = PrefixCache(512, 16)
    on, off = _preempt_and_readmit(pc), _preempt_and_readmit(None)
    assert on[0] == off[0] == [("a", 0, 1000), ("b", 0, 1000)]
    # b held 1,024 tokens (64 full blocks) and had generated 25 when preempted: it must
    # recompute 1,025. Its 64 blocks stay cached; a's growth from 1,024 to 1,059 tokens takes
    # 3 of them, from b's tail, before a finishes and b is admitted again with 61 (976 tokens).
    assert on[1] == [("b", 976, 1025 - 976)]
    assert off[1] == [("b", 0, 1025)]  # prefix caching off: vLLM recomputes it all
    assert pc.hit_tokens == 976 and not pc.free_lru and pc.evictable_blocks == 0


@pytest.mark.parametrize("run_name", ["prefix-s4", "prefix-s4-r4"])
def test_hit_rate_matches_real_vllm(run_name):
    cfg, reqs, rows, _ = load_run(H100 / "llama8b-bf16-prefix" / run_name)
    measured = sum(r["cached_tokens"] for r in rows) / sum(r["input_tokens"] for r in rows)
    simulated = run_simulation(cfg, reqs).summary["prefix_cache"]["hit_rate"]
    assert measured > 0.7 and simulated == pytest.approx(measured, abs=0.01)
    meta = json.loads((H100 / "llama8b-bf16-prefix" / run_name / "meta.json").read_text())
    assert meta["enable_prefix_caching"] is True
