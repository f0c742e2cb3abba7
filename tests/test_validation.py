"""Validation against measured vLLM runs: the committed error table may not get worse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simulator.accuracy import TARGETS, misses, read_table
from simulator.paths import profiles_dir
from simulator.validate import find_runs, validate_run
from tests.conftest import ROOT

MEAS = profiles_dir() / "calibration" / "measurements"
H100 = MEAS / "h100-sxm" / "vllm-0.25.1"
H200 = MEAS / "h200" / "vllm-0.25.1"
TABLES = {g: read_table(g / "validation.csv") for g in (H100, H200)}
CASES = [(g, run) for g, t in TABLES.items() for run in sorted(t)]


def assert_meets_targets(err: dict[str, float]) -> None:
    """Issue 3's targets: TTFT and TPOT p50 within 10%, p90 and p99 within 20%."""
    assert TARGETS == {"ttft_s.p50": 0.10, "ttft_s.p90": 0.20, "ttft_s.p99": 0.20,
                       "tpot_s.p50": 0.10, "tpot_s.p90": 0.20, "tpot_s.p99": 0.20}
    assert not misses(err), {k: err[k] for k in misses(err)}


@pytest.mark.parametrize("gpu_dir", [H100, H200], ids=["h100", "h200"])
def test_every_measured_run_is_in_the_table(gpu_dir):
    runs = {f"{d.parent.name}/{d.name}" for d in find_runs([gpu_dir])}
    assert runs == set(TABLES[gpu_dir])
    assert len(runs) >= 13


@pytest.mark.parametrize("gpu_dir", [H100, H200], ids=["h100", "h200"])
def test_the_stated_error_band_covers_every_measured_p50_error(gpu_dir):
    """The band the summary states (error_band, wider for FP8 or MoE where the profile says so)
    is at least the worst TTFT, TPOT or E2E p50 error of every committed run of its class."""
    from simulator.deployment import resolve
    from simulator.validate import load_run

    for run, errors in TABLES[gpu_dir].items():
        band = resolve(load_run(gpu_dir / run)[0]).error_band
        worst = max(abs(errors[f"{m}.p50"]) for m in ("ttft_s", "tpot_s", "e2e_s"))
        assert worst <= band, f"{run}: p50 error {worst:.2f} beyond the stated band {band:.2f}"


@pytest.mark.parametrize(("gpu_dir", "run"), CASES, ids=[f"{g.parent.name}:{r}" for g, r in CASES])
def test_error_does_not_grow(gpu_dir, run):
    """A change to the cost model, scheduler or calibration that moves any committed case further
    from the measurement fails here; one that improves it should rewrite the table (simulate
    validate --write)."""
    result = validate_run(gpu_dir / run)
    for metric, committed in TABLES[gpu_dir][run].items():
        if metric.endswith(".elasticity") or metric == "host_speed":
            continue  # a sensitivity or a measured host speed, not an error
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


def test_calibration_beats_datasheet_defaults_on_held_out_tpot():
    """The fitted H100 profile, applied to the runs held out of its fit (another batch config and
    a model it never saw), is closer to the measured TPOT p50, on average, than the datasheet
    defaults."""
    held = [d for d in find_runs([H100]) if "s64" in d.parent.name or "qwen2.5" in d.parent.name]
    assert len(held) == 6  # s64 at r8, r20 and the prefill sweep; Qwen2.5-32B at r2, r8, r20

    def mean_abs(cal):
        return sum(abs(validate_run(d, cal)["error"]["tpot_s.p50"]) for d in held) / len(held)

    assert mean_abs(None) < 0.8 * mean_abs("none")


@pytest.mark.parametrize("run", ["mc-x4", "mc-x1"])
def test_held_out_long_context_mooncake_runs_meet_the_targets(run):
    """Mooncake's conversation trace (prompts of 14k tokens on average, up to 122k, shared
    prefixes) on the H200, held out of the fit: at a quarter of its rate and at its own, where
    the KV cache runs full and vLLM preempts. TTFT/TPOT p50 within 10%, p90/p99 within 20%. The
    saturated run needs the long-context attention rate (`long-sweep`) and preempted requests
    finding their own blocks still cached; before either, its TPOT p50 was +93%."""
    assert_meets_targets(validate_run(H200 / "llama8b-bf16-long" / run)["error"])


@pytest.mark.parametrize("run", ["llama8b-bf16-host4/az-r2", "llama8b-bf16-host4/az-r8",
                                 "llama8b-bf16-host4/az-r20", "llama8b-bf16-host4/az-r40",
                                 "llama8b-bf16-s64-t2048-host4/az-r20"])
def test_held_out_runs_on_a_fourth_host_meet_the_targets(run):
    """Llama-3.1-8B bf16 on an H200 host none of the fitted runs came from (`host` in their
    meta.json), held out of the fit, from 2 req/s to past saturation, and the held-out
    --max-num-seqs 64 / --max-num-batched-tokens 2048 config at 20 req/s (-17% on the second
    host, whose engine thread is ~50% slower). TTFT/TPOT p50 within 10%, p90/p99 within 20%."""
    assert_meets_targets(validate_run(H200 / run)["error"])


@pytest.mark.parametrize("run", ["llama8b-bf16-spec-d1b-k4-l3/az-r2",
                                 "llama8b-bf16-spec-d1b-k4-l3/az-r8"])
def test_held_out_speculative_runs_meet_the_targets(run):
    """Llama-3.1-8B with a Llama-3.2-1B draft (k=4, mean acceptance length 3) on the H100 host
    of 2026-12-07, held out of the fit: the draft's launches overlap the target's GPU work
    (FixedCosts.draft_launch). Added to the GPU time instead, as before, TTFT p50 was +25% and
    +36%, TPOT p50 +16% and +43%."""
    assert_meets_targets(validate_run(H100 / run)["error"])


def test_the_draft_pass_is_measured_from_the_runs_with_a_timeline():
    """calibrate's --draft-runs: the runs that carry the engine thread's timeline set the
    profile's value, the median of their medians (0.37 and 0.38 ms per draft layer per pass for
    l3 on the third host, 0.49 for l1 on a slower fourth); the first host's l1 run, without a
    timeline and on a host whose engine thread was ~1.7x slower (0.63 ms from its device times),
    is left out, as it would pull the median to 0.43 ms."""
    from simulator.cost.calibration import load_profile
    from simulator.measured_costs import draft_pass_time

    cal = load_profile(profiles_dir() / "calibration" / "h100-sxm" / "vllm-0.25.1.toml")
    timed = [H100 / "llama8b-bf16-spec-d1b-k4-l3" / r for r in ("az-r2", "az-r8")] + [
        H100 / "llama8b-bf16-spec-d1b-k4-l1-host4" / "az-r2"]
    old = H100 / "llama8b-bf16-spec-d1b-k4-l1" / "az-r8"
    each = [draft_pass_time([d], cal) for d in (*timed, old)]
    assert 0.00036 < each[0][0] < each[1][0] < 0.00039 < 0.00045 < each[2][0] < 0.00053
    assert 0.0006 < each[3][0] < 0.00066
    pooled, n = draft_pass_time([*timed, old], cal)
    assert pooled == each[1][0] and n == sum(e[1] for e in each[:3])
    assert draft_pass_time([old], cal) == each[3]  # untimed runs count where none has one
    assert cal.overhead.draft_layer_pass_s == pytest.approx(pooled, rel=1e-5)


@pytest.mark.parametrize("run", ["llama8b-bf16-host5/az-r2", "llama8b-bf16-host5/az-r8",
                                 "llama8b-bf16-host5/az-r20", "llama8b-bf16-host5/az-r40",
                                 "llama8b-fp8-host5/az-r2", "llama8b-fp8-host5-run2/az-r2",
                                 "llama8b-fp8-host5-run3/az-r2", "llama8b-fp8-host5-run3/az-r20"])
def test_held_out_runs_on_a_fifth_host_meet_the_targets(run):
    """A fifth H200 host, held out of the fit: Llama-3.1-8B bf16 from 2 req/s to past
    saturation, and FP8 at 2 req/s in each of three engines started one after another on it
    (and at 20 req/s in the third, where the three measured 47.7, 54.2 and 52.5 ms TTFT p50)."""
    assert_meets_targets(validate_run(H200 / run)["error"])


def test_own_engine_thread_accounts_for_the_hosts_fp8_spread_at_20_req_s():
    """FP8 at 20 req/s is launch-bound: with the profile's pooled engine-thread costs the fourth
    host's TTFT p50 is 15-30% short (-19.5% with the tenth session's profile) and the first
    host's within 5%; each with the costs measured from
    its own timeline (`simulate validate --own-engine-thread`, a diagnostic) is within 10%. A run
    without a timeline (the H100's of 2026-11-24, Qwen2.5-32B FP8) keeps the profile's and says so."""
    for host, pooled_lo, pooled_hi in (("llama8b-fp8-host4", -0.30, -0.15),
                                       ("llama8b-fp8", -0.05, 0.05)):
        pooled = validate_run(H200 / host / "az-r20")["error"]["ttft_s.p50"]
        own = validate_run(H200 / host / "az-r20", own_engine_thread=True)
        assert own["own_engine_thread"] is True
        assert pooled_lo < pooled < pooled_hi
        assert abs(own["error"]["ttft_s.p50"]) < 0.10
    assert own["error"]["ttft_s.p50"] != pytest.approx(pooled, abs=0.01)
    h100 = validate_run(H100 / "qwen2.5-32b-fp8" / "az-r8", own_engine_thread=True)
    assert h100["own_engine_thread"] is False
    assert h100["error"] == validate_run(H100 / "qwen2.5-32b-fp8" / "az-r8")["error"]
