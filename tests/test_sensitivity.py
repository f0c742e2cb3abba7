"""The GPU-speed probe of `simulate validate --sensitivity` (simulator.sensitivity)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simulator.accuracy import read_table
from simulator.deployment import resolve, with_calibration
from simulator.paths import profiles_dir
from simulator.sensitivity import PROBE, slower_gpu
from simulator.validate import load_run, validate_run
from tests.conftest import ROOT

H200 = profiles_dir() / "calibration" / "measurements" / "h200" / "vllm-0.25.1"
QWEN32 = H200 / "qwen2.5-32b-bf16"


def test_probe_slows_the_gpu_timeline_only():
    cfg = load_run(QWEN32 / "az-r2")[0]
    dep = resolve(cfg)
    slow = with_calibration(dep, slower_gpu(dep.calibration))
    for args in ((8, 8 * 1500, [], 8), (0, 0, [(1024, 0)], 1), (64, 64 * 900, [(700, 0)], 65)):
        base, probe = dep.roofline.step(*args), slow.roofline.step(*args)
        assert probe.time_s == pytest.approx(base.time_s * (1 + PROBE), rel=1e-9)
        assert (probe.cpu_s, probe.launch_s) == (base.cpu_s, base.launch_s)
    # The roofline's shape and the engine thread's costs are not probed.
    e0, e1 = dep.calibration.efficiency, slow.calibration.efficiency
    assert (e1.gemm_roofline_p, e1.gemm_compute_decay) == (e0.gemm_roofline_p, e0.gemm_compute_decay)
    assert slow.calibration.overhead.eager_layer_s == dep.calibration.overhead.eager_layer_s


def test_a_run_past_saturation_amplifies_a_step_time_error():
    """Qwen2.5-32B at 8 req/s queues (measured TTFT p50 2.7 s): 1% slower GPU work moves its
    TTFT p50 by several %, more than at 2 req/s (3.7 against 2.5 with the tenth session's
    profile)."""
    loaded = validate_run(QWEN32 / "az-r8", sensitivity=True)["elasticity"]
    light = validate_run(QWEN32 / "az-r2", sensitivity=True)["elasticity"]
    assert loaded["ttft_s.p50"] > 3.0
    assert 0.5 < light["ttft_s.p50"] < 3.0 and loaded["ttft_s.p50"] > light["ttft_s.p50"]
    assert 0.5 < loaded["tpot_s.p50"] < 2.0
    # Without the flag the result carries no elasticity (and costs one simulation).
    assert "elasticity" not in validate_run(QWEN32 / "az-r2")


def test_validate_command_writes_the_elasticities(tmp_path):
    out = tmp_path / "v.csv"
    p = subprocess.run([sys.executable, "-m", "simulator", "validate", str(QWEN32), "--sensitivity",
                        "--write", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "/1% GPU" in p.stdout
    table = read_table(out)
    assert set(table) == {"qwen2.5-32b-bf16/az-r2", "qwen2.5-32b-bf16/az-r8",
                          "qwen2.5-32b-bf16/az-r20"}
    assert table["qwen2.5-32b-bf16/az-r8"]["ttft_s.p50.elasticity"] > 3.0
    # The committed table carries them too, for every run.
    committed = read_table(H200 / "validation.csv")
    assert all("ttft_s.p50.elasticity" in row for row in committed.values())
