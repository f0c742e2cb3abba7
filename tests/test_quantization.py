"""--quantization, --sparsity and --kv-cache-dtype change a step's cost and the KV cache the way
they change real vLLM's: bytes per weight, tensor-core rate per dtype, KV bytes per token."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.config import SimulationConfig
from simulator.cost.quantization import W4_BYTES
from simulator.deployment import resolve
from simulator.errors import InputError
from tests.test_cli import simulate


def dep(unit_cal: str, gpu: str = "h100", model: str = "llama-3.1-8b", **engine):
    return resolve(SimulationConfig(gpu=gpu, model=model, calibration=unit_cal, engine=engine))


def op(d, name: str, n_decode: int = 0, ctx: int = 0, prefill: int = 0):
    rows = d.roofline.explain(n_decode, n_decode * ctx, [(prefill, 0)] if prefill else [],
                              n_decode + (1 if prefill else 0))
    return next(r for r in rows if r.name == name)


def test_weight_bytes_per_scheme_in_a_decode_step(unit_cal):
    bf16 = op(dep(unit_cal), "mlp", n_decode=1, ctx=100)
    fp8 = op(dep(unit_cal, quantization="fp8"), "mlp", n_decode=1, ctx=100)
    awq = op(dep(unit_cal, quantization="awq"), "mlp", n_decode=1, ctx=100)
    act = 2 * (2 * 4096 + 3 * 14336)  # one token's activations through the MLP, bf16
    assert fp8.hbm_bytes - 32 * act == pytest.approx((bf16.hbm_bytes - 32 * act) / 2)
    assert awq.hbm_bytes - 32 * act == pytest.approx((bf16.hbm_bytes - 32 * act) * W4_BYTES / 2)
    # Memory-bound at batch 1: time follows the bytes.
    assert awq.time_s / bf16.time_s == pytest.approx(W4_BYTES / 2, rel=0.01)


def test_compute_rate_per_scheme_in_a_large_prefill(unit_cal):
    t = {q: op(dep(unit_cal, quantization=q), "mlp", prefill=8192).time_s
         for q in (None, "fp8", "int8")}
    assert t["fp8"] / t[None] == pytest.approx(989.4 / 1978.9)  # H100 datasheet dense rates
    assert t["int8"] / t[None] == pytest.approx(989.4 / 1978.9)


def test_w4a16_efficiencies_come_from_the_calibration(unit_cal, tmp_path):
    cal = tmp_path / "w4.toml"
    cal.write_text(Path(unit_cal).read_text().replace("comm_bus = 1.0", "comm_bus = 1.0\n"
                                                 "w4a16_compute = 0.8\nw4a16_stream = 0.7"))
    bf16, awq = dep(str(cal)), dep(str(cal), quantization="awq")
    assert op(awq, "mlp", prefill=8192).time_s / op(bf16, "mlp", prefill=8192).time_s == \
        pytest.approx(1 / 0.8)  # Marlin dequantisation, 16-bit math
    small = [op(d, "mlp", n_decode=1, ctx=100) for d in (bf16, awq)]
    act = 32 * 2 * (2 * 4096 + 3 * 14336)
    assert small[1].time_s == pytest.approx(
        small[0].time_s * ((small[0].hbm_bytes - act) * W4_BYTES / 2 + act)
        / small[0].hbm_bytes / 0.7)
    # The shipped H100 profile carries the values measured on real AWQ runs.
    h100 = resolve(SimulationConfig(gpu="h100")).calibration.efficiency
    assert (h100.w4a16_compute, h100.w4a16_stream) == (1.0, 0.5)


def test_fp8_kv_attention_efficiency_comes_from_the_calibration(unit_cal, tmp_path):
    """An FP8 KV cache halves the decode attention's bytes; attn_fp8_kv scales the rate the
    kernel reads them at, in decode steps and in the mixed steps' decodes, and nothing else
    (the 16-bit cache, the prefill attention and the GEMMs keep theirs)."""
    cal = tmp_path / "kv.toml"
    cal.write_text(Path(unit_cal).read_text().replace("comm_bus = 1.0", "comm_bus = 1.0\n"
                                                 "attn_fp8_kv = 0.8"))
    plain = {kv: dep(unit_cal, kv_cache_dtype=kv) for kv in ("auto", "fp8")}
    slow = {kv: dep(str(cal), kv_cache_dtype=kv) for kv in ("auto", "fp8")}
    for name, shape in (("attention_decode", {"n_decode": 64, "ctx": 4096}),
                        ("attention_decode", {"n_decode": 64, "ctx": 4096, "prefill": 512})):
        a, b = op(plain["fp8"], name, **shape), op(slow["fp8"], name, **shape)
        assert a.hbm_bytes == pytest.approx(op(plain["auto"], name, **shape).hbm_bytes / 2,
                                            rel=0.01)
        assert b.hbm_bytes == a.hbm_bytes and b.time_s == pytest.approx(a.time_s / 0.8)
        assert op(slow["auto"], name, **shape).time_s == pytest.approx(
            op(plain["auto"], name, **shape).time_s)
    for name in ("attention_prefill", "mlp"):
        assert op(slow["fp8"], name, n_decode=64, ctx=4096, prefill=512).time_s == \
            pytest.approx(op(plain["fp8"], name, n_decode=64, ctx=4096, prefill=512).time_s)


def test_lm_head_stays_16_bit_under_every_scheme(unit_cal, tmp_path):
    """vLLM keeps lm_head in 16 bits: its bytes, its streaming and its rate are the bf16 ones,
    whatever the layers' FP8 or W4A16 efficiencies are."""
    cal = tmp_path / "q.toml"
    cal.write_text(Path(unit_cal).read_text().replace("comm_bus = 1.0", "comm_bus = 1.0\n"
                   "gemm_memory_fp8 = 0.5\ngemm_compute_fp8 = 0.4\nw4a16_stream = 0.7"))
    heads = {q: op(dep(str(cal), quantization=q), "lm_head", n_decode=1, ctx=100)
             for q in (None, "fp8", "awq")}
    for q in ("fp8", "awq"):
        assert heads[q].hbm_bytes == heads[None].hbm_bytes
        assert heads[q].time_s == pytest.approx(heads[None].time_s)
    # ...while the FP8 layers do stream at their own efficiency (0.5 of the datasheet here).
    mlp = op(dep(str(cal), quantization="fp8"), "mlp", n_decode=1, ctx=100)
    assert mlp.time_s == pytest.approx(mlp.hbm_bytes / (3350e9 * 0.5), rel=0.01)


def test_two_four_sparsity_doubles_the_rate_and_halves_the_weights(unit_cal):
    dense = dep(unit_cal, quantization="fp8")
    sparse = dep(unit_cal, quantization="fp8", sparsity="2:4")
    assert op(sparse, "mlp", prefill=8192).time_s == pytest.approx(
        op(dense, "mlp", prefill=8192).time_s / 2)
    assert sparse.precision.weight_bytes == pytest.approx(0.625)  # 4 bits + 1 bit of index
    # Layer weights (L bytes at fp8) shrink; embeddings and lm_head (E) stay 16-bit.
    bf16 = dep(unit_cal).weight_bytes_per_gpu
    layers = bf16 - dense.weight_bytes_per_gpu
    embed = dense.weight_bytes_per_gpu - layers
    assert sparse.weight_bytes_per_gpu == pytest.approx(0.625 * layers + embed)
    with pytest.raises(InputError, match="Hopper GPUs only"):
        dep(unit_cal, gpu="a100-80gb", quantization="int8", sparsity="2:4")


def test_w8a8_reserves_8_bit_activations_whatever_the_weights(unit_cal):
    """vLLM quantises W8A8's activations to 8 bits at every token of the profiling run: FP8 and
    INT8, dense and 2:4 sparse alike (hidden bytes per token); 16-bit math does not."""
    tokens = 8192
    bf16 = dep(unit_cal).activation_reserve_bytes
    for q, s in (("fp8", None), ("fp8", "2:4"), ("int8", None), ("int8", "2:4")):
        d = dep(unit_cal, quantization=q, sparsity=s)
        assert d.activation_reserve_bytes - bf16 == pytest.approx(tokens * 4096), (q, s)
    ampere = dep(unit_cal, gpu="a100-80gb", quantization="fp8")  # weight-only: bf16 GEMMs
    assert ampere.activation_reserve_bytes == pytest.approx(
        dep(unit_cal, gpu="a100-80gb").activation_reserve_bytes)


def test_fp8_on_ampere_is_weight_only(unit_cal):
    d = dep(unit_cal, gpu="a100-80gb", quantization="fp8")
    assert d.precision.gemm_dtype == "bf16" and d.precision.weight_bytes == 1.0
    assert "weight-only" in d.provenance["quantization"]


def test_kv_dtype_and_weights_set_the_kv_capacity(unit_cal):
    bf = dep(unit_cal)
    fp8kv = dep(unit_cal, kv_cache_dtype="fp8")
    assert fp8kv.kv_bytes_per_token * 2 == pytest.approx(bf.kv_bytes_per_token)
    assert fp8kv.num_kv_blocks in (2 * bf.num_kv_blocks, 2 * bf.num_kv_blocks + 1)
    # 4-bit weights free memory: 70B fits one H100 with AWQ; bf16 needs a TP group.
    awq = dep(unit_cal, model="llama-3.1-70b", quantization="awq")
    assert awq.tp == 1 and awq.num_kv_blocks > 1000
    assert dep(unit_cal, gpu="h100x4", model="llama-3.1-70b").tp == 2


def test_cli_names_the_scheme(tmp_path):
    p = simulate("explain", "--gpu", "h100", "--quantization", "gptq_marlin", "--decode", "8x512")
    assert p.returncode == 0 and "gptq W4A16" in p.stdout
    p = simulate("explain", "--gpu", "l40s", "--quantization", "fp8", "--sparsity", "2:4")
    assert p.returncode == 1 and "Hopper GPUs only" in p.stderr
