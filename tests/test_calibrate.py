"""`simulate calibrate` fits step costs to measured device times and writes a usable profile."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from simulator.calibrate import Sample
from simulator.cost.calibration import load_profile, select_profile
from simulator.measured_costs import alone_requests, front_end_latency
from simulator.paths import profiles_dir
from simulator.validate import find_runs
from tests.conftest import ROOT, untimed

H200 = profiles_dir() / "calibration" / "measurements" / "h200" / "vllm-0.25.1"
H100 = profiles_dir() / "calibration" / "measurements" / "h100-sxm" / "vllm-0.25.1"


def test_calibrate_fits_measured_steps_and_writes_a_loadable_profile(tmp_path):
    out = tmp_path / "h200.toml"
    p = subprocess.run([sys.executable, "-m", "simulator", "calibrate", str(H200 / "llama8b-bf16"),
                        "--output", str(out), "--error-band", "0.4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    prof = load_profile(out)
    assert prof.calibrated and prof.error_band == 0.4
    raw = tomllib.loads(out.read_text())["provenance"]
    assert raw["gpu_driver_name"] == "NVIDIA H200" and raw["vllm"] == "0.25.1"
    assert "gemm_compute_fp8" not in raw["fitted"]  # no FP8 run: not identifiable, not moved
    # The engine thread's costs are measured on these timeline runs, not fitted: preparation
    # 2-2.5 ms + 15-25 us per sequence, eager launch 0.5-0.7 ms per layer (H200 hosts, vLLM 0.25.1).
    assert set(raw["measured"]) >= {"cpu_step_s", "cpu_seq_s", "eager_layer_s", "output_s"}
    o = prof.overhead
    assert 0.001 < o.cpu_step_s < 0.005 and 5e-6 < o.cpu_seq_s < 5e-5
    assert 0.0004 < o.eager_layer_s < 0.001 and o.piecewise_layer_s < o.eager_layer_s
    # Front-end latency: measured, not fitted: the median over the requests the runs served
    # alone (the prefill sweep's 66 isolated prompts among them) of measured minus simulated
    # TTFT, which the engine loop explains to within a couple of milliseconds.
    runs = find_runs([H200 / "llama8b-bf16"])
    assert sum(len(alone_requests(d)) for d in runs) >= 66 and "request_latency_s" in raw["fitted"]
    lat, n = front_end_latency([Sample(d, 50) for d in runs], prof)
    # (recomputed here from the written, 6-digit profile: equal to within 0.1 us)
    assert n >= 66 and prof.overhead.request_latency_s == pytest.approx(lat, abs=1e-7)
    assert 0 <= prof.overhead.request_latency_s < 0.003
    # Values it does not fit keep their number and their stated reason from the base profile.
    defaults = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    assert prof.efficiency.w4a16_stream == defaults.efficiency.w4a16_stream
    line = next(x for x in out.read_text().splitlines() if x.startswith("w4a16_stream"))
    assert "# assumption: 4-bit weights stream" in line
    # The fit explains the measured device time of the steps it saw better than the datasheet
    # defaults do, to a median error under 3%.
    s = Sample(H200 / "llama8b-bf16" / "az-r8", 2000)
    fitted = sorted(abs(e) for e in s.log_errors(prof))
    default = sorted(abs(e) for e in s.log_errors(select_profile("h200", "none")))
    assert fitted[len(fitted) // 2] < min(0.03, default[len(default) // 2])


def test_calibrate_refuses_runs_without_device_times(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    src = H200 / "llama8b-bf16" / "az-r2"
    (run / "meta.json").write_text((src / "meta.json").read_text())
    (run / "requests.jsonl").write_text((src / "requests.jsonl").read_text())
    (run / "steps.jsonl").write_text('{"n_decode": 1, "decode_ctx": 10, "prefill": [], '
                                     '"start_s": 0, "end_s": 0.01}\n' * 10)
    p = subprocess.run([sys.executable, "-m", "simulator", "calibrate", str(run),
                        "--output", str(tmp_path / "x.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "steps.jsonl" in p.stderr and "gpu_s" in p.stderr
    assert not (tmp_path / "x.toml").exists()


def test_alone_requests_keep_only_requests_nothing_overlapped(tmp_path):
    """A request counts as alone only if no other request was in flight at any point of its
    life, including one that arrived long before it and is still decoding."""
    import json

    reqs = [  # (arrival, first token, finish, prompt)
        (0.0, 0.05, 10.0, 100),   # long request: overlaps the next two
        (1.0, 1.04, 2.0, 200),    # inside the first one's life: not alone
        (3.0, 3.03, 4.0, 300),    # still inside the first one's life: not alone
        (11.0, 11.02, 12.0, 400),  # alone: latency = 0.02 - its prefill step's 0.012
        (13.0, 13.05, 14.0, 500),  # overlapped by the next arrival
        (13.5, 13.6, 15.0, 600),
    ]
    (tmp_path / "requests.jsonl").write_text("".join(
        json.dumps({"arrival_s": a, "first_token_s": t, "finish_s": f, "input_tokens": n})
        + "\n" for a, t, f, n in reqs))
    steps = [{"start_s": a + 0.001, "gpu_s": 0.012, "n_decode": 0, "prefill": [[n, 0]]}
             for a, _, _, n in reqs]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    assert [r["input_tokens"] for r in alone_requests(tmp_path)] == [400]


def test_refitting_does_not_depend_on_the_profile_it_replaces():
    """`calibrate` refits on top of the GPU's current profile (to keep its unfitted values), but
    starts the fit from the datasheet defaults: re-running the committed command on its own
    output gives the same numbers, and a base with different fitted values changes nothing."""
    from simulator.calibrate import fit

    runs = [H200 / "llama8b-bf16" / "az-r8", H200 / "llama8b-bf16" / "az-r40"]
    defaults = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    first = fit(runs, defaults, per_run=150)
    moved = first["profile"].model_copy(update={"efficiency": first["profile"].efficiency.model_copy(
        update={"gemm_compute": 0.3, "attn_decode_memory": 0.4, "gemm_roofline_p": 9.0})})
    again = fit(runs, moved, per_run=150)
    assert "gemm_compute" in first["params"] and "attn_decode_memory" in first["params"]
    assert again["params"] == pytest.approx(first["params"], rel=1e-9)


def test_fit_fp8_decay_moves_fp8_gemms_growth_only_when_asked():
    """--fit-fp8-decay fits gemm_compute_decay_fp8 on FP8 runs; without it the exponent stays
    shared (the H100 profile's command), and 16-bit runs alone never fit it."""
    from simulator.calibrate import fit

    base = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    fp8 = [H200 / "llama8b-fp8" / "az-r40", H200 / "llama8b-fp8" / "prefill-sweep"]
    asked = fit(fp8, base, per_run=200, fp8_decay=True)["params"]
    assert "gemm_compute_decay_fp8" in asked and -0.3 <= asked["gemm_compute_decay_fp8"] <= 0.3
    assert "gemm_compute_decay_fp8" not in fit(fp8, base, per_run=200)["params"]
    bf16 = [H200 / "llama8b-bf16" / "az-r40"]
    assert "gemm_compute_decay_fp8" not in fit(bf16, base, per_run=200, fp8_decay=True)["params"]


def test_carried_engine_thread_costs_are_recorded_with_the_values_they_came_from(tmp_path):
    """Runs without the engine thread's timeline (an H100 run with it stripped, as the H100's
    were until 2026-12-07) carry its costs from a profile that measured them, times one fitted
    host speed; the written profile records the values it carried, so each of its
    engine-thread numbers traces to source x host_speed."""
    from simulator.calibrate import fit, write_profile

    src = load_profile(profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml")
    base = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    run = untimed(H100 / "llama8b-bf16" / "az-r8", tmp_path)
    result = fit([run], base, per_run=150, engine_thread_from=src)
    carried = result["carried"]
    assert carried["from"] == src.name and 0.3 <= carried["host_speed"] <= 3.0
    assert carried["values"] == {k: getattr(src.overhead, k) for k in carried["values"]}
    assert {"cpu_step_s", "eager_layer_s", "output_s"} <= set(carried["values"])
    out = write_profile(result, tmp_path / "h100.toml", "simulate calibrate ...", 0.6)
    prov = tomllib.loads(out.read_text())["provenance"]
    assert prov["engine_thread_from"] == src.name
    assert prov["engine_thread_source"] == pytest.approx(carried["values"], rel=1e-5)
    written = load_profile(out).overhead
    for k, v in prov["engine_thread_source"].items():
        assert getattr(written, k) == pytest.approx(v * prov["host_speed"], rel=1e-5), k
    assert written.cpu_step_s != pytest.approx(src.overhead.cpu_step_s, rel=0.01)  # scaled
    # ... but not the launch spread, which is carried unscaled and says where it came from.
    assert src.overhead.launch_jitter > 0 and "launch_jitter" not in carried["values"]
    assert written.launch_jitter == pytest.approx(src.overhead.launch_jitter, rel=1e-5)
    assert f"carried from {src.name}" in next(x for x in out.read_text().splitlines()
                                              if x.startswith("launch_jitter"))


def stale_carried(paths: list) -> list[str]:
    """Where a profile fitted with --engine-thread-from no longer agrees with its source: the
    values it recorded must still be the source's, its own those x its host speed, and its
    launch spread the source's (a ratio, carried as it is). Profiles that carry nothing pass."""
    profiles = {load_profile(p).name: p for p in paths}
    problems = []
    for path in paths:
        prov = tomllib.loads(path.read_text()).get("provenance", {})
        if "engine_thread_from" not in prov:
            continue
        src = load_profile(profiles[prov["engine_thread_from"]]).overhead
        own = load_profile(path).overhead
        recorded = prov.get("engine_thread_source")
        if not recorded:
            problems.append(f"{path}: no engine_thread_source recorded")
        for k, v in (recorded or {}).items():
            if getattr(src, k) != pytest.approx(v, rel=1e-5):
                problems.append(f"{path}: {k} was carried as {v}, its source now holds "
                                f"{getattr(src, k)}: refit it with its recorded command")
            elif getattr(own, k) != pytest.approx(v * prov["host_speed"], rel=1e-5):
                problems.append(f"{path}: {k} is not the carried value x host_speed")
        if own.launch_jitter != pytest.approx(src.launch_jitter, rel=1e-5):
            problems.append(f"{path}: launch_jitter differs from its source's")
    return problems


def test_committed_profiles_agree_with_the_profiles_they_carry_engine_thread_costs_from(tmp_path):
    """A profile fitted with --engine-thread-from depends on that profile's measured values:
    refitting the source (new hosts' timelines move them) without refitting the dependent
    would leave the dependent's recorded command no longer reproducing it. The committed
    profiles pass (since 2026-12-07 both measure their own engine thread); a dependent written
    from the H200's, then a source refitted under it, is caught."""
    from simulator.calibrate import fit, write_profile

    committed = sorted((profiles_dir() / "calibration").glob("*/*.toml"))
    assert stale_carried(committed) == []
    h200 = profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml"
    src = tmp_path / "h200.toml"
    src.write_bytes(h200.read_bytes())
    base = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    run = untimed(H100 / "llama8b-bf16" / "az-r8", tmp_path / "runs")
    result = fit([run], base, per_run=150, engine_thread_from=load_profile(src))
    dep = write_profile(result, tmp_path / "h100.toml", "simulate calibrate ...", 0.6)
    assert stale_carried([src, dep]) == []
    src.write_text(src.read_text().replace("\ncpu_step_s = ", "\ncpu_step_s = 1", 1))
    assert [x for x in stale_carried([src, dep]) if "cpu_step_s was carried" in x]


def test_fit_carried_fits_a_carried_cost_on_the_runs_instead(tmp_path):
    """--fit-carried eager_moe_layer_s: an MoE layer's eager launch does not follow a host's
    dense launches, so on a host without a timeline it is fitted on its own MoE runs rather than
    carried at the dense host factor; it then leaves the carried values, and asking for a cost
    that is not carried (or runs that cannot fit it) is a one-line error."""
    from simulator.calibrate import fit
    from simulator.errors import InputError

    src = load_profile(profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml")
    base = load_profile(profiles_dir() / "calibration" / "defaults.toml")
    runs = [untimed(H100 / "qwen3-30b-a3b-bf16" / "az-r2", tmp_path),
            untimed(H100 / "llama8b-bf16" / "az-r8", tmp_path)]
    carried = fit(runs, base, per_run=150, engine_thread_from=src)
    speed = carried["carried"]["host_speed"]
    assert carried["params"]["eager_moe_layer_s"] == pytest.approx(
        src.overhead.eager_moe_layer_s * speed, rel=1e-9)
    own = fit(runs, base, per_run=150, engine_thread_from=src, fit_carried=["eager_moe_layer_s"])
    assert "eager_moe_layer_s" not in own["carried"]["values"]
    assert set(own["carried"]["values"]) == set(carried["carried"]["values"]) - {"eager_moe_layer_s"}
    # Fitted on the H100's MoE runs it lands well below the H200's first host's 0.98 ms x speed.
    moe = own["params"]["eager_moe_layer_s"]
    assert 0 < moe < 0.8 * src.overhead.eager_moe_layer_s * own["carried"]["host_speed"]
    with pytest.raises(InputError, match="not a carried engine-thread cost"):
        fit(runs[1:], base, per_run=150, engine_thread_from=src,
            fit_carried=["eager_moe_layer_s"])  # no MoE run: nothing to fit it on
    with pytest.raises(InputError, match="only costs carried"):
        fit(runs, base, per_run=150, fit_carried=["eager_moe_layer_s"])
