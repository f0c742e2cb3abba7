"""The `simulate` command end to end, and every kind of bad input it must refuse cleanly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE, write_trace

SUMMARY_KEYS = {
    "ttft_s", "tpot_s", "itl_s", "e2e_s", "request_throughput", "output_throughput",
    "total_token_throughput", "goodput", "completed", "rejected", "preemptions", "duration_s",
    "kv_cache_utilization", "mean_batch_size", "mfu", "mbu", "gpu_hours", "cost_usd",
    "cost_per_million_output_tokens", "config",
}


def simulate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulator", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_main_job_on_shipped_sample(tmp_path):
    out = tmp_path / "run"
    p = simulate("--trace", str(SAMPLE), "--gpu", "h100x2", "--slo-ttft", "0.5",
                 "--slo-tpot", "0.05", "--output-dir", str(out))
    assert p.returncode == 0, p.stderr
    # The H100 profile fitted by `simulate calibrate` is picked up automatically.
    assert "TTFT" in p.stdout and "calibrated: h100-sxm-vllm-0.25.1" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    assert set(s) >= SUMMARY_KEYS
    for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(s[k]) == {"mean", "p50", "p90", "p95", "p99"}
        assert 0 < s[k]["p50"] <= s[k]["p90"] <= s[k]["p99"]
    rows = list(csv.DictReader((out / "requests.csv").read_text().splitlines()))
    n = len(SAMPLE.read_text().splitlines())
    assert len(rows) == n == s["completed"] + s["rejected"]
    assert sum(int(r["output_tokens"]) for r in rows if not r["rejected_reason"]) == \
        s["total_output_tokens"]
    assert {r["replica"] for r in rows} == {"0", "1"}
    ttft = sorted(float(r["ttft_s"]) for r in rows)
    assert s["ttft_s"]["p50"] == pytest.approx(ttft[len(ttft) // 2], rel=1e-3)
    c = s["config"]
    assert (c["num_gpus"], c["tensor_parallel_size"], c["data_parallel_replicas"]) == (2, 1, 2)
    assert c["calibration"]["calibrated"] is True and s["error_band"] == 0.6
    assert "max_num_seqs" in c["provenance"] and c["max_num_seqs"] == 1024
    assert s["gpu_hours"] == pytest.approx(2 * s["duration_s"] / 3600)
    assert s["cost_usd"] == pytest.approx(s["gpu_hours"] * 2.99)
    ts = list(csv.DictReader((out / "timeseries.csv").read_text().splitlines()))
    assert {"time_s", "replica", "queue_length", "running", "kv_cache_utilization"} <= set(ts[0])
    assert len(ts) > 100


def test_flags_reach_the_engine(tmp_path):
    out = tmp_path / "run"
    p = simulate("--trace", str(SAMPLE), "--gpu", "h100x8", "--model", "llama-3.1-70b",
                 "--tensor-parallel-size", "4", "--max-num-seqs", "64",
                 "--max-num-batched-tokens", "2048", "--max-model-len", "16384",
                 "--gpu-cost", "2.0", "--router", "least-loaded", "--output-dir", str(out), "-q")
    assert p.returncode == 0, p.stderr
    c = json.loads((out / "summary.json").read_text())["config"]
    assert (c["tensor_parallel_size"], c["data_parallel_replicas"]) == (4, 2)
    assert (c["max_num_seqs"], c["max_num_batched_tokens"], c["max_model_len"]) == (64, 2048, 16384)
    assert c["gpu_cost_per_hour_usd"] == 2.0 and c["router"] == "least-loaded"
    assert c["provenance"]["gpu_cost_per_hour_usd"] == "--gpu-cost"


def test_explain_prints_each_operator():
    p = simulate("explain", "--gpu", "h100", "--decode", "64x2048", "--prefill", "512:1024",
                 "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    ops = {o["name"]: o for o in d["ops"]}
    assert ops["attention_decode"]["bound"] == "memory"
    assert ops["mlp"]["bound"] == "compute"  # 576 tokens in the step
    assert d["step_time_s"] == pytest.approx(sum(o["time_s"] for o in d["ops"]))
    table = simulate("explain", "--gpu", "h100x2", "-tp", "2", "--decode", "8x1000")
    assert "allreduce(nvlink)" in table.stdout and "bound" in table.stdout


def _bad(tmp_path: Path, text: str | bytes, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    t = tmp_path / "bad.jsonl"
    if isinstance(text, bytes):
        t.write_bytes(text)
    else:
        t.write_text(text)
    out = tmp_path / "out"
    return simulate("--trace", str(t), "--output-dir", str(out), *extra), out


GOOD = '{"arrival_s": 0, "input_tokens": 10, "output_tokens": 5}\n'


@pytest.mark.parametrize("text,needle", [
    (GOOD + '{"arrival_s": 1, "input_tokens": 10\n', "bad.jsonl:2: malformed JSON"),
    (GOOD + '{"arrival_s": 1, "output_tokens": 5}\n', "bad.jsonl:2: field 'input_tokens': missing"),
    (GOOD + '{"arrival_s": 1, "input_tokens": -3, "output_tokens": 5}\n',
     "bad.jsonl:2: field 'input_tokens': must be an integer >= 1, got -3"),
    (GOOD + '{"arrival_s": 1, "input_tokens": 0, "output_tokens": 5}\n', "field 'input_tokens'"),
    (GOOD + '{"arrival_s": 1, "input_tokens": "ten", "output_tokens": 5}\n',
     "field 'input_tokens'"),
    (GOOD + '{"arrival_s": 1, "input_tokens": 4.5, "output_tokens": 5}\n', "field 'input_tokens'"),
    (GOOD + '{"arrival_s": -1, "input_tokens": 10, "output_tokens": 5}\n', "field 'arrival_s'"),
    (GOOD + '{"arrival_s": NaN, "input_tokens": 10, "output_tokens": 5}\n',
     "bad.jsonl:2: field 'arrival_s'"),
    (GOOD + '{"arrival_s": Infinity, "input_tokens": 10, "output_tokens": 5}\n',
     "field 'arrival_s'"),
    ('{"arrival_s": 5, "input_tokens": 10, "output_tokens": 5}\n'
     '{"arrival_s": 1, "input_tokens": 10, "output_tokens": 5}\n',
     "bad.jsonl:2: field 'arrival_s': arrivals must be sorted: 1 s comes after 5 s (pass --sort"),
    (GOOD + '{"arrival_s": 1, "input_tokens": 10, "output_tokens": 99999999999}\n',
     "field 'output_tokens'"),
    (GOOD + "[1, 2, 3]\n", "bad.jsonl:2: each line must be a JSON object"),
    ("", "trace holds no requests"),
    (GOOD + '{"arrival_s": 1, "input_tokens": 10, "output_tokens": 5, "hash_ids": "x"}\n',
     "field 'hash_ids'"),
])
def test_bad_trace_is_one_line_error_and_no_output(tmp_path, text, needle):
    p, out = _bad(tmp_path, text)
    assert p.returncode == 1
    assert needle in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: ")
    assert "Traceback" not in p.stderr
    assert not out.exists() or not any(out.iterdir())


def test_non_utf8_directory_and_missing_file(tmp_path):
    p, _ = _bad(tmp_path, GOOD.encode() + b'{"arrival_s": 1, "input_tokens": 1\xff}\n')
    assert p.returncode == 1 and "not UTF-8" in p.stderr and "bad.jsonl:2" in p.stderr
    p = simulate("--trace", str(tmp_path))
    assert p.returncode == 1 and "is a directory" in p.stderr
    p = simulate("--trace", str(tmp_path / "nope.jsonl"))
    assert p.returncode == 1 and "not found" in p.stderr


@pytest.mark.parametrize("args,needle", [
    (("--gpu", "h10x2"), "unknown GPU 'h10' (did you mean h100"),
    (("--model", "llama-3.1-8"), "unknown model 'llama-3.1-8' (did you mean llama-3.1-8b"),
    (("--router", "fastest"), "unknown router 'fastest'"),
    (("--max-num-seqs", "0"), "max-num-seqs"),
    (("--max-num-seqs", "abc"), "--max-num-seqs"),
    (("--max-num-seqs", "512", "--max-num-batched-tokens", "256"), "max_num_batched_tokens"),
    (("--gpu-memory-utilization", "1.5"), "gpu-memory-utilization"),
    (("--gpu", "h100x2", "--tensor-parallel-size", "4"), "exceeds the 2 GPU(s)"),
    (("--gpu", "l4", "--model", "llama-3.1-70b"), "does not fit on 1 x NVIDIA L4"),
    (("--gpu", "h100-3g.40gbx2", "-tp", "2"), "MIG slices have no NVLink"),
    (("--gpu", "h100", "--max-model-len", "9000000"), "do not fit in the KV cache"),
    (("--quantization", "nf4"), "quantization"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, needle):
    t = write_trace(tmp_path / "t.jsonl", [{"arrival_s": 0, "input_tokens": 5,
                                            "output_tokens": 5}])
    p = simulate("--trace", str(t), "--output-dir", str(tmp_path / "o"), *args)
    assert p.returncode in (1, 2), p.stdout
    assert needle in p.stderr, p.stderr
    assert p.stderr.startswith("error: ") and p.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_bad_model_config_file(tmp_path):
    cfg = tmp_path / "m.json"
    cfg.write_text('{"hidden_size": 64, "num_hidden_layers": 2}')
    p = simulate("explain", "--model", str(cfg))
    assert p.returncode == 1
    assert "m.json: field 'num_attention_heads': missing" in p.stderr


def test_gpus_and_models_lists():
    g = simulate("gpus")
    assert g.returncode == 0 and "h100-sxm" in g.stdout and "3g.40gb" in g.stdout
    m = simulate("models")
    assert m.returncode == 0 and "deepseek-v3" in m.stdout


def test_requests_csv_quotes_ids_and_marks_rejections(tmp_path):
    t = write_trace(tmp_path / "t.jsonl", [
        {"arrival_s": 0, "input_tokens": 5, "output_tokens": 5, "request_id": 'a,"b"'},
        {"arrival_s": 1, "input_tokens": 5000, "output_tokens": 5, "request_id": "long"},
    ])
    out = tmp_path / "o"
    p = simulate("--trace", str(t), "--max-model-len", "4096", "--output-dir", str(out), "-q")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((out / "requests.csv").read_text().splitlines()))
    assert rows[0]["request_id"] == 'a,"b"' and rows[0]["rejected_reason"] == ""
    assert float(rows[0]["tpot_s"]) > 0
    assert rows[1]["first_token_s"] == "" and "max-model-len" in rows[1]["rejected_reason"]
