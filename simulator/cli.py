"""The ``simulate`` command.

    simulate --trace prod.jsonl --gpu h100x2 [vLLM flags] [--output-dir DIR]
    simulate explain --model llama-3.1-8b --gpu h100 --decode 64x2048 --prefill 2048
    simulate gpus | simulate models

Flag names follow ``vllm serve`` so a serving config can be pasted. Every input problem ends in
one ``error:`` line and exit status 1, never a traceback or partial output.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from simulator.config import EngineArgs, SimulationConfig, validated
from simulator.errors import InputError
from simulator.report_table import (
    explain_table,
    gpu_table,
    model_table,
    summary_table,
)
from simulator.route import ROUTERS
from simulator.trace import FORMATS, load_trace

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode=None,
                  help="Simulate a vLLM serving deployment on a request trace.")
err = Console(stderr=True)
# Piped or captured output gets wide tables instead of rich's 80-column default.
out = Console() if sys.stdout.isatty() else Console(width=150)


def _fail(e: InputError) -> None:
    err.print(f"error: {e.one_line()}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _warn(msg: str) -> None:
    err.print(f"warning: {msg}", markup=False, highlight=False, soft_wrap=True)


def _json_flag(text: str | None, name: str) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", field=name) from None


def _engine(**kw: object) -> EngineArgs:
    return validated(EngineArgs, **kw)  # type: ignore[return-value]


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    trace: Annotated[Path | None, typer.Option(help="request trace (JSONL)")] = None,
    gpu: Annotated[str, typer.Option(help="GPU type and count: h100, h100x2, l40sx4, "
                                          "h100-3g.40gb")] = "h100",
    model: Annotated[str, typer.Option(help="shipped model name or path to a config.json")]
    = "llama-3.1-8b",
    tensor_parallel_size: Annotated[int | None, typer.Option("--tensor-parallel-size", "-tp")]
    = None,
    pipeline_parallel_size: Annotated[int, typer.Option("--pipeline-parallel-size", "-pp")] = 1,
    max_num_seqs: Annotated[int | None, typer.Option()] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option()] = None,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    gpu_memory_utilization: Annotated[float, typer.Option()] = 0.9,
    block_size: Annotated[int, typer.Option()] = 16,
    quantization: Annotated[str | None, typer.Option(
        help="fp8 | int8 (W8A8) | awq | gptq (W4A16); default: the checkpoint's")] = None,
    sparsity: Annotated[str | None, typer.Option(help="2:4: structured-sparse weights "
                                                      "(Hopper)")] = None,
    speculative_config: Annotated[str | None, typer.Option(
        help='JSON as vllm serve takes it, plus the acceptance: {"method": "eagle", '
             '"num_speculative_tokens": 4, "acceptance_rate": 0.7}')] = None,
    enable_prefix_caching: Annotated[bool, typer.Option(
        "--enable-prefix-caching/--no-enable-prefix-caching",
        help="reuse KV of prompts sharing the trace's hash_ids (vLLM's default: on)")] = True,
    hash_block_size: Annotated[int, typer.Option(help="tokens per trace hash id (Mooncake: "
                                                      "512)")] = 512,
    disaggregate: Annotated[str | None, typer.Option(
        help="P:D prefill and decode replicas, KV shipped between them")] = None,
    kv_transfer_gbs: Annotated[float | None, typer.Option(
        help="per-GPU KV transfer bandwidth, GB/s (default: the GPU's link)")] = None,
    kv_cache_dtype: Annotated[str, typer.Option(help="auto or fp8")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, bfloat16 or float16")] = "auto",
    max_cudagraph_capture_size: Annotated[int | None, typer.Option(
        help="largest CUDA-graph step in tokens (vLLM's default: min(2 x max-num-seqs, 512))")]
    = None,
    enforce_eager: Annotated[bool, typer.Option(help="no CUDA graphs")] = False,
    router: Annotated[str, typer.Option(help=f"{' | '.join(ROUTERS.names())}")] = "round-robin",
    gpu_cost: Annotated[float | None, typer.Option(help="$ per GPU-hour (overrides the "
                                                        "profile's)")] = None,
    calibration: Annotated[str | None, typer.Option(help="calibration TOML, or 'none' for "
                                                         "datasheet defaults")] = None,
    host_speed: Annotated[float, typer.Option(
        help="the serving host's engine-thread (CPU) time relative to the profile's hosts: "
             "1.2 = 20% slower (validate's host_speed column measures it from a profiled "
             "run; the H200 hosts measured ran at 0.7-1.6)")] = 1.0,
    slo_ttft: Annotated[float | None, typer.Option(help="TTFT SLO, seconds")] = None,
    slo_tpot: Annotated[float | None, typer.Option(help="TPOT SLO, seconds")] = None,
    slo_e2e: Annotated[float | None, typer.Option(help="E2E latency SLO, seconds")] = None,
    trace_format: Annotated[str | None, typer.Option(help=f"{' | '.join(FORMATS.names())}; "
                                                          "default: by extension")] = None,
    sort: Annotated[bool, typer.Option(help="sort out-of-order arrivals (with a warning) "
                                            "instead of refusing the trace")] = False,
    rate_scale: Annotated[float, typer.Option(help="replay at this multiple of the trace's "
                                                   "load (inter-arrival times divided)",
                                              min=1e-9)] = 1.0,
    output_dir: Annotated[Path | None, typer.Option(help="default: runs/<trace>-<gpu>")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no table, no progress")] = False,
) -> None:
    """Replay TRACE through a simulated vLLM deployment and report vllm-bench-serve metrics."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        if trace is None:
            raise InputError("missing --trace (a JSONL request trace); see simulate --help",
                             field="trace")
        from simulator.output import write_outputs
        from simulator.run import run_simulation

        engine = _engine(
            tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs,
            pipeline_parallel_size=pipeline_parallel_size,
            max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
            quantization=quantization, kv_cache_dtype=kv_cache_dtype, dtype=dtype,
            sparsity=sparsity, speculative_config=_json_flag(speculative_config,
                                                             "speculative-config"),
            enable_prefix_caching=enable_prefix_caching, hash_block_size=hash_block_size,
            max_cudagraph_capture_size=max_cudagraph_capture_size, enforce_eager=enforce_eager,
        )
        cfg = validated(
            SimulationConfig, gpu=gpu, model=model, engine=engine, router=router,
            gpu_cost_per_hour=gpu_cost, calibration=calibration, host_speed=host_speed,
            slo_ttft=slo_ttft,
            slo_tpot=slo_tpot, slo_e2e=slo_e2e, disaggregate=disaggregate,
            kv_transfer_gbs=kv_transfer_gbs,
        )
        ROUTERS.get(router)
        from simulator.deployment import resolve

        dep = resolve(cfg)  # fail on config errors before reading a large trace
        requests = load_trace(trace, trace_format, sort, _warn)
        if rate_scale != 1.0:
            for r in requests:
                r.arrival /= rate_scale
        if cfg.engine.speculative_config is not None:
            from simulator.request import fresh

            baseline = fresh(requests)  # the same trace without speculation, for the speed-up
        t0 = time.perf_counter()
        if quiet:
            result = run_simulation(cfg, requests, deployment=dep)
        else:
            with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:,}"
                          "/{task.total:,} requests"), TimeElapsedColumn(), TimeRemainingColumn(),
                          console=err, transient=True) as bar:
                task = bar.add_task("sim", total=len(requests))
                result = run_simulation(cfg, requests,
                                        lambda i, n: bar.update(task, completed=i), dep)
        if cfg.engine.speculative_config is not None:
            from simulator.run import speculative_summary

            result.summary["speculative"] = speculative_summary(cfg, dep, baseline, result.summary)
        wall = time.perf_counter() - t0
        out_dir = output_dir or Path("runs") / f"{trace.stem}-{gpu}"
        written = write_outputs(result, out_dir)
    except InputError as e:
        _fail(e)
        return
    for w in result.summary["warnings"]:
        err.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    if not quiet:
        out.print(summary_table(result.summary))
        err.print(f"simulated {len(requests):,} requests in {wall:.2f} s; wrote "
                  f"{', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


_DECODE = re.compile(r"(\d+)x(\d+)")
_PREFILL = re.compile(r"(\d+)(?::(\d+))?")


@app.command()
def explain(
    gpu: Annotated[str, typer.Option()] = "h100",
    model: Annotated[str, typer.Option()] = "llama-3.1-8b",
    tensor_parallel_size: Annotated[int | None, typer.Option("--tensor-parallel-size", "-tp")]
    = None,
    pipeline_parallel_size: Annotated[int, typer.Option("--pipeline-parallel-size", "-pp")] = 1,
    quantization: Annotated[str | None, typer.Option()] = None,
    sparsity: Annotated[str | None, typer.Option()] = None,
    speculative_config: Annotated[str | None, typer.Option()] = None,
    kv_cache_dtype: Annotated[str, typer.Option()] = "auto",
    max_num_seqs: Annotated[int | None, typer.Option()] = None,
    max_cudagraph_capture_size: Annotated[int | None, typer.Option()] = None,
    enforce_eager: Annotated[bool, typer.Option()] = False,
    calibration: Annotated[str | None, typer.Option()] = None,
    decode: Annotated[str | None, typer.Option(help="BxCTX: B decoding sequences with CTX "
                                                    "tokens of context each")] = None,
    prefill: Annotated[list[str] | None, typer.Option(help="N or N:P: a prefill chunk of N "
                                                          "tokens after P cached (repeatable)")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show each operator of one engine step: FLOPs, bytes, intensity, bound and time."""
    try:
        from simulator.deployment import resolve

        engine = _engine(tensor_parallel_size=tensor_parallel_size, quantization=quantization,
                         pipeline_parallel_size=pipeline_parallel_size,
                         kv_cache_dtype=kv_cache_dtype, sparsity=sparsity,
                         speculative_config=_json_flag(speculative_config, "speculative-config"),
                         max_num_seqs=max_num_seqs, enforce_eager=enforce_eager,
                         max_cudagraph_capture_size=max_cudagraph_capture_size)
        dep = resolve(validated(SimulationConfig, gpu=gpu, model=model, engine=engine,
                                calibration=calibration))
        n_dec, ctx = 0, 0
        if decode:
            m = _DECODE.fullmatch(decode.strip())
            if not m:
                raise InputError(f"expected BxCTX such as 64x2048, got {decode!r}", field="decode")
            n_dec, ctx = int(m.group(1)), int(m.group(2))
        chunks = []
        for p in prefill or []:
            m = _PREFILL.fullmatch(p.strip())
            if not m or int(m.group(1)) < 1:
                raise InputError(f"expected N or N:P such as 2048 or 512:1024, got {p!r}",
                                 field="prefill")
            chunks.append((int(m.group(1)), int(m.group(2) or 0)))
        if not n_dec and not chunks:
            n_dec, ctx = 1, 1024
        # decode_ctx counts tokens already cached; each decoding sequence adds one this step.
        rows = dep.roofline.explain(n_dec, n_dec * max(ctx - 1, 0), chunks, n_dec + len(chunks))
    except InputError as e:
        _fail(e)
        return
    if as_json:
        total = sum(r.time_s for r in rows)
        print(json.dumps({
            "config": dep.describe(), "decode": [n_dec, ctx], "prefill": chunks,
            "step_time_s": total,
            "ops": [{**r.__dict__, "intensity": r.intensity if r.hbm_bytes else None}
                    for r in rows],
        }, indent=2))
        return
    out.print(explain_table(dep, rows, n_dec, ctx, chunks))


@app.command()
def gpus() -> None:
    """List the GPU profiles (and their MIG slices)."""
    out.print(gpu_table())


@app.command()
def models() -> None:
    """List the shipped model configs."""
    try:
        out.print(model_table())
    except InputError as e:
        _fail(e)


def main() -> None:
    """Entry point: usage errors become one ``error:`` line too (exit 2), never a traceback."""
    try:
        rc = app(prog_name="simulate", standalone_mode=False)
    except typer.Exit as e:
        rc = e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted: no output written")
        sys.exit(130)
    except typer.TyperException as e:  # bad flag, bad value, missing argument
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(f"error: {msg} (see simulate --help)".replace("\n", " "), markup=False,
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(rc if isinstance(rc, int) else 0)


# The other command groups register themselves on `app`.
from simulator import cli_calibration, cli_planning, cli_trace  # noqa: E402,F401
