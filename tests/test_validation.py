"""Validation against measured vLLM runs: the committed error table may not get worse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simulator.paths import profiles_dir
from simulator.validate import find_runs, read_table, validate_run
from tests.conftest import ROOT

H100 = profiles_dir() / "calibration" / "measurements" / "h100-sxm" / "vllm-0.25.1"
TABLE = read_table(H100 / "validation.csv")


def test_every_measured_run_is_in_the_table():
    runs = {f"{d.parent.name}/{d.name}" for d in find_runs([H100])}
    assert runs == set(TABLE)
    assert len(runs) >= 16


@pytest.mark.parametrize("run", sorted(TABLE))
def test_error_does_not_grow(run):
    """A change to the cost model or scheduler that moves any committed case further from the
    measurement fails here; one that improves it should rewrite the table (simulate validate
    --write)."""
    result = validate_run(H100 / run)
    for metric, committed in TABLE[run].items():
        now = result["error"][metric]
        assert abs(now) <= abs(committed) + 0.01, f"{run} {metric}: {now:+.3f} vs {committed:+.3f}"


def test_kv_cache_size_matches_vllm_for_dense_bf16():
    r = validate_run(H100 / "llama8b-bf16" / "az-r8")
    assert r["kv_blocks"]["simulated"] == pytest.approx(r["kv_blocks"]["measured"], rel=0.005)


def test_validate_command_prints_the_table():
    p = subprocess.run([sys.executable, "-m", "simulator", "validate", str(H100 / "llama8b-bf16")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "llama8b-bf16/az-r40" in p.stdout and "TPOT p50" in p.stdout
