"""``simulate report``, ``simulate sweep`` and ``simulate plan``: the capacity-planning commands.

They share the main command's error handling: every input problem is one ``error:`` line and
exit 1. Ctrl-C during a sweep or plan stops the workers, keeps the finished results on disk and
exits 130.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from simulator.accuracy import p90_cell
from simulator.cli import _fail, app, err, out
from simulator.errors import InputError


def _progress(what: str) -> Progress:
    return Progress(TextColumn(what), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)


@app.command()
def report(
    runs: Annotated[list[Path] | None, typer.Argument(help="simulate output folders")] = None,
    measured: Annotated[list[Path] | None, typer.Option(
        help="a measured run: profiler folder or vllm bench serve --save-detailed JSON "
             "(repeatable); a profiler run with no simulated run is simulated here")] = None,
    label: Annotated[list[str] | None, typer.Option(help="legend label per run, in order "
                                                         "(repeatable)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("comparison.html"),
    title: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Overlay several runs (one colour each) in one HTML report, with the error table of every
    simulated run against every measured one."""
    from simulator.report.data import from_result, load_run_data
    from simulator.report.html import render, write_html

    try:
        paths = [*(runs or []), *(measured or [])]
        if not paths:
            raise InputError("give simulate output folders and/or --measured runs", field="runs")
        labels = list(label or [])
        if len(labels) > len(paths):
            raise InputError(f"{len(labels)} labels for {len(paths)} runs", field="label")
        labels += [None] * (len(paths) - len(labels))
        data = [load_run_data(p, lab) for p, lab in zip(paths, labels, strict=True)]
        sims = [i for i, d in enumerate(data) if d.kind == "simulated"]
        meas = [i for i, d in enumerate(data) if d.kind == "measured"]
        if not sims:  # simulate each profiler run's twin on its own GPU and engine args
            from simulator.run import run_simulation
            from simulator.validate import load_run

            for i in list(meas):
                if not (paths[i] / "meta.json").is_file():
                    raise InputError("a vllm bench serve result needs its simulated run "
                                     "folder beside it (simulate it with the same trace)",
                                     file=str(paths[i]))
                cfg, reqs, _, _ = load_run(paths[i])
                data.append(from_result(run_simulation(cfg, reqs), f"simulated {paths[i].name}"))
                sims.append(len(data) - 1)
        pairs = [(s, m) for s in sims for m in meas]
        write_html(render(data, title or f"Comparison of {len(data)} runs", pairs), output)
    except InputError as e:
        _fail(e)
        return
    err.print(f"wrote {output}", highlight=False, soft_wrap=True)


# The tables' column of measured error (simulator.accuracy.p90_cell).
VS_VLLM = "vs vLLM p90 TTFT / TPOT"
HOST_SPEED_HELP = ("the serving host's engine-thread (CPU) time relative to the profile's "
                   "hosts, for every point (as simulate's --host-speed)")


def _common_base(model: str, router: str, calibration: str | None, slo_ttft, slo_tpot, slo_e2e,
                 max_model_len, host_speed: float = 1.0) -> dict:
    from simulator.config import SimulationConfig, validated

    validated(SimulationConfig, host_speed=host_speed)  # its bounds, before any point runs
    base = {"model": model, "router": router, "calibration": calibration, "slo_ttft": slo_ttft,
            "slo_tpot": slo_tpot, "slo_e2e": slo_e2e, "host_speed": host_speed}
    if max_model_len:
        base["engine"] = {"max_model_len": max_model_len}
    return base


@app.command()
def sweep(
    trace: Annotated[Path, typer.Option(help="request trace")],
    gpu: Annotated[list[str], typer.Option(help="GPU types and counts, comma-separated or "
                                                "repeated: h100x2,h200")] = ("h100",),
    tensor_parallel_size: Annotated[list[str] | None, typer.Option(
        "--tensor-parallel-size", "-tp", help="e.g. 1,2")] = None,
    max_num_seqs: Annotated[list[str] | None, typer.Option(help="e.g. 64,256")] = None,
    max_num_batched_tokens: Annotated[list[str] | None, typer.Option()] = None,
    quantization: Annotated[list[str] | None, typer.Option(help="none,fp8")] = None,
    kv_cache_dtype: Annotated[list[str] | None, typer.Option(help="auto,fp8")] = None,
    speculative_config: Annotated[list[str] | None, typer.Option(
        help="one JSON per point, repeatable; 'none' for no speculation")] = None,
    model: Annotated[str, typer.Option()] = "llama-3.1-8b",
    max_model_len: Annotated[int | None, typer.Option()] = None,
    router: Annotated[str, typer.Option()] = "round-robin",
    calibration: Annotated[str | None, typer.Option()] = None,
    host_speed: Annotated[float, typer.Option(help=HOST_SPEED_HELP)] = 1.0,
    slo_ttft: Annotated[float | None, typer.Option()] = None,
    slo_tpot: Annotated[float | None, typer.Option()] = None,
    slo_e2e: Annotated[float | None, typer.Option()] = None,
    rate_scale: Annotated[float, typer.Option(help="compress inter-arrival times by this factor",
                                              min=1e-6)] = 1.0,
    trace_format: Annotated[str | None, typer.Option()] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="local worker processes "
                                                                  "(default: CPU count)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="run on a Ray cluster ('local' starts "
                                                         "one here)")] = None,
    output_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Simulate TRACE on every combination of the axes given; write results.csv and report.html."""
    from simulator.sweep import run_sweep, split_values

    try:
        axes = {"gpu": split_values(gpu), "tensor_parallel_size": split_values(
            tensor_parallel_size, int), "max_num_seqs": split_values(max_num_seqs, int),
            "max_num_batched_tokens": split_values(max_num_batched_tokens, int),
            "quantization": split_values(quantization), "kv_cache_dtype": split_values(
                kv_cache_dtype),
            "speculative_config": [None if s.strip().lower() == "none" else s
                                   for s in speculative_config or []]}
        axes = {k: v for k, v in axes.items() if v}
        base = _common_base(model, router, calibration, slo_ttft, slo_tpot, slo_e2e,
                            max_model_len, host_speed)
        out_dir = output_dir or Path("runs") / f"sweep-{trace.stem}"
        with _progress("sweep") as bar:
            task = bar.add_task("sweep", total=None)
            results, interrupted = run_sweep(
                trace, trace_format, axes, base, out_dir, jobs, ray_address, rate_scale,
                lambda i, n: bar.update(task, completed=i, total=n))
    except InputError as e:
        _fail(e)
        return
    table = Table(title=f"sweep of {trace.name}")
    for c in ("point", "label", "status", "TTFT p90 ms", "TPOT p90 ms", "req/s", "$/h",
              VS_VLLM):
        table.add_column(c, justify="right" if c not in ("label", "status", VS_VLLM) else "left")
    for r in sorted(results.rows, key=lambda r: r["point"]):
        ok = r["status"] == "ok"
        table.add_row(str(r["point"]), r["label"], r["status"],
                      *(f"{r[k] * 1e3:,.1f}" if ok and r[k] is not None else "-"
                        for k in ("ttft_s.p90", "tpot_s.p90")),
                      f"{r['request_throughput']:.2f}" if ok else "-",
                      f"{r['cost_per_hour_usd']:.2f}" if ok else "-",
                      p90_cell(r) if ok else "-")
    out.print(table)
    err.print(f"wrote {out_dir / 'results.csv'} and {out_dir / 'report.html'}", highlight=False,
              soft_wrap=True)
    if interrupted:
        err.print(f"interrupted: kept {sum(r['status'] == 'ok' for r in results.rows)} finished "
                  "point(s)")
        raise typer.Exit(130)


@app.command()
def plan(
    trace: Annotated[Path, typer.Option(help="request trace")],
    slo_ttft: Annotated[float | None, typer.Option(help="TTFT SLO, seconds")] = None,
    slo_tpot: Annotated[float | None, typer.Option(help="TPOT SLO, seconds")] = None,
    slo_e2e: Annotated[float | None, typer.Option(help="E2E SLO, seconds")] = None,
    percentile: Annotated[int, typer.Option(help="the percentile that must meet the SLOs: 50, "
                                                 "90 or 99")] = 90,
    rate_scale: Annotated[float, typer.Option(help="plan for this multiple of the trace's load",
                                              min=1e-6)] = 1.0,
    gpu: Annotated[list[str], typer.Option(help="GPU types to consider")] = (
        "h100,h200,a100-80gb,l40s,b200",),
    tensor_parallel_size: Annotated[list[str] | None, typer.Option(
        "--tensor-parallel-size", "-tp", help="TP sizes to consider (default 1,2,4,8)")] = None,
    max_gpus: Annotated[int, typer.Option(help="most GPUs of a deployment", min=1)] = 8,
    max_num_seqs: Annotated[list[str] | None, typer.Option()] = None,
    max_num_batched_tokens: Annotated[list[str] | None, typer.Option()] = None,
    quantization: Annotated[list[str] | None, typer.Option(help="none,fp8")] = None,
    kv_cache_dtype: Annotated[list[str] | None, typer.Option()] = None,
    model: Annotated[str, typer.Option()] = "llama-3.1-8b",
    max_model_len: Annotated[int | None, typer.Option()] = None,
    router: Annotated[str, typer.Option()] = "round-robin",
    calibration: Annotated[str | None, typer.Option()] = None,
    host_speed: Annotated[float, typer.Option(help=HOST_SPEED_HELP)] = 1.0,
    no_max_load: Annotated[bool, typer.Option("--no-max-load", help="skip the search for each "
                                                                    "candidate's highest load")]
    = False,
    trace_format: Annotated[str | None, typer.Option()] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1)] = 1,
    output_dir: Annotated[Path | None, typer.Option()] = None,
) -> None:
    """Find the cheapest deployment meeting the SLOs at the trace's (scaled) load."""
    from simulator import plan as planner
    from simulator.sweep import split_values
    from simulator.trace import load_trace

    try:
        if percentile not in (50, 90, 99):
            raise InputError("must be 50, 90 or 99", field="percentile")
        slo = {"ttft": slo_ttft, "tpot": slo_tpot, "e2e": slo_e2e}
        if all(v is None for v in slo.values()):
            raise InputError("give at least one of --slo-ttft, --slo-tpot, --slo-e2e",
                             field="slo-ttft")
        base = _common_base(model, router, calibration, slo_ttft, slo_tpot, slo_e2e,
                            max_model_len, host_speed)
        load_trace(trace, trace_format)
        knobs = {"max_num_seqs": split_values(max_num_seqs, int),
                 "max_num_batched_tokens": split_values(max_num_batched_tokens, int),
                 "quantization": split_values(quantization),
                 "kv_cache_dtype": split_values(kv_cache_dtype)}
        fams, pruned = planner.families(split_values(gpu), split_values(tensor_parallel_size, int)
                                        or [1, 2, 4, 8], {k: v for k, v in knobs.items() if v},
                                        max_gpus, base)
        if not fams:
            raise InputError("no candidate can serve the model: " + "; ".join(
                f"{n}: {r}" for n, r in pruned[:3]), field="gpu")
        with _progress("plan") as bar:
            task = bar.add_task("plan", total=len(fams))
            outcomes, interrupted = planner.run_plan(
                fams, base, str(trace), trace_format, rate_scale, slo, percentile, jobs,
                not no_max_load, lambda i, n: bar.update(task, completed=i))
        out_dir = output_dir or Path("runs") / f"plan-{trace.stem}"
        _write_plan(outcomes, pruned, out_dir, trace, base, rate_scale, slo, percentile,
                    charts=not interrupted)
    except InputError as e:
        _fail(e)
        return
    if interrupted:
        sims = sum(len(o.evaluations) for o in outcomes)
        err.print(f"interrupted: kept {sims} finished simulation(s) of {len(outcomes)} "
                  f"candidate(s) in {out_dir / 'plan.csv'} and {out_dir / 'report.html'}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    out.print(_ranking_table(outcomes, rate_scale))
    best = next((o for o in outcomes if o.replicas is not None), None)
    if best is None:
        out.print("no candidate meets the SLOs within --max-gpus")
    else:
        out.print(f"cheapest: {best.family.label} x{best.replicas} replica(s) = "
                  f"{best.replicas * best.family.tp} GPU(s) at ${best.family.cost(best.replicas):.2f}"
                  "/h")
    sims = sum(len(o.evaluations) for o in outcomes)
    err.print(f"{sims} simulations for {len(fams)} feasible families ({len(pruned)} infeasible "
              f"configs pruned before simulating); wrote {out_dir / 'plan.csv'} and "
              f"{out_dir / 'report.html'}", highlight=False, soft_wrap=True)


def _ranking_rows(outcomes, scale: float) -> list[dict]:
    rows = []
    for rank, o in enumerate(outcomes, 1):
        r = o.row or {}
        rows.append({
            "rank": rank, "candidate": o.family.label, "replicas": o.replicas,
            "gpus": None if o.replicas is None else o.replicas * o.family.tp,
            "cost_per_hour_usd": None if o.replicas is None else o.family.cost(o.replicas),
            "ttft_s.p90": r.get("ttft_s.p90"), "tpot_s.p90": r.get("tpot_s.p90"),
            "max_rate_scale": o.max_scale,
            "max_request_rate": None if o.max_scale is None or not r else
            r["request_throughput"] * o.max_scale / scale,
            "status": o.status, "simulations": len(o.evaluations),
            "vs_vllm_p90": p90_cell(r) if r else "-"})
    return rows


def _ranking_table(outcomes, scale: float) -> Table:
    t = Table(title="candidates, cheapest meeting the SLOs first")
    for c in ("#", "candidate", "GPUs", "$/h", "TTFT p90 ms", "TPOT p90 ms", "max load",
              "status", VS_VLLM):
        t.add_column(c, justify="left" if c in ("candidate", "status", VS_VLLM) else "right")
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:,.1f}"

    for r in _ranking_rows(outcomes, scale):
        load = "-" if r["max_rate_scale"] is None else (
            f"x{r['max_rate_scale']:.2f} ({r['max_request_rate']:.2f} req/s)")
        t.add_row(str(r["rank"]), r["candidate"], str(r["gpus"] or "-"),
                  "-" if r["cost_per_hour_usd"] is None else f"{r['cost_per_hour_usd']:.2f}",
                  ms(r["ttft_s.p90"]), ms(r["tpot_s.p90"]), load, r["status"],
                  r["vs_vllm_p90"])
    return t


def _write_plan(outcomes, pruned, out_dir: Path, trace: Path, base: dict, scale: float,
                slo: dict, pct: int, charts: bool = True) -> None:
    from simulator.parallel import cached_trace
    from simulator.report.data import from_result
    from simulator.report.figures import cost_vs_latency
    from simulator.report.html import render, write_html
    from simulator.run import run_simulation
    from simulator.sweep import METRIC_COLUMNS, _cell

    out_dir.mkdir(parents=True, exist_ok=True)
    evals = [e for o in outcomes for e in o.evaluations]
    cols = ("label", "family", "replicas", "gpus", "rate_scale", "meets", *METRIC_COLUMNS)
    with open(out_dir / "plan.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([_cell(e.get(c)) for c in cols] for e in evals)
    # The top three meeting candidates, re-simulated at the asked load for the charts.
    runs = []
    for o in [o for o in outcomes if o.replicas is not None][:3 if charts else 0]:
        res = run_simulation(o.family.config(o.replicas, base), cached_trace(str(trace), None,
                                                                              scale))
        runs.append(from_result(res, f"{o.family.label} x{o.replicas}"))
    at_load = [e for e in evals if e["rate_scale"] == scale]
    page = render(runs, f"Plan for {trace.name}: " + (
        "cheapest deployment meeting the SLOs" if runs else "no candidate meets the SLOs"),
        extra_figures=[cost_vs_latency(at_load, slo)],
        extra_html=_ranking_html(_ranking_rows(outcomes, scale), pruned, slo, pct, scale))
    write_html(page, out_dir / "report.html")


RANK_COLUMNS = ("rank", "candidate", "gpus", "cost_per_hour_usd", "ttft_s.p90", "tpot_s.p90",
                "max_rate_scale", "max_request_rate", "status", "simulations", "vs_vllm_p90")
RANK_UNITS = {"cost_per_hour_usd": "usd", "ttft_s.p90": "ms", "tpot_s.p90": "ms",
              "max_rate_scale": "rate", "max_request_rate": "rate"}


def _ranking_html(rows: list[dict], pruned, slo: dict, pct: int, scale: float) -> str:
    from simulator.report.html import fmt

    def cell(k: str, v) -> str:
        text = fmt(v, RANK_UNITS[k]) if k in RANK_UNITS else ("-" if v is None else str(v))
        return f"<td data-key='{k}'>{html.escape(text)}</td>"

    body = "".join("<tr>" + "".join(cell(k, r[k]) for k in RANK_COLUMNS) + "</tr>" for r in rows)
    slos = ", ".join(f"{k.upper()} p{pct} &le; {v * 1e3:g} ms" for k, v in slo.items() if v)
    items = "".join(f"<li>{html.escape(n)}: {html.escape(why)}</li>" for n, why in pruned)
    return (f"<h2>Ranking</h2><p class='sub'>SLOs: {slos}; load x{scale:g} of the trace.</p>"
            "<table id='ranking'><tr>" + "".join(f"<th>{h}</th>" for h in RANK_COLUMNS)
            + f"</tr>{body}</table>"
            + (f"<details><summary>{len(pruned)} pruned without simulating</summary><ul>{items}"
               "</ul></details>" if pruned else ""))
