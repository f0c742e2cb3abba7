"""report.html per run and `simulate report`: the numbers on the page are summary.json's, the
page is self-contained, measured runs (profiler folders, vllm bench serve JSON) overlay their
simulated twin with a correct error table."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from simulator.metrics import lookup
from tests.conftest import ROOT, poisson_rows, write_trace
from tests.test_cli import simulate

CELL = re.compile(r'<td(?: class="(\w+)")? data-run="(\d+)" data-key="([^"]+)" '
                  r'data-value="([^"]*)">([^<]*)</td>')
MEASURED = ROOT / "profiles/calibration/measurements/h100-sxm/vllm-0.25.1/llama8b-bf16/az-r8"


def cells(page: str) -> list[tuple[str, int, str, object, str]]:
    return [(cls, int(run), key, json.loads(val), text)
            for cls, run, key, val, text in CELL.findall(page)]


def shown(text: str) -> tuple[float, float]:
    """A displayed value back in summary units, and half a unit of its last digit."""
    t = text.replace(",", "").replace("$", "")
    scale = 1.0
    if t.endswith(" ms"):
        t, scale = t[:-3], 1e-3
    elif t.endswith("%"):
        t, scale = t[:-1], 1e-2
    digits = len(t.partition(".")[2])
    return float(t) * scale, 0.5 * 10 ** -digits * scale * 1.0001


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("rep")
    trace = write_trace(tmp / "t.jsonl", poisson_rows(600, 30.0, inp=1024, out=128))
    out = tmp / "run"
    p = simulate("--trace", str(trace), "--gpu", "h100x2", "--slo-ttft", "0.05",
                 "--slo-tpot", "0.01", "--output-dir", str(out), "-q")
    assert p.returncode == 0, p.stderr
    return out


def test_every_simulate_run_writes_a_report_whose_numbers_are_the_summary(run_dir):
    page = (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    found = cells(page)
    keys = {k for _, _, k, _, _ in found}
    assert {"ttft_s.p50", "ttft_s.p99", "tpot_s.p90", "e2e_s.p99", "request_throughput",
            "goodput", "slo_attainment", "preemptions", "kv_cache_utilization.peak",
            "cost_per_hour_usd", "cost_per_million_output_tokens"} <= keys
    for cls, run, key, value, text in found:
        assert run == 0
        assert value == lookup(summary, key), key
        number, half_digit = shown(text)
        assert abs(number - value) <= half_digit, (key, text)
        if key.split(".")[0] in ("ttft_s", "tpot_s"):  # SLO colouring follows the numbers
            limit = summary["slo"][key[:4]]
            assert cls == ("ok" if value <= limit else "miss"), key
    # Self-contained: plotly.js inlined, nothing fetched from anywhere.
    assert "<script src" not in page and "<link" not in page
    assert len(re.findall(r"Plotly\.newPlot", page)) == 5
    assert summary["config"]["gpu_display_name"] in page


def test_throughput_series_conserves_tokens_and_spreads_decode_evenly():
    from simulator.report.data import reduce_rows

    # One request: first token at 0, then 10 more evenly to 10 s; one single-token request.
    _, _, tp = reduce_rows([(0.0, 0.0, 10.0, 11), (5.0, 5.0, 5.0, 1)], 0.0, 10.0)
    w = 10.0 / 200
    tokens = [x * w for x in tp["output_tok_s"]]
    assert sum(tokens) == pytest.approx(12)
    assert tokens[0] == pytest.approx(1 + 1.0 * w)  # the first token plus 1 tok/s
    assert tokens[1] == pytest.approx(1.0 * w) and tokens[100] == pytest.approx(1 + w)
    assert sum(x * w for x in tp["completed_req_s"]) == pytest.approx(2)


def test_report_overlays_runs_and_scores_a_measured_run(run_dir, tmp_path):
    out = tmp_path / "cmp.html"
    p = simulate("report", str(run_dir), "--measured", str(MEASURED), "--label", "mine",
                 "-o", str(out))
    assert p.returncode == 0, p.stderr
    page = out.read_text()
    errs = {k: v for _, _, k, v, _ in cells(page) if k.startswith("error.")}
    # The error row is this simulated run against the measured one, from their own summaries.
    sim = json.loads((run_dir / "summary.json").read_text())
    from simulator.report.data import from_profiler_dir

    meas = from_profiler_dir(MEASURED).summary
    assert errs["error.ttft_s.p50"] == pytest.approx(sim["ttft_s"]["p50"] / meas["ttft_s"]["p50"]
                                                     - 1)
    assert errs["error.request_throughput"] == pytest.approx(
        sim["request_throughput"] / meas["request_throughput"] - 1)
    assert ">mine<" in page and "measured llama8b-bf16/az-r8" in page


def test_a_measured_profiler_run_alone_gets_its_simulated_twin(tmp_path):
    out = tmp_path / "twin.html"
    p = simulate("report", "--measured", str(MEASURED), "-o", str(out))
    assert p.returncode == 0, p.stderr
    errs = {k: v for _, _, k, v, _ in cells(out.read_text()) if k.startswith("error.")}
    committed = (MEASURED.parent.parent / "validation.csv").read_text().splitlines()
    row = dict(zip(committed[0].split(","), next(r for r in committed
                                                 if r.startswith("llama8b-bf16/az-r8,")).split(","),
                   strict=True))
    # The twin is the same replay `simulate validate` scores.
    assert errs["error.ttft_s.p50"] == pytest.approx(float(row["ttft_s.p50"]), abs=6e-5)
    assert errs["error.tpot_s.p99"] == pytest.approx(float(row["tpot_s.p99"]), abs=6e-5)


def _bench_json_from(run_dir: Path, path: Path) -> Path:
    """A vllm bench serve --save-detailed result describing exactly the simulated requests."""
    rows = [r for r in csv.DictReader((run_dir / "requests.csv").open()) if r["finish_s"]]
    starts, ttfts, itls, ins, outs = [], [], [], [], []
    for r in rows:
        a, ft, fin, n = (float(r["arrival_s"]), float(r["first_token_s"]), float(r["finish_s"]),
                         int(r["output_tokens"]))
        starts.append(1000.0 + a)
        ttfts.append(ft - a)
        itls.append([(fin - ft) / (n - 1)] * (n - 1))
        ins.append(int(r["input_tokens"]))
        outs.append(n)
    path.write_text(json.dumps({"date": "20261124-120000", "model_id": "x", "start_times": starts,
                                "ttfts": ttfts, "itls": itls, "input_lens": ins,
                                "output_lens": outs, "errors": [""] * len(rows)}))
    return path


def test_vllm_bench_serve_results_import_exactly(run_dir, tmp_path):
    bench = _bench_json_from(run_dir, tmp_path / "bench.json")
    out = tmp_path / "b.html"
    p = simulate("report", str(run_dir), "--measured", str(bench), "-o", str(out))
    assert p.returncode == 0, p.stderr
    errs = {k: v for _, _, k, v, _ in cells(out.read_text()) if k.startswith("error.")}
    assert len(errs) == 11
    for k, v in errs.items():  # same requests: every error vanishes (to the CSV's 1 us)
        assert abs(v) < 1e-3, (k, v)


@pytest.mark.parametrize(("args", "msg"), [
    ((), "give simulate output folders"),
    (("nowhere",), "nowhere: no such run folder or file"),
    (("--measured", "README.md"), "README.md: not a readable JSON file"),
])
def test_report_refuses_bad_input_in_one_line(args, msg, tmp_path):
    p = simulate("report", *args, "-o", str(tmp_path / "x.html"))
    assert p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.html").exists()


def test_bench_json_missing_the_detailed_lists_is_named(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"start_times": [0.0], "ttfts": [0.1]}))
    p = simulate("report", "--measured", str(bad), "-o", str(tmp_path / "x.html"))
    assert p.returncode == 1
    assert f"{bad}: field 'itls': missing per-request list (save with --save-detailed)" in p.stderr
