"""Token counts at which a model's 16-bit GEMMs run well off the smooth curve, measured in the
operator tables (``profiles/calibration/operators/<gpu>/<model>*/operators.csv``).

Why: cuBLAS picks a kernel per shape, and at some sizes its pick is slow. On the H200
Llama-3.1-8B's layer GEMMs at 448 tokens take 431 us against 307 at 512 (gate_up alone 288
against 159), and real engine steps show it: the eight hosts' isolated 448-token prompts took
18-21 ms on the GPU against 14-16 for 496 and 512 tokens, and in the loaded runs steps of
433-448 tokens (padded to the 448-token CUDA graph) ran 39 us per token against 28-33 for
their neighbours. The roofline's curve is smooth and cannot show it, so where a table has
measured a size, the GEMMs there take the table's excess over the curve between its
neighbours.

Which steps run their GEMMs at a measured size: a step within the CUDA-graph limit is padded
to the next capture size (vLLM 0.25's default sizes: 1, 2, 4, every 8 to 248, every 16 from
256), so steps of 433-448 tokens run at 448; an eager step runs at its own token count. Only
excesses of at least ``MIN_EXCESS`` are kept (a kernel choice, not the curve's own bend or the
timing's noise; every other size measured so far lies within 0.8-1.1 of its neighbours), at 64
tokens and above (below, isolated GEMMs are launch-bound), for 16-bit dense layers at the
tables' TP1 shapes. Sizes no table measured take the curve.
"""

from __future__ import annotations

import csv
import json
import math
from bisect import bisect_left
from functools import lru_cache
from pathlib import Path

from simulator.paths import profiles_dir

LAYER_GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
MIN_EXCESS = 1.25
MIN_TOKENS = 64


def capture_sizes(limit: int) -> list[int]:
    """vLLM 0.25's default CUDA-graph capture sizes up to ``limit`` tokens."""
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, limit + 1, 16)]
    return [s for s in sizes if s <= limit] or [limit]


def run_size(tokens: int, graph_max: float) -> int:
    """The token count a step's GEMMs run at: padded to the capture size within the graph limit."""
    if tokens > graph_max or tokens < 1:
        return tokens
    sizes = _sizes(int(graph_max))
    i = bisect_left(sizes, tokens)
    return sizes[i] if i < len(sizes) else tokens


@lru_cache(maxsize=8)
def _sizes(limit: int) -> list[int]:
    return capture_sizes(limit)


def layer_times(gpu: str, model: str, root: Path | None = None) -> tuple[dict[int, float], list[str]]:
    """Per token count, one layer's 16-bit GEMM time (mean over the TP1 tables of ``model`` on
    ``gpu``), and the tables read."""
    root = root or profiles_dir() / "calibration" / "operators"
    sums: dict[int, list[float]] = {}
    used = []
    for meta_path in sorted(root.glob("*/*/meta.json")):
        meta = json.loads(meta_path.read_text())
        if meta.get("gpu_profile") != gpu or meta.get("model") != model or meta.get("tp") != 1:
            continue
        per: dict[int, float] = {}
        table = meta_path.parent / "operators.csv"
        with table.open(newline="") as f:
            for r in csv.DictReader(f):
                if r["op"] == "gemm" and r["dtype"] == "bf16" and r["name"] in LAYER_GEMMS:
                    per[int(r["m"])] = per.get(int(r["m"]), 0.0) + float(r["time_s"])
        if per:
            used.append(str(table.parent.relative_to(root)))
            for m, t in per.items():
                sums.setdefault(m, []).append(t)
    return {m: sum(v) / len(v) for m, v in sorted(sums.items())}, used


@lru_cache(maxsize=32)
def excess(gpu: str, model: str) -> tuple[dict[int, float], tuple[str, ...]]:
    """``({tokens: factor}, tables)``: the sizes whose layer GEMMs take at least ``MIN_EXCESS``
    times the log-log interpolation between their measured neighbours."""
    t, used = layer_times(gpu, model)
    ms = sorted(t)
    out = {}
    for a, m, b in zip(ms, ms[1:], ms[2:], strict=False):
        if m < MIN_TOKENS:
            continue
        x = math.log(m / a) / math.log(b / a)
        f = t[m] / (t[a] * (t[b] / t[a]) ** x)
        if f >= MIN_EXCESS:
            out[m] = f
    return out, tuple(used)
