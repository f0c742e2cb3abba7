"""The step cost model against hand-computed rooflines, and its closed form over decode runs."""

from __future__ import annotations

import math

import pytest

from simulator.config import SimulationConfig
from simulator.deployment import resolve
from simulator.model import load_model

H100_BF16 = 989.4e12
H100_BW = 3350e9


def test_model_parameter_counts_match_published():
    # Published parameter counts of the Hugging Face checkpoints (biases excluded for Qwen).
    assert load_model("llama-3.1-8b").total_params() == 8_030_261_248
    assert load_model("llama-3.1-70b").total_params() == 70_553_706_496
    assert load_model("mixtral-8x7b").total_params() == 46_702_792_704
    assert round(load_model("deepseek-v3").total_params() / 1e9) == 671
    assert round(load_model("deepseek-v3").active_params() / 1e9) == 37
    assert round(load_model("qwen3-30b-a3b").active_params() / 1e9, 1) == 3.3


def _dep(unit_cal, **kw):
    return resolve(SimulationConfig(gpu=kw.pop("gpu", "h100"), model="llama-3.1-8b",
                                    calibration=unit_cal, **kw))


def test_prefill_step_matches_hand_roofline(unit_cal):
    """A 1024-token prefill of Llama-3.1-8B on one H100 at efficiency 1, op by op."""
    rows = {r.name: r for r in _dep(unit_cal).roofline.explain(0, 0, [(1024, 0)], 1)}
    T, h, L, inter, V = 1024, 4096, 32, 14336, 128256
    # MLP: 3 matrices of h x inter, 2 FLOPs per MAC: compute-bound at T=1024.
    mlp_flops = 2 * T * 3 * h * inter * L
    assert rows["mlp"].flops == pytest.approx(mlp_flops)
    assert rows["mlp"].bound == "compute"
    assert rows["mlp"].time_s == pytest.approx(mlp_flops / H100_BF16)
    # Q,K,V,O projections: h x (32+8+8) x 128 + 32 x 128 x h.
    proj = h * 128 * 48 + 32 * 128 * h
    assert rows["attn_proj(qkv,o)"].flops == pytest.approx(2 * T * proj * L)
    # Causal attention: QK^T and PV, 2 FLOPs per MAC each, over T(T+1)/2 pairs, 32 heads x 128.
    attn_flops = 4 * 32 * 128 * (T * (T + 1) / 2) * L
    assert rows["attention_prefill"].flops == pytest.approx(attn_flops)
    assert rows["attention_prefill"].time_s == pytest.approx(attn_flops / H100_BF16)
    # lm_head for the one sampled token: memory-bound read of the vocab x h matrix.
    assert rows["lm_head"].bound == "memory"
    assert rows["lm_head"].time_s == pytest.approx((V * h * 2 + V * 4) / H100_BW)
    assert rows["step_overhead(gpu)"].time_s == pytest.approx(0.001)  # step_s, on the GPU


def test_decode_step_is_weight_streaming(unit_cal):
    """One sequence decoding: time = all weight bytes + its KV over the bandwidth, + overhead."""
    dep = _dep(unit_cal)
    ctx = 2000
    cost = dep.roofline.step(1, ctx, [], 1)
    weights = 8_030_261_248 * 2 - 128256 * 4096 * 2  # embedding table is gathered, not streamed
    kv = (ctx + 1) * 32 * 2 * 8 * 128 * 2  # K and V, 8 KV heads x 128, bf16, 32 layers
    floor = (weights + kv) / H100_BW + 0.001
    # Activations and norms add well under 1%.
    assert floor <= cost.time_s <= floor * 1.01
    assert cost.time_s == pytest.approx(sum(r.time_s for r in dep.roofline.explain(1, ctx, [], 1)))


def test_tensor_parallel_halves_weights_and_adds_allreduce(unit_cal):
    one = _dep(unit_cal, gpu="h100x2", engine={"tensor_parallel_size": 1})
    two = _dep(unit_cal, gpu="h100x2", engine={"tensor_parallel_size": 2})
    assert two.weight_bytes_per_gpu == pytest.approx(one.weight_bytes_per_gpu / 2, rel=1e-4)
    assert (one.replicas, two.replicas) == (2, 1)
    rows = {r.name: r for r in two.roofline.explain(8, 8 * 1000, [], 8)}
    ar = rows["allreduce(nvlink)"]
    assert ar.count == 64  # two per layer
    msg = 8 * 4096 * 2
    assert ar.time_s == pytest.approx(64 * (2 * 1 / 2 * msg) / (900e9 / 2))


@pytest.mark.parametrize("batch,ctx0", [(1, 100), (16, 16 * 3000), (256, 256 * 700)])
def test_decode_run_closed_form_equals_step_sum(unit_cal, batch, ctx0):
    rf = _dep(unit_cal).roofline
    run = rf.decode_run(batch, ctx0)
    steps = [rf.step(batch, ctx0 + i * batch, [], batch) for i in range(300)]
    assert run.duration(300) == pytest.approx(sum(s.time_s for s in steps), rel=1e-12)
    assert run.step_time(299) == pytest.approx(steps[299].time_s, rel=1e-12)
    flops, hbm = run.work(300)
    assert flops == pytest.approx(sum(s.flops for s in steps), rel=1e-12)
    assert hbm == pytest.approx(sum(s.hbm_bytes for s in steps), rel=1e-12)
    for dt in (0.0, steps[0].time_s * 0.5, run.duration(137), run.duration(137) + 1e-9, 1e9):
        k = run.steps_done_by(dt, 300)
        assert run.duration(k) <= dt + 1e-15
        assert k == 300 or run.duration(k + 1) > dt


def test_compute_bound_decode_attention_crossover(unit_cal):
    """A run whose attention switches from memory- to compute-bound keeps the exact sum."""
    rf = _dep(unit_cal).roofline
    # Compute per context token just above memory per token, but the constant query/output
    # bytes keep the first steps memory-bound: the bound flips inside the run.
    rf.rc_attn_d = 3.5 * rf.rm_attn_d
    run = rf.decode_run(8, 8 * 10)
    assert run.a is None
    total = sum(rf.step(8, 80 + i * 8, [], 8).time_s for i in range(400))
    assert run.duration(400) == pytest.approx(total, rel=1e-12)


def test_fp8_kv_cache_doubles_capacity():
    base = resolve(SimulationConfig(gpu="h100"))
    fp8 = resolve(SimulationConfig(gpu="h100", engine={"kv_cache_dtype": "fp8"}))
    assert fp8.kv_bytes_per_token == pytest.approx(base.kv_bytes_per_token / 2)
    assert fp8.num_kv_blocks == pytest.approx(2 * base.num_kv_blocks, rel=1e-3)


def test_kv_capacity_matches_vllm_on_h100():
    """vLLM 0.25.1 on an H100 at 0.90 reported 451,840 KV tokens for Llama-3.1-8B and
    228,608 for Qwen2.5-14B (shared/vllm-gpu/README.md)."""
    llama = resolve(SimulationConfig(gpu="h100", model="llama-3.1-8b"))
    qwen = resolve(SimulationConfig(gpu="h100", model="qwen2.5-14b"))
    assert math.isclose(llama.kv_capacity_tokens, 451_840, rel_tol=0.01)
    assert math.isclose(qwen.kv_capacity_tokens, 228_608, rel_tol=0.01)


def test_gemm_compute_slows_past_2048_tokens_by_the_fitted_decay(tmp_path):
    """gemm_compute_decay d: beyond 2,048 tokens GEMMs compute at (tokens / 2048) ** -d of the
    rate; at and below 2,048 nothing changes."""
    from tests.conftest import UNIT_CAL

    flat, slow = tmp_path / "flat.toml", tmp_path / "slow.toml"
    flat.write_text(UNIT_CAL)
    slow.write_text(UNIT_CAL.replace("gemm_compute = 1.0", "gemm_compute = 1.0\ngemm_compute_decay = 0.1"))
    a, b = _dep(str(flat)).roofline, _dep(str(slow)).roofline

    def gemm_s(rf, tokens):
        rows = rf.explain(0, 0.0, [(tokens, 0)], 1)
        return sum(r.time_s for r in rows if r.name in ("attn_proj(qkv,o)", "mlp"))

    assert gemm_s(b, 2048) == pytest.approx(gemm_s(a, 2048))
    # 8,192 tokens are compute-bound (hard roofline here): time / (4 ** -0.1)
    assert gemm_s(b, 8192) == pytest.approx(gemm_s(a, 8192) * 4 ** 0.1, rel=1e-9)


def test_fp8_gemms_take_their_own_decay_where_the_profile_has_one(tmp_path):
    """gemm_compute_decay_fp8 replaces the shared exponent for W8A8 GEMMs only (negative: their
    rate grows past 2,048 tokens); bf16 GEMMs keep the shared one; absent, FP8 shares it."""
    from simulator.config import EngineArgs
    from tests.conftest import UNIT_CAL

    shared, own = tmp_path / "shared.toml", tmp_path / "own.toml"
    shared.write_text(UNIT_CAL.replace("gemm_compute = 1.0", "gemm_compute = 1.0\n"
                                       "gemm_compute_fp8 = 1.0\ngemm_compute_decay = 0.1"))
    own.write_text(shared.read_text().replace("gemm_compute_decay = 0.1", "gemm_compute_decay = "
                                              "0.1\ngemm_compute_decay_fp8 = -0.2"))

    def gemm_s(cal, quantization, tokens):
        rf = _dep(str(cal), engine=EngineArgs(quantization=quantization)).roofline
        rows = rf.explain(0, 0.0, [(tokens, 0)], 1)
        return sum(r.time_s for r in rows if r.name in ("attn_proj(qkv,o)", "mlp"))

    assert gemm_s(own, None, 8192) == pytest.approx(gemm_s(shared, None, 8192))
    assert gemm_s(own, "fp8", 2048) == pytest.approx(gemm_s(shared, "fp8", 2048))
    # 8,192 FP8 tokens, compute-bound: rate x 4 ** 0.2 instead of x 4 ** -0.1
    assert gemm_s(own, "fp8", 8192) == pytest.approx(gemm_s(shared, "fp8", 8192) * 4 ** -0.3,
                                                     rel=1e-9)


def test_step_cost_is_the_same_from_the_memo_and_after_it_is_cleared(monkeypatch):
    from simulator.cost import roofline

    rf = resolve(SimulationConfig(gpu="h100")).roofline
    first = rf.step(3, 3 * 700.0, [(600, 0)], 4)
    assert len(rf._step_cache) == 1
    again = rf.step(3, 3 * 900.0, [(600, 100)], 4)  # same counts: from the memo
    assert len(rf._step_cache) == 1 and again.time_s > first.time_s  # attention grew
    monkeypatch.setattr(roofline, "STEP_CACHE_MAX", 1)
    other = rf.step(2, 2 * 700.0, [(600, 0)], 3)  # a new key: the memo is cleared first
    assert len(rf._step_cache) == 1
    assert rf.step(3, 3 * 700.0, [(600, 0)], 4) == first  # recomputed identically
    assert other.time_s < first.time_s
