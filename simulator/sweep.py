"""``simulate sweep``: one trace through a grid of deployments, in parallel.

The grid is the product of the axes given (GPU type and count, TP, max-num-seqs,
max-num-batched-tokens, quantization, KV-cache dtype). Points that cannot run (TP that does not
divide the GPUs, a model that does not fit) are resolved in the parent and recorded as
infeasible with the reason, without a simulation. Each finished point is appended to
``results.csv`` at once, so an interrupted sweep keeps what it finished; the comparison report is
written at the end (or at the interruption) from the finished points.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

from simulator.accuracy import ROW_COLUMNS, row_cells
from simulator.config import SimulationConfig, validated
from simulator.errors import InputError
from simulator.metrics import lookup
from simulator.parallel import cached_trace

AXES = ("gpu", "tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "quantization",
        "kv_cache_dtype", "speculative_config")
METRIC_COLUMNS = (
    "ttft_s.p50", "ttft_s.p90", "ttft_s.p99", "tpot_s.p50", "tpot_s.p90", "tpot_s.p99",
    "e2e_s.p50", "e2e_s.p90", "e2e_s.p99", "request_throughput", "output_throughput", "goodput",
    "slo_attainment", "completed", "rejected", "preemptions", "num_gpus",
    "data_parallel_replicas", "cost_per_hour_usd", "cost_per_million_output_tokens", "calibrated",
    "error_band", *ROW_COLUMNS,
)
COLUMNS = ("point", "label", *AXES, "status", *METRIC_COLUMNS)


def split_values(values: list[str] | None, cast=str) -> list:
    """Axis values from repeated flags and/or comma lists: ``--max-num-seqs 64,128``."""
    out = []
    for v in values or []:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() in ("none", "default", "auto") and cast is not str:
                out.append(None)
                continue
            try:
                out.append(cast(part))
            except ValueError:
                raise InputError(f"not a valid value: {part!r}") from None
    return out


def grid(axes: dict[str, list]) -> list[dict]:
    """Every combination, in a stable order (the first axis varies slowest)."""
    keys = [k for k in AXES if k in axes]
    vals = [axes[k] or [None] for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*vals)]


def point_config(point: dict, base: dict) -> SimulationConfig:
    engine = {**base.get("engine", {}),
              **{k: v for k, v in point.items() if k != "gpu" and v is not None}}
    if engine.get("quantization") == "none":
        engine["quantization"] = None
    spec = engine.get("speculative_config")
    if isinstance(spec, str):  # the axis holds the flag's JSON text, as results.csv shows it
        try:
            engine["speculative_config"] = json.loads(spec)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg})", field="speculative-config") from None
    return validated(SimulationConfig, **{**base, "gpu": point["gpu"], "engine": engine})


def label(point: dict) -> str:
    bits = [point["gpu"]]
    names = {"tensor_parallel_size": "tp", "max_num_seqs": "seqs",
             "max_num_batched_tokens": "mbt", "quantization": "", "kv_cache_dtype": "kv-"}
    for k, short in names.items():
        v = point.get(k)
        if v is not None and v not in ("none", "auto"):
            bits.append(f"{short}{v}")
    spec = point.get("speculative_config")
    if spec:
        d = json.loads(spec)
        bits.append(f"spec-{d.get('method', 'ngram')}-k{d.get('num_speculative_tokens')}")
    return " ".join(bits)


def summary_row(summary: dict) -> dict:
    flat = {k: lookup(summary, k) for k in METRIC_COLUMNS}
    c = summary["config"]
    flat["num_gpus"] = c["num_gpus"]
    flat["data_parallel_replicas"] = c["data_parallel_replicas"]
    return {**flat, **row_cells(summary.get("measured_error"))}


def evaluate(task: tuple) -> tuple[dict, object]:
    """Worker: simulate one point; return its summary row and its report data."""
    from simulator.report.data import from_result
    from simulator.run import run_simulation

    cfg_json, trace, fmt, rate_scale, name, want_data = task
    cfg = SimulationConfig.model_validate_json(cfg_json)
    res = run_simulation(cfg, cached_trace(trace, fmt, rate_scale))
    return summary_row(res.summary), (from_result(res, name) if want_data else None)


class ResultsFile:
    """results.csv, one row per finished point, appended as points finish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict] = []
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(COLUMNS)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in COLUMNS])
            f.flush()

    def finish(self) -> None:
        """Rewrite in grid order (the appends came in completion order)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in sorted(self.rows, key=lambda r: r["point"]):
                w.writerow([_cell(row.get(c)) for c in COLUMNS])
        tmp.replace(self.path)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_sweep(trace: Path, fmt: str | None, axes: dict[str, list], base: dict, out_dir: Path,
              jobs: int | None = None, ray_address: str | None = None, rate_scale: float = 1.0,
              progress=None) -> tuple[ResultsFile, bool]:
    """Run the grid; return the results and whether the user interrupted it. ``progress(done,
    total)`` is called as points finish."""
    from simulator.deployment import resolve
    from simulator.parallel import run_tasks
    from simulator.report.figures import cost_vs_latency
    from simulator.report.html import render, write_html
    from simulator.trace import load_trace

    load_trace(trace, fmt)  # a bad trace fails here, once, with its file:line
    points = grid(axes)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = ResultsFile(out_dir / "results.csv")
    tasks, index = [], []
    for i, p in enumerate(points):
        row = {"point": i, "label": label(p), **p}
        try:
            cfg = point_config(p, base)
            resolve(cfg)
        except InputError as e:
            results.add({**row, "status": f"infeasible: {e.message}"})
            continue
        tasks.append((cfg.model_dump_json(), str(trace), fmt, rate_scale, row["label"], True))
        index.append(row)
    runs: dict[int, object] = {}
    interrupted = False
    try:
        for k, (metrics, data) in run_tasks(evaluate, tasks, jobs, ray_address):
            row = index[k]
            results.add({**row, "status": "ok", **metrics})
            runs[row["point"]] = data
            if progress:
                progress(len(runs), len(tasks))
    except KeyboardInterrupt:
        interrupted = True
    results.finish()
    if runs:
        ok = [r for r in results.rows if r["status"] == "ok"]
        slo = {k.removeprefix("slo_"): base.get(k) for k in ("slo_ttft", "slo_tpot", "slo_e2e")}
        for r in ok:
            r["meets"] = meets(r, slo)
        page = render([runs[p] for p in sorted(runs)],
                      f"Sweep: {trace.name}, {len(runs)} of {len(points)} points"
                      + (" (interrupted)" if interrupted else ""),
                      extra_figures=[cost_vs_latency(ok, slo)])
        write_html(page, out_dir / "report.html")
    return results, interrupted


def meets(row: dict, slo: dict, pct: int = 90) -> bool | None:
    """The SLO test used by sweep and plan: the ``pct`` percentile of TTFT, TPOT and E2E each
    within its SLO, and no request rejected (None when no SLO is set)."""
    checks = [(row.get(f"{k}_s.p{pct}"), v) for k, v in slo.items() if v is not None]
    if not checks:
        return None
    return not row.get("rejected") and all(x is not None and x <= v for x, v in checks)
