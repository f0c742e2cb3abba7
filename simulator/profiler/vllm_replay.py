"""Replay request traces against a real in-process vLLM v1 engine; record requests and steps.

    python -m simulator.profiler.vllm_replay --model llama-3.1-8b --trace a.jsonl [--trace b.jsonl] \
        --out DIR [--max-num-seqs 1024 --max-num-batched-tokens 8192 --quantization fp8 ...]

Method (vLLM 0.25, v1 engine): ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in this
process, so ``LLMEngine.step()`` is exactly one engine-core step (schedule, execute, sample,
process outputs). We time each ``step()`` with ``perf_counter`` and wrap the scheduler's
``schedule()`` to record the batch it formed: for every scheduled request, the tokens scheduled
and the tokens already computed (``num_computed_tokens`` after the call minus the tokens
scheduled, since ``schedule()`` advances it). Requests are added when their trace arrival time
has passed, between steps, as a server's engine loop would see them; weights are random
(``load_format="dummy"``) and prompts are random token ids, which costs what real weights and
text cost for dense and MoE models alike.

vLLM 0.25 schedules asynchronously by default: ``step()`` number k schedules batch k, launches
it, and returns the outputs of batch k-1, so wall-clock step durations blur neighbouring batches
(``meta.json`` records ``async_scheduling``). Each batch's own GPU time is therefore taken with
CUDA events on the stream the model runs on: one recorded just before the executor's
``execute_model`` for the batch, one just after its ``sample_tokens``. Because the stream is
serial, the first event completes when the GPU reaches the batch (after the previous batch or at
launch), so the span is the batch's device time, including any gaps where the GPU waited for the
CPU to launch its kernels, and excluding idle time between batches. Events are read back once
complete, a few steps later, so timing never adds a synchronisation. On a CPU backend there are
no CUDA events and ``gpu_s`` is null. Request timestamps are unaffected by any of this.

The engine thread's own timeline is recorded per batch too (seconds from replay start, the
clock of ``start_s``): ``scheduled_s`` when ``schedule()`` returned, ``launched_s`` when the
batch's ``sample_tokens`` call returned (its kernels are launched), ``harvest_s`` and
``updated_s`` when ``update_from_output`` began and ended on its output (in the next call).
``gpu_start_s``/``gpu_end_s`` place the two CUDA events on the same clock: each is timed against
a reference event recorded, and synchronised on, when the replay starts. Prompts are built
before the replay, so the replay loop only hands them to the engine.

Warm-up (``--warmup``, ``simulator.profiler.warmup``): a fresh engine compiles and loads
kernels at the first step of each new shape, and CUDA's lazy loading drains the GPU to do so, so
before each trace the replay runs the shapes it can meet, to measure a server that has served a
while. ``--cuda-module-loading EAGER`` would load every kernel at start instead, but on the H200
(torch 2.11, CUDA 13) vLLM's engine start did not finish within 9 minutes.

Prompts: a request whose trace row has ``hash_ids`` gets, for each id, a block of
``--hash-block`` token ids drawn from a generator seeded by the id, so requests sharing ids share
real prefix tokens (prefix-cache hits happen where the trace says they would); the rest of the
prompt is random. ``--enable-prefix-caching``/``--no-enable-prefix-caching`` and
``--speculative-config JSON`` pass through to vLLM. With speculative decoding a decode step
schedules ``1 + k`` tokens for a sequence; the step record counts the draft tokens, and each
request records its decode steps (outputs that brought new tokens) and vLLM's
``num_cached_tokens`` (its prefix-cache hit).

Writes, per trace, ``DIR/<trace stem>/``: ``requests.jsonl`` (arrival, first token, finish,
tokens), ``steps.jsonl`` (start, end, decode count and context sum, prefill chunks) and
``meta.json`` (GPU as the driver names it, vLLM and torch versions, engine args, KV blocks).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

from simulator.profiler import warmup
from simulator.profiler.host import host_info

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")

PROFILES = Path(__file__).resolve().parent.parent.parent / "profiles" / "models"


def model_dir(name_or_path: str) -> str:
    """A folder holding only config.json, as vLLM's dummy loader needs."""
    p = Path(name_or_path)
    cfg = json.loads((p if p.is_file() else PROFILES / f"{name_or_path}.json").read_text())
    cfg.setdefault("bos_token_id", 1)
    cfg.setdefault("eos_token_id", 2)
    d = Path(tempfile.mkdtemp(prefix="model-"))
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _us(rec: dict) -> dict:
    """A record with its times (keys ending in ``_s``) rounded to the microsecond."""
    return {k: round(v, 6) if k.endswith("_s") and isinstance(v, float) else v
            for k, v in rec.items()}


def write_run(out: Path, reqs: list[dict], meta: dict, steps: list[dict] | None = None) -> str:
    """Write one measured run's folder (what ``simulate validate`` reads); a one-line summary.
    Times are kept to the microsecond."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "requests.jsonl").write_text("".join(json.dumps(_us(r)) + "\n" for r in reqs))
    if steps is not None:
        (out / "steps.jsonl").write_text("".join(json.dumps(_us(s)) + "\n" for s in steps))
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    done = [r for r in reqs if r["finish_s"] is not None]
    ttft = sorted(r["first_token_s"] - r["arrival_s"] for r in done)
    return (f"{len(done)}/{len(reqs)} done in {meta['replay_wall_s']:.1f} s, "
            f"TTFT p50 {ttft[len(ttft) // 2] * 1e3:.1f} ms")


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class BatchTimer:
    """Device time per batch from CUDA events around execute_model .. sample_tokens, each event
    also placed on the replay's clock; and when the engine thread finished launching it. With
    ``diagnose``, a :class:`~simulator.profiler.diagnose.LaunchProbe` reads what happened
    inside each launch."""

    def __init__(self, core, steps: list[dict], clock, diagnose: bool = False):
        import torch

        from simulator.profiler.diagnose import LaunchProbe

        self.core, self.steps, self.pending, self.clock = core, steps, [], clock
        self.cuda = torch.cuda if torch.cuda.is_available() else None
        self.probe = LaunchProbe(self.cuda) if diagnose else None
        ex = core.model_executor
        self.orig = (ex.execute_model, ex.sample_tokens)
        self.ref = self.ref_s = None
        if self.cuda is not None:
            self.ref = self.cuda.Event(enable_timing=True)
            self.ref.record()
            self.ref.synchronize()
            self.ref_s = clock()  # the reference event's time on the replay's clock

        def execute_model(*args, **kwargs):
            # A batch that was executed but never sampled (nothing scheduled) has no end event.
            self.pending = [p for p in self.pending if p[2] is not None]
            start = None
            if self.cuda is not None:
                start = self.cuda.Event(enable_timing=True)
                start.record()
            self.pending.append([len(self.steps) - 1, start, None])
            if self.probe is not None:
                self.probe.before()
            return self.orig[0](*args, **kwargs)

        def sample_tokens(*args, **kwargs):
            out = self.orig[1](*args, **kwargs)
            end = True
            if self.cuda is not None:
                end = self.cuda.Event(enable_timing=True)
                end.record()
            for p in reversed(self.pending):
                if p[2] is None:
                    p[2] = end
                    if p[0] >= 0:
                        rec = self.steps[p[0]]
                        rec["launched_s"] = clock()
                        if self.probe is not None:
                            self.probe.after(rec)
                    break
            return out

        ex.execute_model, ex.sample_tokens = execute_model, sample_tokens

    def collect(self, wait: bool = False) -> None:
        """Move finished batches' device times into their step records."""
        keep = []
        for p in self.pending:
            idx, start, end = p
            if start is None:  # no CUDA: nothing to read back
                continue
            if end is not None and (wait or end.query()):
                end.synchronize()
                if idx >= 0:
                    s = self.steps[idx]
                    s["gpu_s"] = start.elapsed_time(end) / 1e3
                    s["gpu_start_s"] = self.ref_s + self.ref.elapsed_time(start) / 1e3
                    s["gpu_end_s"] = self.ref_s + self.ref.elapsed_time(end) / 1e3
            else:
                keep.append(p)
        self.pending = keep

    def close(self) -> None:
        self.collect(wait=True)
        if self.probe is not None:
            self.probe.close()
        self.core.model_executor.execute_model, self.core.model_executor.sample_tokens = self.orig


def trace_seed(path: Path) -> int:
    """Prompt-token seed per trace, so that replays of different traces never share prompts
    (which would turn into prefix-cache hits the trace does not have)."""
    return zlib.crc32(path.stem.encode())


def prompt_ids(row: dict, rng: random.Random, vocab: int, seed: int, hash_block: int) -> list[int]:
    """The prompt's token ids: shared blocks for its hash_ids, then its own random tokens."""
    ids: list[int] = []
    for h in row.get("hash_ids") or []:
        if len(ids) >= row["input_tokens"]:
            break
        block = random.Random((seed << 32) ^ h)
        ids += [block.randrange(100, vocab - 100) for _ in range(hash_block)]
    ids = ids[:row["input_tokens"]]
    ids += [rng.randrange(100, vocab - 100) for _ in range(row["input_tokens"] - len(ids))]
    return ids


def replay(engine, rows: list[dict], vocab: int, seed: int, hash_block: int = 512,
           diagnose: bool = False, gc_freeze: bool = False
           ) -> tuple[list[dict], list[dict], float]:
    """Replay ``rows`` in real time: per-request records, per-batch records, and the Unix time
    of the replay clock's zero (to line the steps up with a GPU clock log, ``clocks.py``)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    prompts = [prompt_ids(r, rng, vocab, seed, hash_block) for r in rows]
    steps: list[dict] = []
    core = engine.engine_core.engine_core
    sched = core.scheduler
    orig, orig_update = sched.schedule, sched.update_from_output
    by_output: dict[int, dict] = {}  # id(scheduler output) -> its batch's record

    def clock() -> float:
        return time.perf_counter() - start

    def schedule(*args, **kwargs):
        out = orig(*args, **kwargs)
        dec_n = dec_ctx = 0
        chunks = []
        spec = getattr(out, "scheduled_spec_decode_tokens", None) or {}
        n_spec = 0
        for rid, n in out.num_scheduled_tokens.items():
            req = sched.requests[rid]
            before = req.num_computed_tokens - n
            drafts = len(spec.get(rid, ()))
            if before >= req.num_prompt_tokens and n == 1 + drafts:
                dec_n += 1
                dec_ctx += before
                n_spec += drafts
            else:
                chunks.append([n, before])
        rec = {"n_decode": dec_n, "decode_ctx": dec_ctx, "prefill": chunks,
               "spec_tokens": n_spec, "gpu_s": None, "scheduled_s": clock()}
        steps.append(rec)
        by_output[id(out)] = rec
        return out

    def update_from_output(scheduler_output, *args, **kwargs):
        rec = by_output.pop(id(scheduler_output), None)
        t = clock()
        res = orig_update(scheduler_output, *args, **kwargs)
        if rec is not None:
            rec["harvest_s"], rec["updated_s"] = t, clock()
        return res

    start = time.perf_counter()  # the replay's clock: trace arrivals and every timestamp
    t0_unix = time.time() - (time.perf_counter() - start)
    sched.schedule, sched.update_from_output = schedule, update_from_output
    timer = BatchTimer(core, steps, clock, diagnose)
    recs = {str(i): {"request_id": r.get("request_id", str(i)), "arrival_s": r["arrival_s"],
                     "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
                     "first_token_s": None, "finish_s": None, "generated": 0,
                     "decode_steps": 0, "cached_tokens": None}
            for i, r in enumerate(rows)}
    if gc_freeze:
        # What `vllm serve` does once started (freeze_gc_heap): move everything alive now, the
        # prompts and records built above included, out of the collector's reach.
        gc.collect()
        gc.freeze()
    i, n = 0, len(rows)
    try:
        while i < n or engine.has_unfinished_requests():
            now = time.perf_counter() - start
            while i < n and rows[i]["arrival_s"] <= now:
                r = rows[i]
                engine.add_request(str(i), TokensPrompt(prompt_token_ids=prompts[i]), SamplingParams(
                    max_tokens=r["output_tokens"], min_tokens=r["output_tokens"],
                    ignore_eos=True, detokenize=False))
                i += 1
            if not engine.has_unfinished_requests():
                time.sleep(max(rows[i]["arrival_s"] - now, 0))
                continue
            t0 = time.perf_counter() - start
            k = len(steps)
            g0 = timer.probe.gc.total if timer.probe is not None else 0.0
            outs = engine.step()
            t1 = time.perf_counter() - start
            for s in steps[k:]:
                s["start_s"], s["end_s"] = t0, t1
                if timer.probe is not None:
                    s["call_gc_s"] = round(timer.probe.gc.total - g0, 6)
            timer.collect()
            for o in outs:
                rec = recs[o.request_id]
                got = len(o.outputs[0].token_ids) if o.outputs else 0
                if got and rec["first_token_s"] is None:
                    rec["first_token_s"] = t1
                    rec["cached_tokens"] = getattr(o, "num_cached_tokens", None)
                elif got > rec["generated"]:
                    rec["decode_steps"] += 1
                rec["generated"] = max(rec["generated"], got)
                if o.finished:
                    rec["finish_s"] = t1
    finally:
        sched.schedule, sched.update_from_output = orig, orig_update
        timer.close()
        if gc_freeze:
            gc.unfreeze()
    return list(recs.values()), steps, t0_unix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--trace", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--max-model-len", type=int, default=16384)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                    default=None, help="default: vLLM's (on in v1)")
    ap.add_argument("--speculative-config", type=json.loads, default=None,
                    help='JSON, e.g. {"method": "ngram", "num_speculative_tokens": 4}')
    ap.add_argument("--hash-block", type=int, default=512, help="tokens per trace hash id")
    ap.add_argument("--warmup", choices=("full", "grid", "one"), default="full",
                    help="before each trace: one prompt of every step-size class (grid, see "
                         "simulator.profiler.warmup; the method of runs measured 2026-11 to "
                         "2026-12-02), that plus a prompt every 256 tokens above the CUDA-graph "
                         "size and, once per engine, a decode batch of every size (full), or a "
                         "single short request (one; the method of runs measured before the "
                         "grid existed)")
    ap.add_argument("--diagnose", action="store_true",
                    help="record garbage collection and allocator events inside each launch "
                         "(gc_s, gc_full, alloc, host_alloc, call_gc_s per step): costs tens of "
                         "microseconds a step, so not for calibration runs")
    ap.add_argument("--cuda-module-loading", choices=("EAGER", "LAZY"), default="LAZY",
                    help="CUDA_MODULE_LOADING for the replay: LAZY (CUDA's default) loads a "
                         "kernel at its first launch, which drains the GPU (hence --warmup "
                         "full); EAGER loads all at start (vLLM's engine start did not finish "
                         "in 9 minutes on the H200)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() the replay's heap before each timed replay, as a started "
                         "`vllm serve` does")
    a = ap.parse_args(argv)
    # Must be set before CUDA is initialised (the first torch.cuda call, below).
    os.environ["CUDA_MODULE_LOADING"] = a.cuda_module_loading

    import torch
    import vllm
    from vllm import EngineArgs, LLMEngine

    kw = dict(model=model_dir(a.model), load_format="dummy", skip_tokenizer_init=True,
              max_num_seqs=a.max_num_seqs, max_num_batched_tokens=a.max_num_batched_tokens,
              max_model_len=a.max_model_len, gpu_memory_utilization=a.gpu_memory_utilization,
              quantization=a.quantization, kv_cache_dtype=a.kv_cache_dtype,
              tensor_parallel_size=a.tensor_parallel_size, enforce_eager=a.enforce_eager,
              seed=0)
    if a.enable_prefix_caching is not None:
        kw["enable_prefix_caching"] = a.enable_prefix_caching
    if a.speculative_config is not None:
        spec = dict(a.speculative_config)
        if "model" in spec and not Path(spec["model"]).is_dir() and spec["model"] != "ngram":
            spec["model"] = model_dir(spec["model"])  # a shipped config, random weights too
        kw["speculative_config"] = spec
    recorded = json.loads(json.dumps({k: v for k, v in kw.items() if k != "model"}))
    t = time.perf_counter()
    engine = LLMEngine.from_engine_args(EngineArgs(**kw))
    startup = time.perf_counter() - t
    cfg = engine.vllm_config
    vocab = cfg.model_config.get_vocab_size()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"engine up in {startup:.1f} s on {gpu}; KV blocks {cfg.cache_config.num_gpu_blocks}",
          flush=True)
    # Warm-up outside each timed replay (simulator.profiler.warmup): the ramp once per engine,
    # the prompts before each trace, one request at a time so each is its own step size.
    graph_top = 0 if a.enforce_eager else (
        cfg.compilation_config.max_cudagraph_capture_size or 0)
    sizes, ramp = warmup.plan(a.warmup, a.max_num_batched_tokens, a.max_model_len,
                              a.max_num_seqs,
                              cfg.cache_config.num_gpu_blocks * cfg.cache_config.block_size,
                              graph_top)
    if ramp:
        replay(engine, ramp, vocab, 10_000)
    for path in a.trace:
        rows = load_rows(path)
        for i, n in enumerate(sizes):
            replay(engine, [{"arrival_s": 0, "input_tokens": n, "output_tokens": 2}], vocab, i + 1)
        t = time.perf_counter()
        reqs, steps, t0_unix = replay(engine, rows, vocab, trace_seed(path), a.hash_block,
                             a.diagnose, a.gc_freeze)
        wall = time.perf_counter() - t
        meta = {
            "gpu": gpu, "vllm": vllm.__version__, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "model": a.model, "trace": path.name,
            "engine_args": recorded,  # vLLM turns some of kw into config objects
            "speculative_config": a.speculative_config,
            "num_gpu_blocks": cfg.cache_config.num_gpu_blocks,
            "block_size": cfg.cache_config.block_size, "startup_s": startup,
            # With async scheduling, wall-clock step times blur neighbouring batches; each
            # batch's own device time is gpu_s (CUDA events, see the module docstring).
            "async_scheduling": getattr(cfg.scheduler_config, "async_scheduling", None),
            "step_timing": "cuda-events" if torch.cuda.is_available() else "wall-clock only",
            "enable_prefix_caching": cfg.cache_config.enable_prefix_caching,
            "hash_block": a.hash_block, "warmup": a.warmup, "warmup_prompt_tokens": sizes,
            "warmup_ramp_seqs": len(ramp), "cuda_graph_top": graph_top,
            "diagnose": a.diagnose, "gc_freeze": a.gc_freeze,
            "cuda_module_loading": os.environ["CUDA_MODULE_LOADING"],
            "replay_wall_s": wall, "t0_unix": t0_unix, "host": host_info(),
            "command": " ".join(sys.argv if argv is None else argv),
        }
        line = write_run(a.out / path.stem, reqs, meta, steps)
        print(f"{path.stem}: {line}, {len(steps)} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
