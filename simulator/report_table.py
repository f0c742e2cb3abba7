"""Rich tables for the terminal: the run summary, explain's operator breakdown, GPU and model lists."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from simulator.accuracy import TARGETS, error_line, misses
from simulator.cost.roofline import OpCost


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:,.1f}"


def summary_table(s: dict) -> Group:
    """Latency percentiles, then the run's headline facts."""
    c = s["config"]
    cal = c["calibration"]
    status = ("calibrated: " + cal["name"]) if cal["calibrated"] else (
        f"UNCALIBRATED datasheet defaults, +-{cal['error_band']:.0%}")
    lat = Table(title=f"{c['num_gpus']} x {c['gpu_display_name']} | {c['model']} | "
                      f"TP{c['tensor_parallel_size']} x {c['data_parallel_replicas']} replica(s) | "
                      f"{status}", title_justify="left")
    lat.add_column("latency (ms)")
    for col in ("mean", "p50", "p90", "p95", "p99"):
        lat.add_column(col, justify="right")
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"),
                       ("e2e_s", "E2E")):
        d = s[key]
        lat.add_row(label, *(_ms(d[k]) for k in ("mean", "p50", "p90", "p95", "p99")))
    facts = Table(show_header=False, box=None, padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    good = "- (give --slo-ttft/--slo-tpot)" if s["goodput"] is None else (
        f"{s['goodput']:.2f} req/s within SLOs")
    cpm = s["cost_per_million_output_tokens"]
    for k, v in (
        ("requests", f"{s['completed']:,} completed, {s['rejected']:,} rejected, "
                     f"{s['preemptions']:,} preemptions"),
        ("throughput", f"{s['request_throughput']:.2f} req/s, {s['output_throughput']:,.0f} "
                       f"output tok/s, {s['total_token_throughput']:,.0f} total tok/s"),
        ("goodput", good),
        ("batch / KV cache", f"mean batch {s['mean_batch_size']:.1f}; KV utilisation mean "
                             f"{s['kv_cache_utilization']['mean']:.1%}, peak "
                             f"{s['kv_cache_utilization']['peak']:.1%}"),
        ("MFU / MBU", f"{s['mfu']:.1%} / {s['mbu']:.1%}"),
        *([("power cap", f"prefill GPU time +{pc['prefill_share']:.1%} at the power cap "
                         f"(slowdown {pc['slowdown']:.3f} x load)")]
          if (pc := s.get("power_cap")) and pc["slowdown"] and pc["prefill_share"] is not None
          else []),
        ("cost", f"${s['cost_usd']:,.2f} for {s['gpu_hours']:,.2f} GPU-hours at "
                 f"${s['cost_per_hour_usd']:.2f}/h; "
                 + ("-" if cpm is None else f"${cpm:.3f} per 1M output tokens")),
        ("simulated span", f"{s['duration_s']:,.1f} s"),
        *([("error vs vLLM", error_line(me))]
          if (me := s.get("measured_error")) else []),
        *([("host CPU", c["provenance"]["host_speed"])] if "host_speed" in c["provenance"]
          else []),
        *([("speculative", (lambda sp: f"{sp['method']} k={sp['num_speculative_tokens']}, mean "
                                       f"accepted length {sp['mean_accepted_length']:.2f}; TPOT "
                                       f"p50 x{sp['speedup_tpot_s_p50']:.2f}, E2E p50 "
                                       f"x{sp['speedup_e2e_s_p50']:.2f} vs no speculation")
           (s["speculative"]))] if s.get("speculative") else []),
    ):
        facts.add_row(k, v)
    return Group(lat, facts)


def explain_table(dep, rows: list[OpCost], n_dec: int, ctx: int, chunks) -> Table:
    g, cal = dep.gpu, dep.calibration
    total = sum(r.time_s for r in rows)
    batch = []
    if n_dec:
        batch.append(f"{n_dec} decode @ {ctx} ctx")
    batch += [f"prefill {n}" + (f" after {p}" if p else "") for n, p in chunks]
    t = Table(title=(
        f"{dep.model.name} on {g.display_name}, TP{dep.tp}, {dep.precision.label}; "
        f"step: {', '.join(batch)}\npeak {g.dense_tflops[dep.precision.gemm_dtype]:,.0f} "
        f"TFLOPS ({dep.precision.gemm_dtype}), {g.memory_bandwidth_gbs:,.0f} GB/s; "
        f"efficiencies from {cal.name}{'' if cal.calibrated else ' (uncalibrated)'}"),
        title_justify="left")
    for col in ("operator", "layers", "GFLOP", "HBM MB", "net MB", "FLOP/B", "bound",
                "time us", "share"):
        t.add_column(col, justify="left" if col in ("operator", "bound") else "right")
    for r in rows:
        t.add_row(r.name, str(r.count), f"{r.flops / 1e9:,.2f}", f"{r.hbm_bytes / 1e6:,.2f}",
                  f"{r.wire_bytes / 1e6:,.2f}", "-" if not r.hbm_bytes else f"{r.intensity:,.1f}",
                  r.bound, f"{r.time_s * 1e6:,.1f}", f"{r.time_s / total:.1%}")
    t.add_section()
    t.add_row("step total", "", f"{sum(r.flops for r in rows) / 1e9:,.2f}",
              f"{sum(r.hbm_bytes for r in rows) / 1e6:,.2f}", "", "", "",
              f"{total * 1e6:,.1f}", "100%")
    o, rf = cal.overhead, dep.roofline
    floor = (f"launched in {rf.layers} layers x {o.eager_layer_s * 1e3:.2f} ms"
             + (f" + {rf.moe_layers} MoE layers x {o.eager_moe_layer_s * 1e3:.2f} ms"
                if rf.moe_layers else "") + " by the engine thread")
    graphs = ("no CUDA graphs (--enforce-eager): every step runs eagerly, " + floor
              if rf.graph_max_tokens == 0 else
              f"CUDA graphs up to {rf.graph_max_tokens:,.0f} tokens; larger steps run eagerly, "
              + floor)
    mode = ("overlaps the GPU (async scheduling): a step's tokens go out once the next step is "
            "launched" if rf.async_sched else "sits between steps (no async scheduling)")
    t.caption = (f"{graphs}. The engine thread (prepare {o.cpu_step_s * 1e3:.2f} ms + "
                 f"{o.cpu_seq_s * 1e6:.0f} us/seq, harvest {o.output_s * 1e3:.2f} ms + "
                 f"{o.output_seq_s * 1e6:.0f} us/seq; {o.prefill_harvest_s * 1e3:.2f} ms more for "
                 f"a prefill batch it waited for, {o.drain_s * 1e3:.2f} ms for the last batch "
                 f"before idling) {mode}. Every request also waits "
                 f"{o.request_latency_s * 1e3:.1f} ms outside the engine loop.")
    t.caption_justify = "left"
    return t


def calibration_cell(gpu) -> str:
    """Where a GPU's efficiencies come from: its own measured profile (and how many measured
    runs its error table holds), one transferred from the nearest measured GPU, or the
    datasheet defaults, with the band the summary would state for them."""
    from simulator.accuracy import table_runs
    from simulator.cost.calibration import select_profile
    from simulator.deployment import nearest_measured

    cal = select_profile(gpu.name, None, nearest_measured(gpu))
    if cal.calibrated:
        n = table_runs(cal)
        return f"measured: {cal.name}" + ("" if n is None else f", {n} runs in its error table")
    if cal.transferred_from:
        return f"from {cal.transferred_from}, +-{cal.error_band:.0%}"
    return f"datasheet defaults, +-{cal.error_band:.0%}"


def gpu_table() -> Table:
    from simulator.gpu import catalog

    t = Table(title="GPU profiles (dense peak; profiles/hardware)")
    for col in ("name", "aliases", "memory GB", "GB/s", "bf16 TF", "fp8 TF", "link GB/s",
                "$/h", "MIG slices", "calibration"):
        t.add_column(col)
    for g in catalog().values():
        link, kind = g.interconnect_gbs()
        t.add_row(g.name, ", ".join(g.aliases), f"{g.memory_gb:g}", f"{g.memory_bandwidth_gbs:g}",
                  f"{g.dense_tflops['bf16']:g}", f"{g.dense_tflops.get('fp8', 0):g}" if
                  "fp8" in g.dense_tflops else "-", f"{link:g} {kind}",
                  f"{g.cost_per_gpu_hour_usd:.2f}", ", ".join(g.mig) or "-", calibration_cell(g))
    return t


def model_table() -> Table:
    from simulator.model import load_model, shipped_models

    t = Table(title="Shipped model configs (profiles/models)")
    for col in ("name", "source", "params B", "active B", "layers", "heads/kv", "experts"):
        t.add_column(col)
    for name in shipped_models():
        m = load_model(name)
        moe = next((g.moe for g in m.groups if g.moe), None)
        t.add_row(name, m.source, f"{m.total_params() / 1e9:.1f}",
                  f"{m.active_params() / 1e9:.1f}", str(m.num_layers),
                  f"{m.num_heads}/{m.num_kv_heads}",
                  f"{moe.num_experts} top-{moe.top_k}" if moe else "-")
    return t


def validation_table(results: list[dict]) -> Table:
    own = any("own_engine_thread" in r for r in results)
    t = Table(title="simulated vs measured vLLM: signed error (simulated / measured - 1)" + (
        "; * with the engine thread's costs measured from the run's own timeline (a diagnostic, "
        "not a prediction)" if own else ""), title_justify="left")
    t.add_column("run")
    cols = [("ttft_s", p) for p in ("p50", "p90", "p99")] + [("tpot_s", p) for p in
                                                             ("p50", "p90", "p99")]
    cols += [("e2e_s", "p50"), ("e2e_s", "p99")]
    for m, p in cols:
        t.add_column(f"{m[:-2].upper()} {p}", justify="right")
    t.add_column("req/s", justify="right")
    from simulator.validate import ELASTICITY  # here: validate pulls in the whole simulator

    extra = all("elasticity" in r for r in results)
    if extra:  # --sensitivity: % change per 1% slower GPU work
        for key in ELASTICITY:
            m, p = key.split(".")
            head = f"{m[:-2].upper()} {p} /1% GPU"
            t.add_column(head, justify="right", min_width=len(head))
    # The run's engine-thread time against the profile's (validate.measured_host_speed), and
    # the host speed it was simulated at where that is not the profile's own.
    t.add_column("host", justify="right")
    for r in results:
        e = r["error"]
        cells = [r["run"] + (" *" if r.get("own_engine_thread") else ""),
                 *(f"{e[f'{m}.{p}']:+.1%}" for m, p in cols),
                 f"{e['request_throughput']:+.1%}"]
        if extra:
            cells += [f"{r['elasticity'].get(key, 0.0):.1f}" for key in ELASTICITY]
        hs, sim = r.get("host_speed"), r.get("simulated_host_speed", 1.0)
        cells.append(("-" if hs is None else f"{hs:.2f}") + (f" (sim {sim:.2f})" if sim != 1.0
                                                             else ""))
        t.add_row(*cells)
    return t


def repeatability_table(groups: list, results: list[dict]) -> Table:
    """Per experiment measured on several hosts: each metric's floor (the least worst-case
    error one number can have against every host, :mod:`simulator.repeatability`) and the
    simulator's worst error over the same runs."""
    from simulator.repeatability import KEYS

    err = {r["run"]: r["error"] for r in results}
    t = Table(title="measured on several hosts: floor (least error any single number can have) "
                    "/ simulated worst |error|", title_justify="left")
    t.add_column("runs")
    t.add_column("hosts", justify="right")
    for k in KEYS:
        m, p = k.split(".")
        t.add_column(f"{m[:-2].upper()} {p}", justify="right")
    for g in groups:
        fl = g.floor
        t.add_row(f"{g.runs[0]} (+{len(g.runs) - 1})", str(g.hosts),
                  *(f"{fl[k]:.1%} / {max(abs(err[r][k]) for r in g.runs):.1%}" for k in KEYS))
    return t


def targets_line(results: list[dict], groups: list) -> str:
    """How many runs meet the accuracy targets, and how many of the misses no profile could
    avoid because the same experiment's runs differ by more (:mod:`simulator.repeatability`)."""
    from simulator.repeatability import beyond_floor

    missed = {r["run"]: misses(r["error"]) for r in results}
    p50 = sum(not any(k.endswith("p50") for k in m) for m in missed.values())
    pairs = [(run, k) for run, m in missed.items() for k in m]
    floor = beyond_floor(groups, TARGETS) & set(pairs)
    return (f"targets (TTFT/TPOT p50 within 10%, p90/p99 within 20%): all met on "
            f"{sum(not m for m in missed.values())} of {len(results)} runs, the p50 ones on {p50}; "
            f"{len(pairs)} miss{'es' if len(pairs) != 1 else ''}, {len(floor)} of them where the "
            "same experiment's own runs differ by more than the target allows (floor above it)")


def step_error_table(rows: list[dict], runs: int) -> Table:
    """``simulate validate --steps``: the median device-time error of the runs' steps pooled, by
    step class (rows) and sequences per step (columns), each with its step count."""
    from simulator.step_errors import bin_order

    bins = sorted({r["seqs"] for r in rows}, key=bin_order)
    t = Table(title=f"steps of {runs} run{'s' if runs != 1 else ''}: median device-time error "
                    "(simulated / measured - 1) and steps, by step and sequences in it",
              title_justify="left")
    t.add_column("step")
    for b in bins:
        t.add_column(b, justify="right")
    cell = {(r["step"], r["seqs"]): r for r in rows}
    for cls in sorted({r["step"] for r in rows}):
        t.add_row(cls, *(f"{cell[cls, b]['median']:+.1%} ({cell[cls, b]['steps']})"
                         if (cls, b) in cell else "" for b in bins))
    return t
