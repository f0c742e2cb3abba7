"""The simulated KV cache against the blocks vLLM 0.25.1 allocated in every committed run: the
start-up reserve (simulator/deployment.py, profiles/calibration/defaults.toml [memory]) is what
decides where a replay starts preempting, and the summary prints it."""

from __future__ import annotations

import pytest

from simulator.deployment import resolve
from simulator.paths import profiles_dir
from simulator.validate import find_runs, load_run

MEASURED = profiles_dir() / "calibration" / "measurements"
# One run per configuration folder (a folder's runs share one engine and so one KV cache).
RUN_OF = {run.parent: run for run in find_runs([MEASURED])}
CONFIGS = sorted(RUN_OF)
# Qwen2.5-32B FP8 (the first H100 host, 2026-11-24): vLLM reported 33.06 GiB of weights after
# its online FP8 quantisation against the 31.96 GiB counted (Llama-3.1-8B FP8: 8.54 against
# 8.46), so its cache is 1.1 GiB smaller than simulated; not modelled, one run of one model.
EXCEPTIONS = {"h100-sxm/qwen2.5-32b-fp8": (0.02, 0.04)}


def _blocks(config) -> tuple[int, int]:
    cfg, _, _, meta = load_run(RUN_OF[config])
    return resolve(cfg).num_kv_blocks, meta["num_gpu_blocks"]


@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_kv_cache_matches_every_measured_engine(config):
    """Dense and MoE, 16-bit, FP8, AWQ, FP8 KV, speculative decoding, four batch settings, two
    GPUs: within 0.25% of vLLM's blocks (before the reserve was measured from the logs, the
    speculative runs were 6.2% over and the 64-seq / 2048-token engines 1.2-2.2%)."""
    simulated, measured = _blocks(config)
    low, high = EXCEPTIONS.get(f"{config.parent.parent.name}/{config.name}", (-0.0025, 0.0025))
    assert low <= simulated / measured - 1 <= high, (simulated, measured)


def test_every_kind_of_engine_is_covered():
    names = {c.name for c in CONFIGS}
    for kind in ("a3b", "spec", "s64-t2048", "s64-t8192", "s1024-t2048", "kvfp8", "awq", "fp8"):
        assert any(kind in n for n in names), kind
    assert len(CONFIGS) >= 20
