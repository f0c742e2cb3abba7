"""GPU and model profiles: every figure sourced, deployment strings, MIG slices, TP choice."""

from __future__ import annotations

import tomllib

import pytest

from simulator.config import SimulationConfig
from simulator.deployment import resolve
from simulator.errors import InputError
from simulator.gpu import catalog, get_gpu, parse_deployment
from simulator.kv_cache import KVCache, blocks_for
from simulator.paths import profiles_dir
from simulator.request import Request
from simulator.run import run_simulation

REQUIRED = {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "h20", "l40s", "l4",
            "a10g", "rtx4090", "b200", "mi300x"}


def test_required_gpus_present_and_every_figure_sourced():
    cat = catalog()
    assert set(cat) >= REQUIRED
    for path in (profiles_dir() / "hardware").glob("*.toml"):
        raw = tomllib.loads(path.read_text())
        numeric = [k for k, v in raw.items() if isinstance(v, int | float) and k != "name"]
        numeric += list(raw["dense_tflops"])
        missing = [k for k in numeric if k not in raw["sources"]]
        assert not missing, f"{path.name}: no source for {missing}"


def test_datasheet_figures_spot_checks():
    h100, h200 = get_gpu("h100"), get_gpu("h200")
    assert (h100.memory_bandwidth_gbs, h200.memory_bandwidth_gbs) == (3350, 4800)
    assert h100.dense_tflops["bf16"] == h200.dense_tflops["bf16"] == 989.4
    assert h100.dense_tflops["fp8"] == pytest.approx(2 * h100.dense_tflops["bf16"], rel=1e-3)
    assert not get_gpu("a100").supports("fp8")  # Ampere: no FP8 tensor cores
    assert get_gpu("rtx4090").supports("fp8")  # Ada whitepaper lists FP8 for the 4090
    assert get_gpu("rtx4090").dense_tflops["bf16"] == 165.2  # FP32-accumulate rate
    assert get_gpu("l40s").nvlink_gbs is None and get_gpu("rtx4090").interconnect_gbs()[1] == "pcie"


@pytest.mark.parametrize("text,name,count", [
    ("h100x2", "h100-sxm", 2), ("H100", "h100-sxm", 1), ("mi300x", "mi300x", 1),
    ("mi300xx8", "mi300x", 8), ("rtx4090", "rtx4090", 1), ("rtx4090x4", "rtx4090", 4),
    ("h100-3g.40gb", "h100-sxm-3g.40gb", 1), ("a100-1g.10gbx7", "a100-80gb-1g.10gb", 7),
])
def test_parse_deployment(text, name, count):
    g, n = parse_deployment(text)
    assert (g.name, n) == (name, count)


def test_mig_slice_is_a_fraction_of_its_parent():
    h100 = get_gpu("h100")
    s = get_gpu("h100-3g.40gb")
    assert s.dense_tflops["bf16"] == pytest.approx(989.4 * 60 / 132)
    assert s.memory_bandwidth_gbs == pytest.approx(3350 * 4 / 8)
    assert s.cost_per_gpu_hour_usd == pytest.approx(h100.cost_per_gpu_hour_usd * 3 / 7)
    assert s.nvlink_gbs is None and s.mig_parent == "h100-sxm"
    with pytest.raises(InputError, match="no MIG profile"):
        get_gpu("h100-5g.50gb")


def test_mig_slices_deploy_as_independent_replicas():
    d = resolve(SimulationConfig(gpu="a100-1g.10gbx7", model="mistral-7b",
                                 engine={"quantization": "fp8", "max_model_len": 1024}))
    assert (d.tp, d.replicas) == (1, 7)
    assert "weight-only" in d.precision.label  # Ampere runs FP8 weights without FP8 math


def test_auto_tp_is_smallest_that_fits():
    assert resolve(SimulationConfig(gpu="h100x8", model="llama-3.1-8b")).tp == 1
    d70 = resolve(SimulationConfig(gpu="h100x8", model="llama-3.1-70b"))
    assert (d70.tp, d70.replicas) == (2, 4)
    d4 = resolve(SimulationConfig(gpu="h100x8", model="llama-3.1-70b",
                                  engine={"tensor_parallel_size": 4}))
    assert (d4.tp, d4.replicas) == (4, 2)
    assert resolve(SimulationConfig(gpu="h200x8", model="deepseek-v3")).tp == 8


def test_batch_defaults_follow_vllm_per_gpu_class():
    h100 = resolve(SimulationConfig(gpu="h100"))
    a100 = resolve(SimulationConfig(gpu="a100"))
    assert (h100.max_num_seqs, h100.max_num_batched_tokens) == (1024, 8192)
    assert (a100.max_num_seqs, a100.max_num_batched_tokens) == (256, 2048)


def test_kv_bucket_accounting_matches_per_sequence_walk():
    import random

    rng = random.Random(0)
    for _ in range(200):
        bs = rng.choice([8, 16, 32])
        kv = KVCache(100_000, bs)
        step = rng.randint(0, 1000)
        ctxs = [rng.randint(1, 500) for _ in range(rng.randint(1, 40))]
        for c in ctxs:
            kv.add_decoder(kv.key(c, step))
            kv.used += blocks_for(c, bs)
        m = rng.randint(1, 100)
        walk = sum(blocks_for(c + m, bs) - blocks_for(c, bs) for c in ctxs)
        assert kv.new_blocks(step, m) == walk
        kv.total = kv.used + rng.randint(0, 60)
        fit = kv.steps_that_fit(step, 10_000)
        need = [sum(blocks_for(c + k, bs) - blocks_for(c, bs) for c in ctxs)
                for k in (fit, fit + 1)]
        assert need[0] <= kv.free < need[1]


def test_uncalibrated_error_band_widens_for_fp8_and_moe():
    # L40S has no measured profile: the H100's fitted factors, uncalibrated, with the wider of the
    # H100's measured band and the defaults' band for the model class.
    d = resolve(SimulationConfig(gpu="l40s"))
    assert not d.calibration.calibrated and d.calibration.name == "transferred from h100-sxm-vllm-0.25.1"
    assert d.error_band == 0.60
    assert resolve(SimulationConfig(gpu="l40s", engine={"quantization": "fp8"})).error_band == 0.75
    assert resolve(SimulationConfig(gpu="l40sx2", model="qwen3-30b-a3b")).error_band == 0.90
    # A MIG slice borrows its parent's profile; an H200 slice the H200's.
    mig = resolve(SimulationConfig(gpu="h200-3g.71gb")).calibration
    assert mig.name == "transferred from h200-vllm-0.25.1" and not mig.calibrated
    assert resolve(SimulationConfig(gpu="h100", calibration="none")).error_band == 0.30
    assert resolve(SimulationConfig(gpu="h100", model="qwen3-30b-a3b",
                                    calibration="none")).error_band == 0.90


def test_measured_gpus_pick_their_fitted_profile():
    for gpu in ("h100", "h200"):
        d = resolve(SimulationConfig(gpu=gpu))
        assert d.calibration.calibrated and d.calibration.name.endswith("vllm-0.25.1")
        assert d.error_band == 0.6
    assert not resolve(SimulationConfig(gpu="a100-80gb")).calibration.calibrated


def test_warns_when_leaving_the_calibrated_range():
    inside = resolve(SimulationConfig(gpu="h100", engine={"max_model_len": 8192}))
    assert inside.warnings == []
    w = resolve(SimulationConfig(gpu="h100x2", model="llama-3.1-70b", engine={
        "tensor_parallel_size": 2, "quantization": "fp8", "max_model_len": 32768})).warnings
    assert len(w) == 2
    assert "llama-3.1-70b fp8 is outside" in w[0] and "tensor-parallel size 2" in w[1]
    assert resolve(SimulationConfig(gpu="h100", calibration="none")).warnings == []


def test_warns_when_requests_outgrow_the_calibrated_context():
    cfg = SimulationConfig(gpu="h100", engine={"max_model_len": 32768})
    short = run_simulation(cfg, [Request("a", 0.0, 16000, 384)]).summary["warnings"]
    assert short == []
    long = run_simulation(cfg, [Request("a", 0.0, 16000, 385)]).summary["warnings"]
    assert long == ["requests reach 16385 tokens of context, beyond the calibration's 16384: "
                    "long-context attention is extrapolated"]
