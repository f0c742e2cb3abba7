"""--disaggregate P:D: prefill replicas ship each prompt's KV to a decode replica; TTFT pays the
transfer, decodes no longer share steps with prefills."""

from __future__ import annotations

import json
import random

import pytest

from simulator.config import SimulationConfig
from simulator.deployment import resolve, with_calibration
from simulator.engine_loop import place
from simulator.errors import InputError
from simulator.request import Request
from simulator.run import run_simulation
from tests.test_cli import simulate


def test_one_request_pays_prefill_transfer_and_the_last_prompt_token():
    cfg = SimulationConfig(gpu="h100x2", disaggregate="1:1")
    dep = resolve(cfg)
    # Each call at the profile's mean CPU time (no call-to-call spread, simulator.jitter), so
    # the placement below can be worked out call by call.
    o = dep.calibration.overhead
    dep = with_calibration(dep, dep.calibration.model_copy(
        update={"overhead": o.model_copy(update={"launch_jitter": 0.0})}))
    rf = dep.roofline
    n = 3000
    r = Request("a", 0.0, n, 50)
    s = run_simulation(cfg, [r], deployment=dep).summary
    # The prefill replica, idle, launches the prompt at its arrival; its KV ships once the step
    # ends on the GPU. The decode replica, idle too, computes the last prompt token, and that
    # token goes out once the engine thread has launched the first decode step after it.
    idle = rf.output_time(0)
    prefill = place(0.0, 0.0, rf.step(0, 0, [(n, 0)], 1), idle, in_flight=False).end
    transfer = n * dep.kv_bytes_per_token / dep.kv_transfer_bytes_per_s + 0.001
    there = prefill + transfer
    last = place(there, there, rf.step(0, 0, [(1, n - 1)], 1), idle, in_flight=False)
    first_decode = rf.decode_run(1, float(n)).first_step()
    out = place(last.end, last.next_call, first_decode, rf.output_time(1), in_flight=True)
    front_end = dep.calibration.overhead.request_latency_s  # outside the engine loop
    assert front_end > 0
    assert r.ttft == pytest.approx(out.prev_emit + front_end, rel=1e-9)
    assert out.prev_emit > there + rf.step(0, 0, [(1, n - 1)], 1).time_s  # the loop's share
    assert s["disaggregation"]["kv_transfer_s"]["mean"] == pytest.approx(transfer)
    assert s["prefill_tokens"] == n + 1  # the whole prompt there, its last token again here
    assert dep.kv_transfer_bytes_per_s == pytest.approx(900 / 2 * 1e9 * dep.calibration
                                                        .efficiency.comm_bus)


def test_decode_steps_no_longer_share_the_gpu_with_long_prefills():
    rng = random.Random(3)

    def trace():
        t, out = 0.0, []
        for i in range(400):
            t += rng.expovariate(3.0)
            out.append(Request(f"r{i}", t, rng.choice([200, 8000]), 200))
        return out

    rng.seed(3)
    colocated = run_simulation(SimulationConfig(gpu="h100x4"), trace()).summary
    rng.seed(3)
    split = run_simulation(SimulationConfig(gpu="h100x4", disaggregate="2:2"), trace()).summary
    assert split["completed"] == colocated["completed"] == 400
    # Chunked 8k prefills stall colocated decodes; the split pays for it in TTFT.
    assert split["tpot_s"]["p99"] < 0.9 * colocated["tpot_s"]["p99"]
    assert split["ttft_s"]["p50"] > colocated["ttft_s"]["p50"]


def test_replica_count_must_match_and_the_cli_takes_the_flags(tmp_path):
    with pytest.raises(InputError, match="1:2 needs 3 replicas, the deployment has 2"):
        resolve(SimulationConfig(gpu="h100x2", disaggregate="1:2"))
    p = simulate("--trace", "traces/azure-conv-2023-10min.jsonl", "--gpu", "h100x4",
                 "--disaggregate", "1:3", "--kv-transfer-gbs", "50", "-q", "--output-dir",
                 str(tmp_path))
    assert p.returncode == 0, p.stderr
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["config"]["disaggregate"] == "1:3" and s["config"]["kv_transfer_gbs"] == 50
    assert s["disaggregation"]["kv_transfers"] == s["completed"]
    p = simulate("--trace", "traces/azure-conv-2023-10min.jsonl", "--disaggregate", "2-2")
    assert p.returncode == 1 and "field 'disaggregate'" in p.stderr
