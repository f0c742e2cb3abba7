"""CUDA graphs and their limit, eager launches, the soft GEMM roofline and the front-end latency:
each against a hand computation (the start-up memory reserve: test_kv_capacity)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.config import SimulationConfig
from simulator.deployment import resolve
from simulator.request import Request
from simulator.run import run_simulation
from tests.conftest import unit_cal_with

EAGER, EAGER_MOE, PIECEWISE, LATENCY = 0.001, 0.0005, 0.002, 0.004


@pytest.fixture
def cal(tmp_path):
    return unit_cal_with(tmp_path / "floor.toml", eager_layer_s=EAGER, eager_moe_layer_s=EAGER_MOE,
                         prefill_step_s=PIECEWISE, request_latency_s=LATENCY)


def _dep(cal, model="llama-3.1-8b", **engine):
    return resolve(SimulationConfig(gpu="h100", model=model, calibration=cal, engine=engine))


def test_capture_size_follows_vllms_rule_and_flags(cal):
    # min(2 x max-num-seqs x (1 + k), 512, max-num-batched-tokens)
    assert _dep(cal).roofline.graph_max_tokens == 512
    assert _dep(cal, max_num_seqs=64).roofline.graph_max_tokens == 128
    assert _dep(cal, max_num_seqs=200, max_num_batched_tokens=300).roofline.graph_max_tokens == 300
    assert _dep(cal, max_cudagraph_capture_size=2048).roofline.graph_max_tokens == 2048
    assert _dep(cal, enforce_eager=True).roofline.graph_max_tokens == 0


def test_a_step_above_the_largest_graph_is_launched_eagerly(cal):
    rf = _dep(cal).roofline
    launch = 32 * EAGER  # Llama-3.1-8B: 32 layers, no MoE layer
    assert rf.launch_time(512, True) == 0 and rf.launch_time(513, True) == pytest.approx(launch)
    c513 = rf.step(0, 0.0, [(513, 0)], 1)
    assert c513.launch_s == pytest.approx(launch) and c513.cpu_s == 0
    gpu = rf._sum(rf.layer_ops(513) + rf.step_ops(0, 0.0, [(513, 0)], 1))[0]
    assert gpu < launch  # at 100% efficiency 513 tokens take ~11 ms < 32 ms of launches
    # Eager: the GPU work plus the fixed GPU step cost, and no piecewise-graph extra ...
    assert c513.time_s == pytest.approx(gpu + 0.001)
    # ... at 512 tokens a piecewise graph runs it, with its extra.
    gpu512 = rf._sum(rf.layer_ops(512) + rf.step_ops(0, 0.0, [(512, 0)], 1))[0]
    c512 = rf.step(0, 0.0, [(512, 0)], 1)
    assert c512.time_s == pytest.approx(gpu512 + 0.001 + PIECEWISE) and c512.launch_s == 0
    # Served alone, the launch-bound prefill ends with its launch (kernels run as launched).
    r = Request("a", 0.0, 513, 1)
    run_simulation(SimulationConfig(gpu="h100", calibration=cal), [r])
    assert r.ttft == pytest.approx(launch + LATENCY, rel=1e-9)
    # The explain table shows the engine thread's time the GPU work does not hide.
    rows = {r.name: r.time_s for r in rf.explain(0, 0.0, [(513, 0)], 1)}
    assert rows["engine_thread(cpu, exposed)"] == pytest.approx(launch - gpu - 0.001)
    assert sum(rows.values()) == pytest.approx(launch)
    moe = _dep(cal, model="qwen3-30b-a3b").roofline
    assert moe.launch_time(600, False) == pytest.approx(48 * EAGER + 48 * EAGER_MOE)


def test_decode_run_closed_form_keeps_the_eager_launch(cal):
    """With --enforce-eager every decode step is launched eagerly and lasts at least that,
    until attention outgrows it; the closed form over a run equals the sum of single steps."""
    rf = _dep(cal, enforce_eager=True).roofline
    batch, ctx0 = 256, 256 * 2500.0
    run = rf.decode_run(batch, ctx0)
    steps = [max(rf.step(batch, ctx0 + batch * i, [], batch).time_s,
                 rf.cpu_cycle(batch, batch, False)) for i in range(400)]
    assert steps[0] == pytest.approx(32 * EAGER)  # launch-bound at first
    assert steps[-1] > steps[0] * 1.02  # attention over ~100k more tokens outgrows it
    for m in (1, 37, 150, 400):
        assert run.duration(m) == pytest.approx(sum(steps[:m]), rel=1e-9)
        assert run.step_time(m - 1) == pytest.approx(steps[m - 1], rel=1e-9)


def test_soft_gemm_roofline_at_the_ridge_point(cal, tmp_path):
    p = tmp_path / "soft.toml"
    p.write_text(Path(cal).read_text().replace("comm_bus = 1.0",
                                               "comm_bus = 1.0\ngemm_roofline_p = 2"))
    rf = _dep(str(p)).roofline
    hard = _dep(cal).roofline
    # Equal compute and memory time: a p-norm of 2 gives sqrt(2) x the hard roofline; far from
    # the ridge the two agree.
    assert rf.op_time("mlp", 2.0, 1.0, 0.0, 1.0, 0.5, 1.0) == pytest.approx(2 * 2 ** 0.5)
    assert hard.op_time("mlp", 2.0, 1.0, 0.0, 1.0, 0.5, 1.0) == pytest.approx(2.0)
    assert rf.op_time("draft:mlp(prefill)", 2.0, 1.0, 0.0, 1.0, 0.5, 1.0) == pytest.approx(
        2 * 2 ** 0.5)
    assert rf.op_time("attention_decode", 2.0, 1.0, 0.0, 1.0, 0.5, 1.0) == pytest.approx(2.0)
    assert rf.op_time("mlp", 1e3, 1.0, 0.0, 1.0, 1.0, 1.0) == pytest.approx(1e3, rel=1e-6)


def test_front_end_latency_shifts_token_times_not_the_engine(cal):
    r = Request("a", 0.0, 300, 10)
    dep = _dep(cal)
    run_simulation(SimulationConfig(gpu="h100", calibration=cal), [r])
    prefill = dep.roofline.step(0, 0.0, [(300, 0)], 1).time_s
    assert r.ttft == pytest.approx(prefill + LATENCY, rel=1e-9)
    no_lat = Path(cal.replace(".toml", "-0.toml"))
    no_lat.write_text(Path(cal).read_text().replace(f"request_latency_s = {LATENCY}", ""))
    r0 = Request("a", 0.0, 300, 10)
    run_simulation(SimulationConfig(gpu="h100", calibration=str(no_lat)), [r0])
    assert r.e2e - r0.e2e == pytest.approx(LATENCY, rel=1e-9)
    assert r.tpot == pytest.approx(r0.tpot, rel=1e-12)


def test_every_moe_layer_pays_its_fixed_routing_time(cal, tmp_path):
    p = tmp_path / "moe.toml"
    p.write_text(Path(cal).read_text().replace("comm_latency_s = 0.0",
                                               "comm_latency_s = 0.0\nmoe_layer_s = 0.00003"))
    base, moe = _dep(cal, model="qwen3-30b-a3b").roofline, _dep(str(p), model="qwen3-30b-a3b").roofline
    for n_dec in (1, 64):  # decode steps in graphs: 48 MoE layers x 30 us more, whatever the batch
        d = moe.step(n_dec, n_dec * 500.0, [], n_dec).time_s - base.step(n_dec, n_dec * 500.0, [],
                                                                         n_dec).time_s
        assert d == pytest.approx(48 * 0.00003, rel=1e-9)
        assert moe.decode_run(n_dec, n_dec * 500.0).duration(3) - base.decode_run(
            n_dec, n_dec * 500.0).duration(3) == pytest.approx(3 * 48 * 0.00003, rel=1e-9)
    dense = _dep(str(p)).roofline  # a dense model has no MoE layer to pay it
    assert dense.step(8, 4000.0, [], 8).time_s == _dep(cal).roofline.step(8, 4000.0, [], 8).time_s


def test_fp8_layers_launch_their_extra_kernels(tmp_path):
    """FP8 W8A8 layers launch activation-quantisation kernels too: each launch per layer gains
    its FP8 extra, eager and piecewise; a 16-bit deployment's launches do not."""
    cal = unit_cal_with(tmp_path / "fp8.toml", eager_layer_s=EAGER, piecewise_layer_s=PIECEWISE,
                        eager_fp8_layer_s=0.0003, piecewise_fp8_layer_s=0.0002)
    bf16, fp8 = _dep(cal).roofline, _dep(cal, quantization="fp8").roofline
    assert bf16.launch_time(513, True) == pytest.approx(32 * EAGER)
    assert fp8.launch_time(513, True) == pytest.approx(32 * (EAGER + 0.0003))
    assert bf16.launch_time(300, True) == pytest.approx(32 * PIECEWISE)
    assert fp8.launch_time(300, True) == pytest.approx(32 * (PIECEWISE + 0.0002))
    assert fp8.launch_time(300, False) == 0  # a full-graph decode replays one graph
    # A launch-bound FP8 prefill served alone ends with its longer launch.
    r = Request("a", 0.0, 513, 1)
    run_simulation(SimulationConfig(gpu="h100", calibration=cal,
                                    engine={"quantization": "fp8"}), [r])
    assert r.ttft == pytest.approx(32 * (EAGER + 0.0003), rel=1e-9)
