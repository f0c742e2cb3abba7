"""The serving host's CPU speed: --host-speed scales the engine thread's costs, and validate
measures each profiled run's host speed against the profile (simulator.engine_thread.host_speed)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from simulator.accuracy import read_table
from simulator.config import SimulationConfig
from simulator.cost.calibration import ENGINE_THREAD_KEYS, Overhead, select_profile, with_host_speed
from simulator.deployment import resolve
from simulator.engine_thread import host_speed, measure
from simulator.measured_steps import MeasuredStep
from simulator.validate import validate_run
from tests.conftest import ROOT
from tests.test_engine_thread import _run
from tests.test_validation import H100, H200

# Overheads that are not the engine thread's: GPU time per step, sequence, piecewise prefill and
# MoE layer, the collective's latency, and the front end's per-request latency.
# The engine thread's call-to-call spread is a ratio, the same on a faster or slower host.
NOT_ENGINE_THREAD = {"step_s", "per_seq_s", "prefill_step_s", "prefill_step_fp8_s", "moe_layer_s",
                     "comm_latency_s", "request_latency_s", "launch_jitter"}


def test_host_speed_scales_the_engine_threads_costs_and_nothing_else():
    cal = select_profile("h200", None)
    slow = with_host_speed(cal, 1.5)
    # Every overhead is either the engine thread's or named as not: a new one must choose.
    assert set(Overhead.model_fields) == set(ENGINE_THREAD_KEYS) | NOT_ENGINE_THREAD
    for k in Overhead.model_fields:
        before, after = getattr(cal.overhead, k), getattr(slow.overhead, k)
        assert after == pytest.approx(before * (1.5 if k in ENGINE_THREAD_KEYS else 1.0)), k
    assert slow.efficiency == cal.efficiency and slow.memory == cal.memory
    assert cal.overhead.eager_layer_s > 0 and cal.overhead.output_s > 0  # something to scale
    # What a timeline measures is all engine thread's: its costs, and their spread (a ratio).
    assert set(measure([_run(0.0007, 0.00025, False)])) <= set(ENGINE_THREAD_KEYS) | {"launch_jitter"}


def _steps(factor: float, n: int = 40) -> tuple[list[MeasuredStep], object]:
    """Decode, piecewise (300-token) and eager (1,000-token) steps whose preparation and launch
    take ``factor`` times what the H200 profile gives them, and after each eager step one whose
    launch waited 50 ms on CUDA's queue."""
    rf = resolve(SimulationConfig(gpu="h200", model="llama-3.1-8b")).roofline
    assert rf.graph_max_tokens == 512
    steps, t = [], 0.0
    for i in range(n):
        for tokens, prev in ((0, 0), (300, 0), (1000, 0), (0, 1000)):
            seqs = 4 + i % 8
            pre = [(tokens, 0)] if tokens else []
            launch = factor * (rf.cpu_prepare(seqs) + rf.launch_time(tokens + seqs - bool(pre),
                                                                     bool(pre)))
            launch += 0.05 if prev else 0.0
            steps.append(MeasuredStep(seqs - bool(pre), 1000.0, pre, 0.005, t, t + launch + 0.01,
                                      t - 1.0, t + 0.001, False, 0, t + launch, prev))
            t += 1.0
    return steps, rf


def test_a_runs_host_speed_is_its_launches_over_the_profiles():
    steps, rf = _steps(1.3)
    assert host_speed(steps, rf) == pytest.approx(1.3, rel=1e-9)  # the queue waits left out
    assert host_speed(steps[:30], rf) is None  # too few calls to say
    assert host_speed(_steps(0.8)[0], rf) == pytest.approx(0.8, rel=1e-9)
    # Counted in, the waits after eager steps (a quarter of the calls) would move the median.
    waited = [s for s in steps if s.prev_tokens]
    assert len(waited) == len(steps) // 4
    for s in waited:
        s.prev_tokens = 0
    assert host_speed(steps, rf) > 1.3


def _sim(tmp_path, name: str, *args: str) -> dict[int, list[float]]:
    """TTFTs by prompt length of requests served one at a time: 64-token prompts
    (launch-bound) and 8,000-token ones (GPU-bound); and the summary's provenance."""
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"arrival_s": i * 2.0, "input_tokens": 64 if i % 2 else 8000,
                                         "output_tokens": 20}) + "\n" for i in range(20)))
    out = tmp_path / name
    p = subprocess.run([sys.executable, "-m", "simulator", "--trace", str(trace), "--gpu", "h200",
                        "--output-dir", str(out), "-q", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    got: dict = {"provenance": json.loads((out / "summary.json").read_text())["config"]["provenance"]}
    with (out / "requests.csv").open() as f:
        for row in csv.DictReader(f):
            got.setdefault(int(row["input_tokens"]), []).append(float(row["ttft_s"]))
            got.setdefault("tpot", []).append(float(row["tpot_s"]))
    return got


def test_simulate_on_a_slower_host(tmp_path):
    """--host-speed 1.5 is the profile with its engine-thread costs x1.5: the same numbers as
    that profile written out; a short prompt's TTFT grows by a fifth to a half (its launch and
    harvest are most of it), a GPU-bound 8k-token prompt's by under 5%, TPOT not (GPU-bound);
    and the summary says so."""
    cal = with_host_speed(select_profile("h200", None), 1.5)
    data = cal.model_dump(include={"name", "calibrated", "error_band", "efficiency", "overhead",
                                   "memory"})
    prof = tmp_path / "slow.toml"
    prof.write_text("\n".join(_toml(data)) + "\n")
    base = _sim(tmp_path, "base")
    slow = _sim(tmp_path, "slow", "--host-speed", "1.5")
    same = _sim(tmp_path, "same", "--calibration", str(prof))
    for k in (64, 8000, "tpot"):
        assert slow[k] == pytest.approx(same[k], rel=1e-9)
    short = [s / b - 1 for s, b in zip(slow[64], base[64], strict=True)]
    long = [s / b - 1 for s, b in zip(slow[8000], base[8000], strict=True)]
    assert all(0.2 < x < 0.5 for x in short), short
    assert all(0 < x < 0.05 for x in long), long
    # A lone sequence's decode step (4.9-5.3 ms on the GPU) still outlasts the engine thread's
    # cycle at x1.5 (harvest and preparation, 2.6 -> 3.9 ms), which async scheduling overlaps
    # with it: TPOT moves by under 1%.
    assert all(abs(s / b - 1) < 0.01 for s, b in zip(slow["tpot"], base["tpot"], strict=True))
    assert "x1.5 the profile's" in slow["provenance"]["host_speed"]
    assert "host_speed" not in base["provenance"]
    assert "--host-speed 1.5: the engine thread" in (tmp_path / "slow" / "report.html").read_text()
    assert "--host-speed" not in (tmp_path / "base" / "report.html").read_text()


def _toml(d: dict, prefix: str = "") -> list[str]:
    out = [f"[{prefix}]"] if prefix else []
    # TOML has no null: an unset optional field is left out, as the profiles leave it
    out += [f"{k} = {json.dumps(v)}" for k, v in d.items()
            if v is not None and not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            out += _toml(v, k)
    return out


@pytest.mark.parametrize("value", ["0", "-1", "11", "fast"])
def test_a_bad_host_speed_is_a_one_line_error(tmp_path, value):
    for cmd in (["--trace", str(tmp_path / "none.jsonl"), "--gpu", "h200", "--host-speed", value],
                ["validate", str(H200 / "qwen2.5-14b-bf16" / "prefill-sweep"), "--host-speed", value]):
        p = subprocess.run([sys.executable, "-m", "simulator", *cmd], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        if cmd[0] == "--trace" and value == "fast":
            assert p.returncode == 2 and "host-speed" in p.stderr  # typer refuses a non-number
            continue
        assert p.returncode == 1, (cmd, p.stderr)
        assert "host-speed" in p.stderr and "Traceback" not in p.stderr
        assert p.stderr.strip().count("\n") == 0


def test_validate_at_the_runs_measured_host_speed():
    """The first host's s64 engine launches 1.2-1.3x the profile's times (its prompts of
    129-512 tokens run eagerly, at 0.76-0.81 ms per layer against the profile's 0.58); simulated
    at its measured host speed its prefill sweep's TTFT p50, -17% with the profile's, comes
    within 10%. A run without a timeline (the H100's of 2026-11-24, Qwen2.5-32B FP8) has no
    host speed, and 'measured' leaves it as the profile gives it."""
    run = H200 / "llama8b-bf16-s64-t2048" / "prefill-sweep"
    pooled = validate_run(run)
    own = validate_run(run, speed="measured")
    assert 1.1 < pooled["host_speed"] == own["host_speed"] == own["simulated_host_speed"] < 1.3
    assert pooled["simulated_host_speed"] == 1.0
    assert pooled["error"]["ttft_s.p50"] < -0.10 and abs(own["error"]["ttft_s.p50"]) < 0.10
    h100 = H100 / "qwen2.5-32b-fp8" / "az-r8"
    assert validate_run(h100, speed="measured")["host_speed"] is None
    assert validate_run(h100, speed="measured")["error"] == validate_run(h100)["error"]
    # A given factor applies to every run, timeline or not.
    assert validate_run(h100, speed=1.4)["error"]["ttft_s.p50"] > validate_run(h100)["error"]["ttft_s.p50"]


def test_the_committed_table_carries_each_runs_measured_host_speed():
    table = read_table(H200 / "validation.csv")
    for run in ("llama8b-bf16-host7/az-r8", "llama8b-bf16/az-r8"):
        assert table[run]["host_speed"] == pytest.approx(
            validate_run(H200 / run)["host_speed"], abs=5e-4)
    assert table["llama8b-bf16/az-r8"]["host_speed"] < 0.8 < 1.1 < table[
        "llama8b-bf16-host7/az-r8"]["host_speed"]
    # The H100's: its runs of 2026-12-07 carry the timeline (the FP8 KV cache's, on a third
    # host, among them), those of 2026-11-24 do not.
    h100 = read_table(H100 / "validation.csv")
    assert h100["llama8b-bf16/az-r8"]["host_speed"] == pytest.approx(
        validate_run(H100 / "llama8b-bf16" / "az-r8")["host_speed"], abs=5e-4)
    assert h100["llama8b-bf16-kvfp8/az-r8"]["host_speed"] == pytest.approx(
        validate_run(H100 / "llama8b-bf16-kvfp8" / "az-r8")["host_speed"], abs=5e-4)
    assert "host_speed" not in h100["qwen2.5-32b-fp8/az-r8"]


def test_sweep_and_plan_take_the_host_speed(tmp_path):
    """--host-speed reaches every sweep point, as a single run at that speed gives it."""
    from simulator.run import run_simulation
    from simulator.sweep import summary_row
    from simulator.trace import load_trace
    from tests.conftest import poisson_rows, write_trace

    trace = write_trace(tmp_path / "t.jsonl", poisson_rows(200, 8.0, inp=300, out=64))
    rows = {}
    for hs in ("1", "1.5"):
        out = tmp_path / f"sw{hs}"
        p = subprocess.run([sys.executable, "-m", "simulator", "sweep", "--trace", str(trace),
                            "--gpu", "h200", "--max-num-seqs", "64", "-j", "1", "--host-speed", hs,
                            "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        rows[hs] = next(csv.DictReader((out / "results.csv").open()))
    ref = summary_row(run_simulation(SimulationConfig(
        gpu="h200", engine={"max_num_seqs": 64}, host_speed=1.5), load_trace(trace)).summary)
    assert float(rows["1.5"]["ttft_s.p50"]) == pytest.approx(ref["ttft_s.p50"], rel=1e-6)
    # 300-token prompts above the 128-token graph limit launch eagerly: TTFT follows the host.
    assert float(rows["1.5"]["ttft_s.p50"]) > 1.2 * float(rows["1"]["ttft_s.p50"])
    p = subprocess.run([sys.executable, "-m", "simulator", "plan", "--trace", str(trace),
                        "--slo-ttft", "0.5", "--gpu", "h200", "--host-speed", "0",
                        "--output-dir", str(tmp_path / "plan")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1 and "host-speed" in p.stderr and "Traceback" not in p.stderr
