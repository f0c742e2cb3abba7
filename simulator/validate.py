"""Compare the simulator with measured vLLM runs: replay each measured trace, report signed errors.

A measured run is a folder written by :mod:`simulator.profiler.vllm_replay`: ``meta.json`` (GPU,
model, engine args), ``requests.jsonl`` (arrival, first token, finish per request). The
simulator replays the same requests on the same GPU with the same engine arguments; the error of
a metric is ``(simulated - measured) / measured``.
"""

from __future__ import annotations

import json
from pathlib import Path

from simulator.config import EngineArgs, SimulationConfig
from simulator.cost.calibration import with_host_speed
from simulator.deployment import Deployment, resolve, with_calibration
from simulator.engine_thread import host_speed
from simulator.errors import InputError
from simulator.gpu import GPU_NAMES
from simulator.measured_steps import read_steps
from simulator.report.data import profiler_summary
from simulator.request import Request
from simulator.run import run_simulation
from simulator.sensitivity import elasticity, slower_gpu

METRICS = ("ttft_s", "tpot_s", "e2e_s")
PCTS = ("p50", "p90", "p99")
# With --sensitivity: % change of the metric per 1% slower GPU work (not an error: not guarded).
ELASTICITY = ("ttft_s.p50", "tpot_s.p50")


def run_meta(run_dir: Path) -> tuple[dict, str]:
    """A measured run's ``meta.json`` and the simulator's name for the GPU it ran on."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder: {e}", file=str(run_dir)) from None
    gpu = GPU_NAMES.get(meta.get("gpu"))
    if gpu is None:
        raise InputError(f"no GPU profile for {meta.get('gpu')!r}", file=str(run_dir / "meta.json"),
                         field="gpu")
    return meta, gpu


def load_run(run_dir: Path) -> tuple[SimulationConfig, list[Request], list[dict], dict]:
    meta, gpu = run_meta(run_dir)
    try:
        rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines() if x]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder: {e}", file=str(run_dir)) from None
    ea = meta["engine_args"]
    engine = EngineArgs(
        tensor_parallel_size=ea.get("tensor_parallel_size") or 1,
        max_num_seqs=ea["max_num_seqs"], max_num_batched_tokens=ea["max_num_batched_tokens"],
        max_model_len=ea["max_model_len"], gpu_memory_utilization=ea["gpu_memory_utilization"],
        quantization=ea.get("quantization"), kv_cache_dtype=ea.get("kv_cache_dtype", "auto"),
        speculative_config=meta.get("speculative_config"),
        enable_prefix_caching=meta.get("enable_prefix_caching", True),
        hash_block_size=meta.get("hash_block", 512),
        enforce_eager=bool(ea.get("enforce_eager")),
        max_cudagraph_capture_size=ea.get("max_cudagraph_capture_size"),
    )
    cfg = SimulationConfig(gpu=f"{gpu}x{engine.tensor_parallel_size}", model=meta["model"],
                           engine=engine)
    # The replayed trace's hash_ids (the profiler built shared prompt prefixes from them).
    # (measurements/<gpu>/<vllm>/<config>/<trace> -> measurements/traces/<trace file>)
    trace = run_dir.parents[3] / "traces" / str(meta.get("trace", "")) if len(
        run_dir.parents) > 3 else None
    hashes = [None] * len(rows)
    if meta.get("hash_block") and trace is not None and trace.is_file():
        src = [json.loads(x) for x in trace.read_text().splitlines() if x.strip()]
        if len(src) == len(rows):
            hashes = [s.get("hash_ids") for s in src]
    reqs = [Request(str(r["request_id"]), r["arrival_s"], r["input_tokens"], r["output_tokens"],
                    hash_ids=h) for r, h in zip(rows, hashes, strict=True)]
    return cfg, reqs, rows, meta


def measured_host_speed(run_dir: Path, dep: Deployment) -> float | None:
    """The run's engine-thread time against ``dep``'s profile
    (:func:`simulator.engine_thread.host_speed`); None for a run without a launch timeline."""
    if not (run_dir / "steps.jsonl").is_file():
        return None
    return host_speed(read_steps(run_dir), dep.roofline)


def validate_run(run_dir: Path, calibration: str | None = None,
                 sensitivity: bool = False, own_engine_thread: bool = False,
                 speed: float | str | None = None, steps: bool = False) -> dict:
    """Simulate one measured run; return measured, simulated and signed errors, the run's
    measured host speed against the profile (``host_speed``, None without a timeline), and with
    ``sensitivity`` each metric's elasticity to the GPU's speed (:mod:`simulator.sensitivity`:
    the run simulated again with GPU work 2% slower). ``speed``: simulate on a host that fast
    (``--host-speed``), or ``"measured"``: at the run's own measured host speed, where it has
    one. With ``own_engine_thread`` the engine thread's costs are the run's own, measured from
    its timeline where it has one (:func:`simulator.calibrate.own_engine_thread`;
    ``own_engine_thread`` in the result says whether it had). With ``steps``, ``steps`` holds
    the run's per-step device-time errors under the same profile
    (:func:`simulator.step_errors.step_cells`; None without device times)."""
    cfg, reqs, rows, meta = load_run(run_dir)
    if calibration is not None:
        cfg = cfg.model_copy(update={"calibration": calibration})
    dep = resolve(cfg)
    measured = measured_host_speed(run_dir, dep)
    factor = measured if speed == "measured" else speed
    if factor is not None:  # the same deployment, its engine thread that much slower
        dep = with_calibration(dep, with_host_speed(dep.calibration, factor))
    own = None
    if own_engine_thread:
        from simulator.calibrate import own_engine_thread as measured_thread

        own = measured_thread(run_dir, dep.calibration)
        if own is not None:
            dep = with_calibration(dep, own)
    sim = run_simulation(cfg, reqs, deployment=dep).summary
    meas = profiler_summary(rows)[0]
    err = {f"{m}.{p}": sim[m][p] / meas[m][p] - 1 for m in METRICS for p in PCTS}
    err["request_throughput"] = sim["request_throughput"] / meas["request_throughput"] - 1
    out = {"run": f"{run_dir.parent.name}/{run_dir.name}", "measured": meas,
           "host_speed": measured, "simulated_host_speed": factor or 1.0,
           "simulated": {k: sim[k] for k in (*METRICS, "request_throughput")},
           "error": err, "kv_blocks": {"measured": meta["num_gpu_blocks"],
                                       "simulated": sim["config"]["kv_cache_blocks_per_replica"]}}
    if own_engine_thread:
        out["own_engine_thread"] = own is not None
    if steps:
        from simulator.step_errors import step_cells

        out["steps"] = step_cells(run_dir, dep.calibration)
    if sensitivity:
        fresh = load_run(run_dir)[1]  # the first simulation stamped its requests
        slow = run_simulation(cfg, fresh, deployment=with_calibration(
            dep, slower_gpu(dep.calibration))).summary
        out["elasticity"] = elasticity(sim, slow, ELASTICITY)
    return out


COLUMNS = ("run", *(f"{m}.{p}" for m in METRICS for p in PCTS), "request_throughput")


def find_runs(roots: list[Path]) -> list[Path]:
    """Every measured-run folder (one holding meta.json) under the given paths."""
    runs: list[Path] = []
    for root in roots:
        if (root / "meta.json").is_file():
            runs.append(root)
        elif root.is_dir():
            runs += sorted(p.parent for p in root.rglob("meta.json"))
        else:
            raise InputError("no such measured run or folder", file=str(root))
    if not runs:
        raise InputError("no measured runs (folders with meta.json) found",
                         file=", ".join(map(str, roots)))
    return runs


def write_table(results: list[dict], path: Path) -> None:
    """The error table, signed fractions, one row per run (committed next to the data)."""
    extra = all("elasticity" in r for r in results)
    head = [*COLUMNS, *(f"{c}.elasticity" for c in ELASTICITY)] if extra else list(COLUMNS)
    lines = [",".join([*head, "host_speed"])]
    for r in results:
        cells = [r["run"], *(f"{r['error'][c]:+.4f}" for c in COLUMNS[1:])]
        if extra:
            cells += [f"{r['elasticity'].get(c, 0.0):+.3f}" for c in ELASTICITY]
        hs = r.get("host_speed")
        cells.append("" if hs is None else f"{hs:.3f}")  # measured, not an error: not guarded
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
