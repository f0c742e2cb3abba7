"""Randomised traces and configurations: invariants that must hold for every run."""

from __future__ import annotations

import random

import pytest

from simulator import SimulationConfig, run_simulation
from simulator.request import Request


def _random_case(seed: int):
    rng = random.Random(seed)
    n = rng.randint(1, 250)
    rate = rng.choice([0.5, 5.0, 50.0, 500.0])
    t, reqs = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate) if rng.random() > 0.2 else 0.0  # bursts of equal arrivals
        reqs.append(Request(f"r{i}", t, rng.randint(1, 6000), rng.randint(1, 700)))
    seqs = rng.choice([1, 2, 8, 64, 256])
    gpu = rng.choice(["h100", "h100x2", "h100x3", "l40sx2"])
    # On H100s, mostly a KV cache of ~1-2 GiB, so that preemption is common.
    util = rng.choice([0.226, 0.23, 0.235, 0.9]) if gpu.startswith("h100") else 0.9
    engine = {
        "max_num_seqs": seqs,
        "max_num_batched_tokens": max(seqs, rng.choice([16, 512, 2048, 8192])),
        "max_model_len": rng.choice([2048, 4096] if util < 0.5 else [2048, 4096, 8192]),
        "gpu_memory_utilization": util,
        "block_size": rng.choice([8, 16, 32]),
    }
    cfg = SimulationConfig(gpu=gpu, model="llama-3.1-8b", engine=engine,
                           router=rng.choice(["round-robin", "least-loaded"]))
    return cfg, reqs


@pytest.mark.parametrize("seed", range(40))
def test_invariants(seed):
    cfg, reqs = _random_case(seed)
    res = run_simulation(cfg, reqs)
    s = res.summary
    max_len = res.deployment.max_model_len
    rejected = [r for r in reqs if r.input_tokens + r.output_tokens > max_len]
    # Every request ends completed or rejected, exactly once, with the right reason.
    assert s["completed"] + s["rejected"] == len(reqs)
    assert s["rejected"] == len(rejected)
    assert s["total_output_tokens"] == sum(r.output_tokens for r in reqs if r.rejected is None)
    for r in reqs:
        if r.rejected is None:
            assert r.arrival <= r.first_token_t <= r.finish_t
            assert 0 <= r.replica < res.deployment.replicas
            if r.output_tokens == 1:
                assert r.finish_t == r.first_token_t
        else:
            assert r.first_token_t is None and r.finish_t is None
    assert 0 <= s["kv_cache_utilization"]["mean"] <= s["kv_cache_utilization"]["peak"] <= 1
    assert s["preemptions"] == sum(r.preemptions for r in reqs)
    assert 0 < s["busy_fraction"] <= 1 + 1e-9 or s["completed"] == 0
    # Every replica's KV cache is empty again at the end.
    for _t, _, queued, running, kv, _pre in res.timeseries[-res.deployment.replicas:]:
        assert (queued, running, kv) == (0, 0, 0)
