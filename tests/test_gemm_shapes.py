"""Sizes where a model's GEMMs were measured off the curve (simulator.cost.gemm_shapes): read
from the operator tables, applied to the steps whose GEMMs run at that size."""

from __future__ import annotations

import csv
import json

import pytest

from simulator.config import SimulationConfig
from simulator.cost import gemm_shapes
from simulator.cost.gemm_shapes import capture_sizes, excess, layer_times, run_size
from simulator.deployment import resolve
from simulator.paths import profiles_dir
from simulator.request import Request
from simulator.run import run_simulation

DENSE = profiles_dir() / "calibration" / "operators" / "h200" / "llama-3.1-8b-dense" / "operators.csv"


def test_steps_run_their_gemms_at_the_padded_capture_size_within_the_graph_limit():
    sizes = capture_sizes(512)
    assert sizes[:5] == [1, 2, 4, 8, 16] and 248 in sizes and 256 in sizes and 264 not in sizes
    assert sizes[-3:] == [480, 496, 512]
    assert [run_size(t, 512) for t in (1, 3, 433, 448, 449, 512)] == [1, 4, 448, 448, 464, 512]
    assert run_size(513, 512) == 513 and run_size(440, 128) == 440  # eager: its own size


def test_the_h200s_llama_layers_run_slow_at_448_tokens_and_nowhere_else():
    """Their GEMMs at 448 tokens against the log-log line between 384 and 512, over the tables'
    mean; the dense grid's own rows alone show the same excess."""
    t = {}
    with DENSE.open() as f:
        for r in csv.DictReader(f):
            if r["op"] == "gemm" and r["dtype"] == "bf16" and r["name"] != "lm_head":
                t[int(r["m"])] = t.get(int(r["m"]), 0.0) + float(r["time_s"])
    x = 0.5358  # log(448/384) / log(512/384)
    assert t[448] / (t[384] * (t[512] / t[384]) ** x) > 1.4
    mean, _ = layer_times("h200", "llama-3.1-8b")
    found, tables = excess("h200", "llama-3.1-8b")
    assert set(found) == {448}
    assert found[448] == pytest.approx(mean[448] / (mean[384] * (mean[512] / mean[384]) ** x),
                                       rel=1e-3) and found[448] > 1.4
    assert "h200/llama-3.1-8b-dense" in tables
    assert excess("h200", "qwen2.5-32b")[0] == {}  # its 448 is 1.07 of its neighbours


def test_a_step_padded_to_448_tokens_pays_the_measured_excess():
    cfg = SimulationConfig(gpu="h200", model="llama-3.1-8b")
    dep = resolve(cfg)
    rf = dep.roofline
    f = rf.gemm_excess[448]
    assert "448 tokens" in dep.provenance["gemm_shapes"]

    def gemm(tokens):  # the step's dense GEMM time as the smooth curve gives it
        return sum(o.time_s for o in rf.explain(0, 0, [(tokens, 0)], 1)
                   if o.name in ("attn_proj(qkv,o)", "mlp")) / (f if 433 <= tokens <= 448 else 1.0)

    for n in (433, 440, 448):
        smooth = rf.step(0, 0, [(n - 16, 0)], 1).time_s + gemm(n) - gemm(n - 16)
        assert rf.step(0, 0, [(n, 0)], 1).time_s == pytest.approx(smooth + (f - 1) * gemm(n), rel=0.02)
    # An idle engine's 440-token prompt now comes later than a 464-token one.
    reqs = [Request("a", 0.0, 440, 2), Request("b", 1.0, 464, 2)]
    run_simulation(cfg, reqs)
    assert reqs[0].ttft > reqs[1].ttft
    # FP8 GEMMs, MoE layers and models without tables take the curve.
    for other in (SimulationConfig(gpu="h200", model="llama-3.1-8b", engine={"quantization": "fp8"}),
                  SimulationConfig(gpu="h200", model="qwen3-30b-a3b"),
                  SimulationConfig(gpu="h200", model="qwen2.5-14b")):
        assert resolve(other).roofline.gemm_excess == {}


@pytest.mark.parametrize(("bump", "kept"), [(1.3, True), (1.2, False)])
def test_only_a_kernel_choice_off_the_curve_is_kept(tmp_path, monkeypatch, bump, kept):
    """A synthetic table on a straight log-log line but for 256 tokens: kept at 1.3x its
    neighbours' line, not at 1.2x (the curve's bend and timing noise stay within 0.8-1.1)."""
    d = tmp_path / "calibration" / "operators" / "gpu-x" / "m"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"gpu_profile": "gpu-x", "model": "m", "tp": 1}))
    with (d / "operators.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "name", "dtype", "m", "time_s"])
        for m in (32, 64, 128, 256, 512, 1024):
            w.writerow(["gemm", "gate_up_proj", "bf16", m, 1e-6 * m * (bump if m == 256 else 1)])
            w.writerow(["gemm", "lm_head", "bf16", m, 1.0])  # not a layer GEMM
    monkeypatch.setattr(gemm_shapes, "profiles_dir", lambda: tmp_path)
    times, _ = layer_times("gpu-x", "m")
    assert times[256] == pytest.approx(256e-6 * bump)
    excess.cache_clear()
    try:
        found = excess("gpu-x", "m")[0]
    finally:
        excess.cache_clear()
    assert found == ({256: pytest.approx(bump)} if kept else {})
