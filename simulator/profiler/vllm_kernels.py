"""vLLM's own kernels for the operator micro-profiler (:mod:`simulator.profiler.operators`),
where torch has no equivalent a served model would run: needs vLLM installed.

- :func:`marlin_w4a16`: the Marlin W4A16 GEMM that ``--quantization awq`` (awq_marlin) runs,
  called as vLLM's Marlin linear kernel calls it (``apply_gptq_marlin_linear`` with group-128
  scales and 4-bit zero points), on random weights packed by vLLM's own test helper.
- :func:`paged_decode`: FlashAttention's paged decode (``flash_attn_varlen_func`` over a block
  table, one query token per sequence; the FlashAttention version vLLM picks, FA3 on Hopper,
  with its own split heuristic, not the fixed split count vLLM's CUDA graphs capture), with a
  16-bit KV cache or, as vLLM runs ``--kv-cache-dtype fp8``, an FP8 one with FP8 queries and
  unit descales.

Both are the paths the engine's CUDA graphs replay; timing them against the torch rows of the
same grid gives the efficiency of each relative to the 16-bit operator it replaces
(:func:`ratios`; ``python -m simulator.profiler.vllm_kernels DIR...`` prints them for tables):

- ``w4a16_stream``: Marlin's achieved bandwidth over the bf16 GEMM's, on the same shapes, where
  both stream their weights (1..64 tokens), weighted by the bf16 GEMM's bytes;
- ``w4a16_compute``: Marlin's achieved FLOP/s over the bf16 GEMM's at 2,048..8,192 tokens,
  where both are compute-bound;
- ``attn_fp8_kv``: the paged decode kernel's achieved KV bandwidth with an FP8 cache over a
  16-bit one, on the same batch x context, where the KV read is at least 64 MiB (both
  bandwidth-bound; below that, launch and reduction time dominate), weighted the same way.

These are the quantities the roofline multiplies into its rates (simulator/cost/roofline.py):
weights and KV are counted in their stored bytes, so a kernel that reaches the 16-bit one's
bandwidth scores 1.0.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

KV_BLOCK = 16  # vLLM's default KV block size for FlashAttention
STREAM_TOKENS = range(1, 65)
COMPUTE_TOKENS = range(2048, 8193)
MIN_KV_BYTES = 64 << 20


def marlin_w4a16(torch, n: int, k: int, device: str, group: int = 128) -> Callable:
    """``gemm(x)`` for an ``[m, k]`` fp16 ``x``: Marlin's AWQ W4A16 linear of ``n`` outputs."""
    from vllm.model_executor.layers.quantization.utils.marlin_utils import (
        apply_gptq_marlin_linear,
        marlin_make_empty_g_idx,
        marlin_make_workspace_new,
    )
    from vllm.model_executor.layers.quantization.utils.marlin_utils_test import (
        awq_marlin_quantize,
    )
    from vllm.scalar_type import scalar_types

    dev = torch.device(device)
    w = torch.randn(k, n, device=dev, dtype=torch.float16) / k ** 0.5
    _, qw, scales, zp = awq_marlin_quantize(w, scalar_types.uint4, group)
    del w
    workspace = marlin_make_workspace_new(dev)
    empty = marlin_make_empty_g_idx(dev)

    def gemm(x):
        return apply_gptq_marlin_linear(x, qw, scales, zp, empty, empty, workspace,
                                        scalar_types.uint4, n, k, True)
    return gemm


def paged_decode(torch, batch: int, ctx: int, hq: int, hkv: int, hd: int, fp8: bool,
                 device: str) -> Callable:
    """``attn()``: one decode step's attention for ``batch`` sequences of ``ctx`` tokens each,
    through vLLM's FlashAttention over a paged cache (blocks of :data:`KV_BLOCK`)."""
    from vllm.v1.attention.backends.fa_utils import get_flash_attn_version
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    version = get_flash_attn_version() or 2  # the version vLLM picks: FA3 on Hopper
    dev, bf = torch.device(device), torch.bfloat16
    per_seq = -(-ctx // KV_BLOCK)
    blocks = batch * per_seq
    k_cache, v_cache = (torch.randn(blocks, KV_BLOCK, hkv, hd, device=dev, dtype=bf)
                        for _ in range(2))
    q = torch.randn(batch, hq, hd, device=dev, dtype=bf)
    descale = {}
    if fp8:  # vLLM quantises the queries in the attention layer for an FP8 cache
        f8 = torch.float8_e4m3fn
        k_cache, v_cache, q = k_cache.to(f8), v_cache.to(f8), q.to(f8)
        one = torch.ones(batch, hkv, device=dev, dtype=torch.float32)
        descale = {"q_descale": one, "k_descale": one, "v_descale": one}
    out = torch.empty(batch, hq, hd, device=dev, dtype=bf)
    cu_q = torch.arange(batch + 1, device=dev, dtype=torch.int32)
    used = torch.full((batch,), ctx, device=dev, dtype=torch.int32)
    table = torch.arange(blocks, device=dev, dtype=torch.int32).view(batch, per_seq)

    def attn():
        return flash_attn_varlen_func(q=q, k=k_cache, v=v_cache, out=out, cu_seqlens_q=cu_q,
                                      max_seqlen_q=1, seqused_k=used, max_seqlen_k=ctx,
                                      softmax_scale=hd ** -0.5, causal=True, block_table=table,
                                      fa_version=version, **descale)
    return attn


def ratios(rows: list[dict]) -> dict[str, float]:
    """The ratios the table's rows support, keyed as the profile's fields."""
    by = defaultdict(dict)
    for r in rows:
        if r["op"] == "gemm":
            by[("gemm", r["name"], int(r["m"]))][r["dtype"]] = r
        elif r["op"] == "attn_decode" and r["name"] == "paged":
            by[("paged", int(r["batch"]), int(r["context"]))][r["dtype"]] = r
    sums = defaultdict(lambda: [0.0, 0.0])
    for (kind, _, b), pair in by.items():
        if kind == "gemm" and {"bf16", "w4a16"} <= pair.keys():
            w4, bf = pair["w4a16"], pair["bf16"]
            if b in STREAM_TOKENS:
                key, num, den = "w4a16_stream", float(w4["bytes"]), float(bf["bytes"])
            elif b in COMPUTE_TOKENS:
                key, num, den = "w4a16_compute", float(w4["flops"]), float(bf["flops"])
            else:
                continue
            # this shape's ratio of achieved rates, weighted by the 16-bit work
            sums[key][0] += num / float(w4["time_s"]) * float(bf["time_s"])
            sums[key][1] += den
        elif kind == "paged" and {"bf16", "fp8"} <= pair.keys():
            f8, bf = pair["fp8"], pair["bf16"]
            if float(f8["bytes"]) < MIN_KV_BYTES:
                continue
            sums["attn_fp8_kv"][0] += float(f8["bytes"]) / float(f8["time_s"]) * float(bf["time_s"])
            sums["attn_fp8_kv"][1] += float(bf["bytes"])
    return {key: num / den for key, (num, den) in sums.items()}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m simulator.profiler.vllm_kernels TABLE_DIR...", file=sys.stderr)
        return 2
    for d in argv:
        path = Path(d) / "operators.csv"
        try:
            rows = list(csv.DictReader(path.open()))
        except OSError as e:
            print(f"error: {path}: {e.strerror}", file=sys.stderr)
            return 2
        found = ratios(rows)
        print(f"{d}: " + (", ".join(f"{k} = {v:.3f}" for k, v in sorted(found.items()))
                          or "no paired rows"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
