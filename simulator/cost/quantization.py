"""Quantization schemes (vLLM's ``--quantization``) and what each does to a step's cost.

A scheme sets bytes per weight (weight streaming, memory left for the KV cache), the tensor-core
dtype of the GEMMs (its datasheet rate), and two multipliers on the GEMM compute rate: a
dequantisation penalty for weight-only formats and the 2:4 structured-sparsity speed-up. The KV
cache dtype (``--kv-cache-dtype fp8``) is independent. Embeddings and lm_head stay 16-bit, as in
vLLM. Schemes register by name; every figure is a datasheet rate, a measured calibration or a
stated assumption below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simulator.errors import InputError
from simulator.gpu import GPUSpec
from simulator.registry import Registry

# W4A16 (AWQ/GPTQ, Marlin kernels): 4-bit weights plus one fp16 scale per group of 128. Their
# compute and streaming efficiencies relative to 16-bit GEMMs are calibration values
# (Efficiency.w4a16_compute / w4a16_stream: measured on the H100, assumed elsewhere).
W4_BYTES = 0.5 + 2 / 128
# 2:4 sparsity keeps half the values plus 2 bits of position metadata per kept value.
SPARSE_META_BITS = 2


@dataclass(frozen=True)
class Precision:
    """What the deployment runs in: bytes per weight, activation and KV element; GEMM math dtype."""

    weight_bytes: float
    act_bytes: float
    kv_bytes: float
    gemm_dtype: str  # key into GPUSpec.dense_tflops
    attn_dtype: str
    label: str
    gemm_rate_factor: float = 1.0  # x the dtype's dense rate: dequant penalty, 2:4 speed-up
    scheme: str = "none"


Scheme = Callable[[GPUSpec, str, dict], tuple[float, str, float, str]]
SCHEMES: Registry[Scheme] = Registry("quantization method")
ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq", "w8a8": "int8", "fp8_w8a8": "fp8"}


@SCHEMES.register("none")
def _none(gpu: GPUSpec, dtype: str, prov: dict) -> tuple[float, str, float, str]:
    return 2.0, dtype, 1.0, f"{dtype} weights and math"


@SCHEMES.register("fp8")
def _fp8(gpu: GPUSpec, dtype: str, prov: dict) -> tuple[float, str, float, str]:
    if gpu.supports("fp8"):
        return 1.0, "fp8", 1.0, f"fp8 W8A8 weights, {dtype} attention"
    prov["quantization"] += f"; {gpu.display_name} has no FP8 tensor cores: weight-only FP8"
    return 1.0, dtype, 1.0, f"fp8 weight-only, {dtype} math"


@SCHEMES.register("int8")
def _int8(gpu: GPUSpec, dtype: str, prov: dict) -> tuple[float, str, float, str]:
    if not gpu.supports("int8"):
        raise InputError(f"{gpu.display_name} has no INT8 tensor cores for W8A8",
                         field="quantization")
    return 1.0, "int8", 1.0, f"int8 W8A8 weights, {dtype} attention"


def _w4a16(name: str) -> Scheme:
    def scheme(gpu: GPUSpec, dtype: str, prov: dict) -> tuple[float, str, float, str]:
        prov["quantization_dequant"] = ("W4A16 GEMM compute and weight-streaming efficiency "
                                        "relative to 16-bit: calibration w4a16_compute, "
                                        "w4a16_stream")
        return W4_BYTES, dtype, 1.0, f"{name} W4A16 (4-bit weights, group 128), {dtype} math"
    return scheme


SCHEMES.register("awq")(_w4a16("awq"))
SCHEMES.register("gptq")(_w4a16("gptq"))


def precision(quant: str | None, sparsity: str | None, kv_dtype: str, dtype: str, gpu: GPUSpec,
              prov: dict) -> Precision:
    """The Precision of a deployment: ``quant`` from the flag or the checkpoint, ``dtype``
    bf16/fp16 for everything unquantised."""
    name = ALIASES.get(quant or "none", quant or "none")
    wb, gemm_dtype, factor, label = SCHEMES.get(name)(gpu, dtype, prov)
    if sparsity == "2:4":
        if gpu.architecture != "hopper":
            raise InputError("vLLM's 2:4 sparse GEMMs (CUTLASS) run on Hopper GPUs only",
                             field="sparsity")
        if name in ("awq", "gptq"):
            raise InputError("2:4 sparsity combines with fp8, int8 or 16-bit weights, not W4A16",
                             field="sparsity")
        bits = wb * 8
        wb = (bits / 2 + SPARSE_META_BITS / 2) / 8
        factor *= gpu.sparsity_multiplier
        prov["sparsity"] = (f"--sparsity 2:4: half the weights + {SPARSE_META_BITS}-bit indices; "
                            f"tensor-core rate x{gpu.sparsity_multiplier} (datasheet)")
        label = f"2:4 sparse {label}"
    kv = 1.0 if kv_dtype == "fp8" else 2.0
    return Precision(wb, 2.0, kv, gemm_dtype, dtype, f"{label}, {'fp8' if kv == 1 else dtype} KV",
                     factor, name)
