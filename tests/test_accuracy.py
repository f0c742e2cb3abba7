"""A calibrated run's summary quotes its profile's measured error against real vLLM
(simulator.accuracy): the signed errors of validation.csv's rows measured like the run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import pytest

from simulator.config import EngineArgs, SimulationConfig
from simulator.paths import profiles_dir
from simulator.request import Request
from simulator.run import run_simulation
from tests.conftest import ROOT

H200 = profiles_dir() / "calibration" / "measurements" / "h200" / "vllm-0.25.1"


def _requests(n: int = 40) -> list[Request]:
    return [Request(str(i), i * 0.25, 300 + 37 * i % 400, 40) for i in range(n)]


def _table(path) -> dict[str, dict[str, float]]:
    """validation.csv read here without the package's reader."""
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    return {c[0]: {k: float(v) for k, v in zip(head[1:], c[1:], strict=True) if v}
            for c in (x.split(",") for x in lines[1:])}


def test_an_fp8_h200_run_quotes_the_fp8_runs_errors():
    cfg = SimulationConfig(gpu="h200", model="llama-3.1-8b",
                           engine=EngineArgs(quantization="fp8"))
    me = run_simulation(cfg, _requests()).summary["measured_error"]
    # The H200's FP8 runs, told apart by their folder names (the simulator reads meta.json).
    rows = {r: e for r, e in _table(H200 / "validation.csv").items()
            if r.startswith("llama8b-fp8")}
    assert me["alike"] and me["runs_like"] == "llama-3.1-8b fp8"
    assert me["runs"] == len(rows) == 35
    for m in ("ttft_s.p50", "ttft_s.p99", "tpot_s.p50", "tpot_s.p99"):
        assert me["range"][m] == [min(e[m] for e in rows.values()),
                                  max(e[m] for e in rows.values())], m
    ok = sum(all(abs(e[f"{m}.{p}"]) <= (0.10 if p == "p50" else 0.20)
                 for m in ("ttft_s", "tpot_s") for p in ("p50", "p90", "p99"))
             for e in rows.values())
    assert me["within_targets"] == ok and 0 < ok < len(rows)
    prof = tomllib.loads((profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml").read_text())
    fitted = prof["provenance"]["fit_residuals"]
    assert me["held_out"] == sum(r not in fitted for r in rows) == 25


def test_bf16_and_moe_quote_their_own_runs_and_an_unmeasured_model_all_of_them():
    bf16 = run_simulation(SimulationConfig(gpu="h200", model="llama-3.1-8b"),
                          _requests()).summary["measured_error"]
    rows = _table(H200 / "validation.csv")
    assert bf16["runs_like"] == "llama-3.1-8b unquantized"
    assert bf16["runs"] == sum(r.startswith("llama8b-bf16") for r in rows) == 51
    moe = run_simulation(SimulationConfig(gpu="h200", model="qwen3-30b-a3b"),
                         _requests()).summary["measured_error"]
    assert moe["runs"] == sum(r.startswith("qwen3") for r in rows) == 8
    assert moe["range"]["ttft_s.p50"][1] == max(e["ttft_s.p50"] for r, e in rows.items()
                                                if r.startswith("qwen3"))
    # Llama-3.1-70B at TP2: no run measured like it, so every run is quoted, and said so.
    big = run_simulation(SimulationConfig(gpu="h200x2", model="llama-3.1-70b",
                                          engine=EngineArgs(tensor_parallel_size=2)),
                         _requests(10)).summary["measured_error"]
    assert not big["alike"] and big["runs"] == len(rows) == 107
    assert big["runs_like"] == "llama-3.1-70b unquantized TP2"
    assert big["range"]["tpot_s.p99"][0] == min(e["tpot_s.p99"] for e in rows.values())


def test_profiles_without_their_own_table_quote_nothing(tmp_path):
    assert run_simulation(SimulationConfig(gpu="a100-80gb", model="llama-3.1-8b"),
                          _requests(10)).summary["measured_error"] is None  # transferred
    mine = tmp_path / "my.toml"  # a copy of the H200's profile, fitted "elsewhere"
    shutil.copy(profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml", mine)
    cfg = SimulationConfig(gpu="h200", model="llama-3.1-8b", calibration=str(mine))
    assert run_simulation(cfg, _requests(10)).summary["measured_error"] is None


def test_a_profile_of_ones_own_quotes_its_validation_table(tmp_path):
    """The layout `simulate calibrate` and `validate --write` give: calibration/<gpu>/vllm-<v>.toml
    and calibration/measurements/<gpu>/vllm-<v>/{<config>/<trace>/meta.json, validation.csv}."""
    prof = tmp_path / "calibration" / "h200" / "vllm-0.25.1.toml"
    prof.parent.mkdir(parents=True)
    text = (profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml").read_text()
    prof.write_text(text.split("\n[provenance.fit_residuals]")[0]
                    + '\n[provenance.fit_residuals]\n"a/r1" = { steps = 1, median = 0.0, '
                      'p90 = 0.0, call_median = 0.0 }\n')
    runs = tmp_path / "calibration" / "measurements" / "h200" / "vllm-0.25.1"
    metas = {"a/r1": ("llama-3.1-8b", None), "a/r2": ("llama-3.1-8b", None),
             "b/r1": ("llama-3.1-8b", "fp8")}
    for run, (model, quant) in metas.items():
        (runs / run).mkdir(parents=True)
        (runs / run / "meta.json").write_text(json.dumps({
            "model": model, "engine_args": {"quantization": quant, "kv_cache_dtype": "auto"}}))
    cols = [f"{m}.{p}" for m in ("ttft_s", "tpot_s", "e2e_s") for p in ("p50", "p90", "p99")]
    vals = {"a/r1": 0.05, "a/r2": -0.15, "b/r1": 0.30}
    (runs / "validation.csv").write_text(
        ",".join(["run", *cols, "request_throughput", "host_speed"]) + "\n" + "".join(
            ",".join([r, *(f"{v:+.4f}" for _ in cols), "+0.0000", ""]) + "\n"
            for r, v in vals.items()))
    cfg = SimulationConfig(gpu="h200", model="llama-3.1-8b", calibration=str(prof))
    me = run_simulation(cfg, _requests(10)).summary["measured_error"]
    assert me["runs"] == 2 and me["held_out"] == 1 and me["within_targets"] == 1
    assert me["range"]["ttft_s.p50"] == [-0.15, 0.05]
    # --kv-cache-dtype fp8 was never measured here: all three rows, and said so.
    kv8 = cfg.model_copy(update={"engine": EngineArgs(kv_cache_dtype="fp8")})
    me = run_simulation(kv8, _requests(10)).summary["measured_error"]
    assert not me["alike"] and me["runs"] == 3 and me["range"]["tpot_s.p99"] == [-0.15, 0.30]
    # A damaged table is an input error naming it, on the command line one line and exit 1.
    (runs / "validation.csv").write_text("run,ttft_s.p50\na/r1,fast\n")
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"arrival_s": 0, "input_tokens": 10, "output_tokens": 5}) + "\n")
    out = subprocess.run([sys.executable, "-m", "simulator", "--trace", str(trace), "--gpu", "h200",
                          "--calibration", str(prof), "--output-dir", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "validation.csv:2: field 'ttft_s.p50': not a number: 'fast'" in out.stderr
    assert not (tmp_path / "o").exists()  # nothing half written


def test_the_summary_and_the_report_state_it(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"arrival_s": i * 0.25, "input_tokens": 400,
                                         "output_tokens": 50}) + "\n" for i in range(30)))
    out = subprocess.run([sys.executable, "-m", "simulator", "--trace", str(trace), "--gpu",
                          "h200", "--quantization", "fp8", "--output-dir", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = {r: e for r, e in _table(H200 / "validation.csv").items()
            if r.startswith("llama8b-fp8")}
    lo = min(e["ttft_s.p50"] for e in rows.values())
    text = " ".join(out.stdout.split())  # the terminal table wraps the line
    assert f"error vs vLLM TTFT p50 {lo:+.0%}.." in text
    assert "over 35 real vLLM 0.25.1 runs of llama-3.1-8b fp8; 25 held out of the fit" in text
    html = (tmp_path / "o" / "report.html").read_text()
    assert f"error against real vLLM: TTFT p50 {lo:+.0%}.." in html


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200"])
def test_every_row_of_the_shipped_tables_is_matched_to_its_run(gpu):
    from simulator.accuracy import _rows, table_for
    from simulator.cost.calibration import select_profile

    table = table_for(select_profile(gpu, None))
    assert table is not None
    rows = _rows(str(table))
    assert len(rows) == len(_table(table)) > 30 and all(key is not None for _, key, _ in rows)


def test_sweep_and_plan_tables_carry_each_points_measured_error(tmp_path):
    import csv

    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"arrival_s": i * 0.25, "input_tokens": 400,
                                         "output_tokens": 50}) + "\n" for i in range(30)))
    out = subprocess.run([sys.executable, "-m", "simulator", "sweep", "--trace", str(trace),
                          "--gpu", "h200,a100-80gb", "--quantization", "none,fp8", "-j", "1",
                          "--output-dir", str(tmp_path / "s")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "s" / "results.csv").read_text()
    res = {r["label"]: r for r in csv.DictReader(text.splitlines())}
    rows = _table(H200 / "validation.csv")
    fp8 = [e for r, e in rows.items() if r.startswith("llama8b-fp8")]
    bf16 = [e for r, e in rows.items() if r.startswith("llama8b-bf16")]
    for lab, sel in (("h200 fp8", fp8), ("h200", bf16)):
        r = res[lab]
        assert int(r["measured_runs"]) == len(sel) and r["measured_alike"] == "True"
        assert float(r["error_lo.ttft_s.p90"]) == pytest.approx(min(e["ttft_s.p90"] for e in sel))
        assert float(r["error_hi.tpot_s.p50"]) == pytest.approx(max(e["tpot_s.p50"] for e in sel))
    assert res["a100-80gb"]["measured_runs"] == ""  # uncalibrated: its band instead
    text = " ".join(out.stdout.split())
    lo = min(e["ttft_s.p90"] for e in fp8)
    assert f"{lo:+.0%}.." in text and "(35 runs)" in text and "(51 runs)" in text
    assert "+-60% (uncalibrated)" in text and "+-75% (uncalibrated)" in text  # bf16, fp8
    out = subprocess.run([sys.executable, "-m", "simulator", "plan", "--trace", str(trace),
                          "--slo-ttft", "0.5", "--gpu", "h200", "-tp", "1", "--max-gpus", "1",
                          "--no-max-load", "--output-dir", str(tmp_path / "p")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lo, hi = min(e["ttft_s.p90"] for e in bf16), max(e["ttft_s.p90"] for e in bf16)
    assert f"{lo:+.0%}..{hi:+.0%}" in out.stdout and "(51 runs)" in out.stdout
    assert f"<td data-key='vs_vllm_p90'>{lo:+.0%}..{hi:+.0%}" in (
        tmp_path / "p" / "report.html").read_text()


def test_table_cells_say_which_kind_of_band_they_show():
    from simulator.accuracy import p90_cell, row_cells

    me = {"runs": 3, "alike": False, "range": {m: [-0.2, 0.1] for m in (
        "ttft_s.p50", "ttft_s.p90", "tpot_s.p50", "tpot_s.p90")}}
    assert p90_cell(row_cells(me)) == "-20%..+10% / -20%..+10% (all 3 runs)"
    assert p90_cell({**row_cells(None), "calibrated": False, "error_band": 0.6}) == (
        "+-60% (uncalibrated)")
    # A profile fitted elsewhere, with no error table beside it: its stated band, so named.
    assert p90_cell({**row_cells(None), "calibrated": "True", "error_band": "0.3"}) == (
        "+-30% (stated)")
    assert p90_cell({}) == "-"


def test_the_gpu_list_says_where_each_gpus_efficiencies_come_from():
    from simulator.gpu import get_gpu
    from simulator.report_table import calibration_cell

    n = len(_table(H200 / "validation.csv"))
    assert calibration_cell(get_gpu("h200")) == f"measured: h200-vllm-0.25.1, {n} runs in its error table"
    assert calibration_cell(get_gpu("a100-80gb")) == "from h100-sxm-vllm-0.25.1, +-60%"
    out = subprocess.run([sys.executable, "-m", "simulator", "gpus"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "calibration" in out.stdout and "measured:" in out.stdout
