"""The operator micro-profiler's datasheet annotation, and the committed GPU operator tables."""

from __future__ import annotations

import csv

import pytest

from simulator.gpu import get_gpu
from simulator.profiler.operators import annotate
from tests.conftest import ROOT

TABLES = sorted((ROOT / "profiles" / "calibration" / "operators").glob("*/*/operators.csv"))


def test_annotate_gives_shares_of_the_datasheet_peak():
    rows = [{"op": "gemm", "dtype": "bf16", "flops": 2e12, "bytes": 1e9, "time_s": 0.004},
            {"op": "copy", "dtype": "u8", "flops": 0, "bytes": 2e9, "time_s": 0.001}]
    assert annotate(rows, "NVIDIA H100 80GB HBM3") == "h100-sxm"
    h100 = get_gpu("h100-sxm")
    assert rows[0]["tflops"] == pytest.approx(500)
    assert rows[0]["compute_eff"] == pytest.approx(500e12 / h100.peak_flops("bf16"))
    assert rows[1]["gbs"] == pytest.approx(2000)
    assert rows[1]["memory_eff"] == pytest.approx(2000e9 / h100.memory_bandwidth)
    assert rows[1]["peak_tflops"] is None
    assert annotate([dict(rows[0])], "Some Unknown GPU") is None


@pytest.mark.parametrize("table", TABLES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_operator_tables_are_physical(table):
    """Measured on the lent H100 and H200: nothing beats its datasheet peak (a timing or byte
    counting error would), and large bf16 GEMMs and the copy land where Hopper runs them."""
    rows = list(csv.DictReader(table.open()))
    assert len(rows) > 50
    for r in rows:
        assert 0 < float(r["memory_eff"]) <= 1.0, r
        if r["compute_eff"]:
            assert 0 < float(r["compute_eff"]) <= 1.0, r
    big = [float(r["compute_eff"]) for r in rows
           if r["op"] == "gemm" and r["dtype"] == "bf16" and r["m"] == "8192"]
    assert big and min(big) >= 0.55 and max(big) <= 0.85
    copy = next(r for r in rows if r["op"] == "copy")
    assert 0.8 <= float(copy["memory_eff"]) <= 0.95


def test_profile_command_rejects_unknown_modes_and_missing_extras_in_one_line():
    from importlib.util import find_spec

    from tests.test_cli import simulate

    p = simulate("profile", "bogus")
    assert p.returncode == 1
    assert p.stderr.strip() == ("error: field 'mode': unknown profiler 'bogus'; choose one of "
                                "engine, server, operators")
    if find_spec("torch") is None:  # the simulate-only install: no torch, no traceback
        p = simulate("profile", "operators", "--model", "llama-3.1-8b", "--out", "x")
        assert p.returncode == 1 and p.stderr.count("\n") == 1
        assert "needs the [profile] extra (torch is not installed)" in p.stderr


def test_vllm_kernel_ratios_compare_each_kernel_with_the_16_bit_one_on_the_same_shapes():
    """Marlin streaming its (4x fewer) bytes in 0.5x the bf16 time reaches 0.5 of bf16's
    bandwidth; at 4,096 tokens, 1.25x the time is 0.8 of its FLOP/s; an FP8 KV read of half the
    bytes in 0.625x the time is 0.8 of the 16-bit cache's bandwidth; rows outside the ranges
    (256 tokens, a KV read under 64 MiB) do not count."""
    from simulator.profiler.vllm_kernels import ratios

    def gemm(dtype, m, nbytes, t):
        return {"op": "gemm", "name": "qkv_proj", "dtype": dtype, "m": m, "flops": 1e12,
                "bytes": nbytes, "time_s": t}

    def paged(dtype, ctx, nbytes, t):
        return {"op": "attn_decode", "name": "paged", "dtype": dtype, "batch": 8,
                "context": ctx, "flops": 1, "bytes": nbytes, "time_s": t}

    rows = [gemm("bf16", 1, 4e7, 1e-3), gemm("w4a16", 1, 1e7, 0.5e-3),
            gemm("bf16", 4096, 1e9, 1e-3), gemm("w4a16", 4096, 3e8, 1.25e-3),
            gemm("bf16", 256, 1e9, 1e-3), gemm("w4a16", 256, 3e8, 9e-3),
            paged("bf16", 8192, 2e8, 1e-3), paged("fp8", 8192, 1e8, 0.625e-3),
            paged("bf16", 512, 2e7, 1e-3), paged("fp8", 512, 1e7, 5e-3)]
    got = ratios(rows)
    assert got == pytest.approx({"w4a16_stream": 0.5, "w4a16_compute": 0.8, "attn_fp8_kv": 0.8})
    assert ratios(rows[:2]) == pytest.approx({"w4a16_stream": 0.5})

