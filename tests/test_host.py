"""simulator.profiler.host: which machine a measured run came from, and what that changes."""

from __future__ import annotations

import json
import shutil

from simulator.calibrate import Sample
from simulator.paths import profiles_dir
from simulator.profiler.host import cpu_model, host_key

RUN = profiles_dir() / "calibration" / "measurements" / "h200" / "vllm-0.25.1" / "llama8b-fp8" / "az-r2"


def test_cpu_model_reads_cpuinfo_and_host_key_prefers_the_gpu(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(info) == "AMD EPYC 9654 96-Core Processor"
    assert isinstance(cpu_model(tmp_path / "missing"), str)
    assert host_key({"host": {"name": "a", "gpu_uuid": "GPU-1"}}) == "GPU-1"
    assert host_key({"host": {"name": "a"}}) == "a" and host_key({}) == ""


def test_the_fit_pairs_fp8_launches_with_16_bit_runs_of_the_same_host(tmp_path):
    """The engine-thread measurement keys a run by model and, where recorded, host: an FP8 run
    from a host is compared with that host's 16-bit runs only (engine_thread.measure)."""
    run = tmp_path / "fp8" / "az-r2"
    shutil.copytree(RUN, run)
    assert Sample(run, 50).shape.model == "llama-3.1-8b"  # recorded before hosts were
    meta = json.loads((run / "meta.json").read_text())
    meta["host"] = {"name": "h", "cpu": "x", "cpus": 16, "gpu_uuid": "GPU-abc"}
    (run / "meta.json").write_text(json.dumps(meta))
    assert Sample(run, 50).shape.model == "llama-3.1-8b @ GPU-abc"
