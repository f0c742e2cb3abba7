"""The power-cap model (simulator.cost.power): prefill slows with the GPU's recent compute load."""

from __future__ import annotations

import math

import pytest

from simulator.calibrate import Sample, fit
from simulator.cost.calibration import load_profile
from simulator.cost.power import TAU_S, Heat, slowdown
from simulator.paths import profiles_dir
from simulator.profiler.clocks import match, read_log
from simulator.run import run_simulation
from simulator.validate import load_run

H200 = profiles_dir() / "calibration" / "measurements" / "h200" / "vllm-0.25.1"
REPEAT = H200 / "llama8b-bf16-repeat"
PEAK = 1e15


def test_the_load_is_an_exponential_mean_of_compute_utilisation():
    h = Heat(PEAK)
    assert h.at(5.0) == 0.0
    # 10 tau at 60% of peak: the load settles at 0.6.
    h.add(10 * TAU_S, 10 * TAU_S, 0.6 * PEAK * 10 * TAU_S)
    assert h.at(10 * TAU_S) == pytest.approx(0.6, rel=1e-4)
    # Idle for one tau: it falls by e.
    assert h.at(11 * TAU_S) == pytest.approx(0.6 / math.e, rel=1e-4)
    # One tau at 100% after that idle second: from 0.6/e towards 1 by 1 - 1/e.
    h.add(12 * TAU_S, TAU_S, PEAK * TAU_S)
    start = 0.6 / math.e
    assert h.at(12 * TAU_S) == pytest.approx(start / math.e + (1 - 1 / math.e), rel=1e-4)
    assert slowdown(0.2, 0.5) == pytest.approx(1.1) and slowdown(None, 0.9) == 1.0


def _profile(tmp_path, k):
    """The committed H200 profile with power_slowdown set to k."""
    src = profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml"
    text = "\n".join(x for x in src.read_text().splitlines() if not x.startswith("power_slowdown"))
    text = text.replace("[efficiency]\n", f"[efficiency]\npower_slowdown = {k}\n", 1)
    p = tmp_path / f"k{k}.toml"
    p.write_text(text)
    assert load_profile(p).efficiency.power_slowdown == k
    return str(p)


def test_prefill_slows_under_sustained_load_but_not_on_a_cold_gpu(tmp_path):
    """Llama-3.1-8B at 40 req/s (past saturation): with the cap's slowdown on, the first request
    (a cold GPU) is served exactly as without it, and the queue grows behind slower prefills."""
    cfg, reqs, _, _ = load_run(REPEAT / "az-r40")
    out = {}
    for k in (0.0, 0.3):
        c = cfg.model_copy(update={"calibration": _profile(tmp_path, k)})
        out[k] = run_simulation(c, load_run(REPEAT / "az-r40")[1])
    first = [min(out[k].requests, key=lambda r: r.arrival) for k in out]
    assert first[0].first_token_t == first[1].first_token_t
    ttft = {k: sorted(r.first_token_t - r.arrival for r in v.requests)[len(v.requests) // 2]
            for k, v in out.items()}
    # The summary says what the cap added: nothing at k = 0; at 0.3, a share of the prefill
    # steps' GPU time between 0 and 0.3 x the highest load (bf16: below 1).
    off, on = out[0.0].summary["power_cap"], out[0.3].summary["power_cap"]
    assert off["slowdown"] == 0.0 and off["added_gpu_s"] == 0.0 and off["prefill_share"] == 0.0
    assert on["slowdown"] == 0.3 and 0.03 < on["prefill_share"] < 0.3
    assert on["added_gpu_s"] > 1.0  # seconds, over a 40-second run past saturation
    # Prefill at most 1 + 0.3 x load slower (the load stays below 1 for bf16): TTFT p50 rises,
    # by more than the steps themselves (the queue integrates them).
    assert ttft[0.3] > 1.05 * ttft[0.0]
    assert len(reqs) == len(out[0.3].requests)


def test_loaded_steps_run_at_a_lower_clock_and_a_higher_modelled_load():
    """The model's premise, in the committed clock log of the repeat Llama-3.1-8B runs: the
    large prefill steps at 40 req/s ran at the power cap's lower clock, the prefill sweep's at
    the full 1,980 MHz, and the load computed from the measured timeline tells them apart."""
    log = read_log(H200 / "logs" / "timeline-repeat.gpu.csv")
    big = "prefill >= 2048 tokens"

    def clock(run):
        v = match(REPEAT / run, log)[big]
        return sorted(x["sm_mhz"] for x in v)[len(v) // 2]

    assert clock("az-r40") < 1600 < 1900 < clock("prefill-sweep")

    def load(run):
        s = Sample(REPEAT / run, 10**6)
        hs = [h for st, h in zip(s.steps, s.heat, strict=True) if st.prefill and st.tokens >= 2048]
        return sum(hs) / len(hs)

    assert load("az-r40") > 0.3 > 0.1 > load("prefill-sweep")


def test_calibrate_finds_the_slowdown_where_loaded_and_isolated_prefills_differ():
    runs = [REPEAT / "az-r40", REPEAT / "prefill-sweep"]
    base = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    fitted = fit(runs, base, per_run=300)["params"]["power_slowdown"]
    assert 0.03 < fitted < 0.5
    held = fit(runs, base, per_run=300, fixed={"power_slowdown": 0.0})
    assert "power_slowdown" not in held["params"]
    assert held["profile"].efficiency.power_slowdown == 0.0
