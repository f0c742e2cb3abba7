"""Replay request traces against a running OpenAI-compatible vLLM server; record requests.

    python -m simulator.profiler.server_replay --url http://HOST:8000 --model llama-3.1-8b \
        --gpu "NVIDIA H100 80GB HBM3" --trace a.jsonl --out DIR [--max-num-seqs 256 ...]

For deployments the in-process profiler (``vllm_replay``) cannot reach: a production server, a
TP/PP deployment, a different vLLM build. Each trace row becomes one streamed
``POST /v1/completions`` sent at its arrival time, with the prompt as token ids (``--hash-block``
blocks shared by rows with the same ``hash_ids``, as ``vllm_replay`` builds them, so prefix-cache
hits happen where the trace says), ``max_tokens`` = ``min_tokens`` = the row's output tokens and
``ignore_eos``, so every request generates exactly what the trace asks. This works with servers
started with ``--skip-tokenizer-init`` and ``--load-format dummy`` (random weights).

Recorded per request (``requests.jsonl``, the same fields ``vllm_replay`` writes): arrival, first
token and finish times in seconds from replay start, taken on the client when each streamed chunk
arrives; generated tokens (the final usage chunk, ``stream_options.include_usage``); chunks after
the first (``decode_steps``: vLLM streams one chunk per engine step that produced tokens); chunks
that held several tokens (``multi_token_chunks``: speculative decoding's accepted drafts, or,
without it, a client that read the stream late, so that the server merged steps: those tokens'
times are late, and the replay warns); the
prefix-cache hit where the server reports ``usage.prompt_tokens_details.cached_tokens``.

**Request level only.** A client cannot see engine steps, so there is no ``steps.jsonl``: such a
run can be validated against (``simulate validate``, ``simulate report --measured``) but not
calibrated from (``simulate calibrate`` needs per-step device times; use ``vllm_replay``). The
server's engine arguments are not exposed by its API: pass the ones it was started with
(``--max-num-seqs`` ... use vLLM's flag names) so the simulator replays the same configuration;
``meta.json`` records them as given. KV-cache blocks are read from the server's Prometheus
``vllm:cache_config_info`` gauge when ``/metrics`` serves it. Times include the network and the
API server's own overhead, as a user of the server sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from pathlib import Path

from simulator.profiler.vllm_replay import load_rows, prompt_ids, trace_seed, write_run


async def _get(session, url: str) -> str | None:
    try:
        async with session.get(url) as r:
            return await r.text() if r.status == 200 else None
    except Exception:  # noqa: BLE001 - optional endpoints: absent is not an error
        return None


async def served_model(session, url: str) -> str:
    """The server's first served model name (what requests must name)."""
    async with session.get(f"{url}/v1/models") as r:
        r.raise_for_status()
        return (await r.json())["data"][0]["id"]


def cache_blocks(metrics: str | None) -> tuple[int | None, int | None]:
    """(num_gpu_blocks, block_size) from vLLM's ``vllm:cache_config_info`` gauge."""
    for line in (metrics or "").splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            n, b = labels.get("num_gpu_blocks"), labels.get("block_size")
            return (int(n) if n and n.isdigit() else None, int(b) if b and b.isdigit() else None)
    return None, None


def take_chunk(rec: dict, chunk: dict, now: float) -> None:
    """Account one streamed chunk, received ``now``, in the request's record: the first that
    carries tokens stamps the first token, each later one is a decode step, one that carries
    several tokens is counted (``multi_token_chunks``), and the usage chunk gives the totals."""
    for c in chunk.get("choices") or []:
        ids = c.get("token_ids")
        got = len(ids or []) or (1 if c.get("text") else 0)
        if ids and len(ids) > 1:
            rec["multi_token_chunks"] += 1
        if not got and c.get("finish_reason") is None:
            got = 1  # a tokenizer-less server streams empty text, one chunk per step
        if not got:
            continue
        rec["generated"] += got
        if rec["first_token_s"] is None:
            rec["first_token_s"] = now
        else:
            rec["decode_steps"] += 1
    usage = chunk.get("usage")
    if usage:
        rec["generated"] = usage.get("completion_tokens", rec["generated"])
        details = usage.get("prompt_tokens_details") or {}
        rec["cached_tokens"] = details.get("cached_tokens")
        rec["prompt_tokens"] = usage.get("prompt_tokens")


async def one_request(session, url: str, model: str, rid: str, row: dict, ids: list[int],
                      start: float, rec: dict) -> None:
    body = {"model": model, "prompt": ids, "max_tokens": row["output_tokens"],
            "min_tokens": row["output_tokens"], "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    async with session.post(f"{url}/v1/completions", json=body) as r:
        if r.status != 200:
            rec["error"] = f"HTTP {r.status}: {(await r.text())[:200]}"
            return
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            take_chunk(rec, json.loads(data), time.perf_counter() - start)
    rec["finish_s"] = time.perf_counter() - start


async def replay(url: str, rows: list[dict], vocab: int, seed: int, hash_block: int,
                 model: str | None = None) -> tuple[list[dict], str]:
    import aiohttp

    rng = random.Random(seed)
    recs = [{"request_id": r.get("request_id", str(i)), "arrival_s": r["arrival_s"],
             "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
             "first_token_s": None, "finish_s": None, "generated": 0, "decode_steps": 0,
             "multi_token_chunks": 0, "cached_tokens": None} for i, r in enumerate(rows)]
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout) as session:
        model = model or await served_model(session, url)
        prompts = [prompt_ids(r, rng, vocab, seed, hash_block) for r in rows]
        start = time.perf_counter()
        tasks = []
        for i, r in enumerate(rows):
            delay = r["arrival_s"] - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one_request(
                session, url, model, str(i), r, prompts[i], start, recs[i])))
        await asyncio.gather(*tasks)
    return recs, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://localhost:8000")
    ap.add_argument("--model", required=True,
                    help="the served model's architecture: shipped name or config.json path")
    ap.add_argument("--served-model-name", default=None, help="default: the server's first")
    ap.add_argument("--gpu", required=True,
                    help="the server's GPU as its driver names it (nvidia-smi), e.g. 'NVIDIA H200'")
    ap.add_argument("--trace", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--hash-block", type=int, default=512, help="tokens per trace hash id")
    g = ap.add_argument_group("the server's engine arguments (recorded, not applied)")
    g.add_argument("--max-num-seqs", type=int, required=True)
    g.add_argument("--max-num-batched-tokens", type=int, required=True)
    g.add_argument("--max-model-len", type=int, required=True)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--quantization", default=None)
    g.add_argument("--kv-cache-dtype", default="auto")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--enforce-eager", action="store_true")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--speculative-config", type=json.loads, default=None)
    a = ap.parse_args(argv)

    import aiohttp

    from simulator.errors import InputError
    from simulator.model import load_model

    try:
        vocab = load_model(a.model).vocab
        traces = [(p, load_rows(p)) for p in a.trace]
    except (InputError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    url = a.url.rstrip("/")

    async def server_info():
        async with aiohttp.ClientSession() as s:
            return await _get(s, f"{url}/version"), await _get(s, f"{url}/metrics")

    try:
        version, metrics = asyncio.run(server_info())
    except aiohttp.ClientError as e:
        print(f"error: {url}: {e}", file=sys.stderr)
        return 2
    blocks, block_size = cache_blocks(metrics)
    engine_args = {k: getattr(a, k) for k in (
        "max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization",
        "quantization", "kv_cache_dtype", "tensor_parallel_size", "enforce_eager")}
    for path, rows in traces:
        t = time.perf_counter()
        try:
            recs, served = asyncio.run(replay(url, rows, vocab, trace_seed(path), a.hash_block,
                                              a.served_model_name))
        except aiohttp.ClientError as e:
            print(f"error: {url}: {e}", file=sys.stderr)
            return 2
        wall = time.perf_counter() - t
        failed = [r for r in recs if r.get("error") or r["finish_s"] is None]
        if failed:
            print(f"error: {path}: {len(failed)} of {len(recs)} requests failed, first: "
                  f"{failed[0].get('error', 'no response')}", file=sys.stderr)
            return 1
        meta = {
            "gpu": a.gpu, "vllm": json.loads(version)["version"] if version else None,
            "torch": None, "date": time.strftime("%Y-%m-%d"), "model": a.model,
            "trace": path.name, "source": "openai-server", "url": url, "served_model": served,
            "engine_args": engine_args, "speculative_config": a.speculative_config,
            "num_gpu_blocks": blocks, "block_size": block_size,
            "enable_prefix_caching": a.enable_prefix_caching, "hash_block": a.hash_block,
            "step_timing": "none (request level only)", "replay_wall_s": wall,
            "multi_token_chunks": sum(r["multi_token_chunks"] for r in recs),
            "command": "python -m simulator.profiler.server_replay " + " ".join(
                sys.argv[1:] if argv is None else argv),
        }
        late = sum(1 for r in recs if r["multi_token_chunks"])
        if late and not a.speculative_config:
            print(f"warning: {path}: {late} of {len(recs)} requests got chunks of several tokens: "
                  "the client read the stream late and the server merged steps, so their token "
                  "times are late (replay from a less loaded client)", file=sys.stderr)
        out = a.out / path.stem
        print(f"{path.stem}: {write_run(out, recs, meta)} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
