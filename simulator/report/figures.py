"""Plotly figures over one or more runs: one colour per run, one legend entry per run (clicking
it toggles all of that run's series), hover values on every point."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from simulator.report.data import CDF_LEVELS, RunData

COLORS = qualitative.Plotly + qualitative.D3
DASH = {"p50": "solid", "p90": "dash", "p99": "dot"}
LAT_LABELS = {"ttft_s": "TTFT", "tpot_s": "TPOT", "e2e_s": "E2E latency"}


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", hovermode="closest",
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 60, "b": 40})
    return fig


def latency_cdfs(runs: list[RunData], slo: dict | None = None) -> go.Figure:
    keys = list(LAT_LABELS)
    fig = make_subplots(rows=1, cols=3, subplot_titles=[LAT_LABELS[k] + " CDF" for k in keys])
    for i, run in enumerate(runs):
        for j, k in enumerate(keys):
            xs = run.cdf.get(k) or []
            if not xs:
                continue
            fig.add_trace(go.Scatter(
                x=[x * 1e3 for x in xs], y=CDF_LEVELS[:len(xs)], mode="lines", name=run.label,
                legendgroup=run.label, showlegend=j == 0, line={"color": color(i)},
                hovertemplate=f"{LAT_LABELS[k]} %{{x:.1f}} ms<br>CDF %{{y:.3f}}<extra>"
                              f"{run.label}</extra>"), row=1, col=j + 1)
    for j, k in enumerate(keys):
        limit = (slo or {}).get(k.split("_")[0])
        if limit:  # a trace, not a shape: shapes on log axes take log10 coordinates
            fig.add_trace(go.Scatter(x=[limit * 1e3] * 2, y=[0, 1], mode="lines", name="SLO",
                                     showlegend=False, line={"color": "red", "dash": "dash"},
                                     hovertemplate="SLO %{x:.0f} ms<extra></extra>"),
                          row=1, col=j + 1)
        fig.update_xaxes(type="log", title_text="ms", row=1, col=j + 1)
    fig.update_yaxes(range=[0, 1.01], title_text="fraction of requests", row=1, col=1)
    return _layout(fig, "Latency distributions")


def percentiles_over_time(runs: list[RunData]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT by arrival time",
                                                        "TPOT by arrival time"])
    for i, run in enumerate(runs):
        w = run.windows
        if not w:
            continue
        first = True
        for j, k in enumerate(("ttft_s", "tpot_s")):
            for p, vals in w[k].items():
                fig.add_trace(go.Scatter(
                    x=w["t"], y=[None if v is None else v * 1e3 for v in vals],
                    mode="lines+markers" if len(w["t"]) <= 30 else "lines",
                    name=run.label, legendgroup=run.label, showlegend=first,
                    line={"color": color(i), "dash": DASH[p]}, connectgaps=False,
                    hovertemplate=f"{p} %{{y:.1f}} ms at %{{x:.0f}} s<extra>{run.label}</extra>"),
                    row=1, col=j + 1)
                first = False
    fig.update_xaxes(title_text="arrival time (s)")
    fig.update_yaxes(type="log", title_text="ms (solid p50, dashed p90, dotted p99)", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    return _layout(fig, "Latency percentiles over time")


def _sum_series(run: RunData, key: str, mean: bool = False) -> tuple[list, list]:
    """One series over replicas (they share sample times when sampled by the same run)."""
    reps = list(run.replicas.values())
    n = min(len(s["t"]) for s in reps)
    ys = [sum(s[key][i] for s in reps) for i in range(n)]
    if mean:
        ys = [y / len(reps) for y in ys]
    return reps[0]["t"][:n], ys


def load_over_time(runs: list[RunData]) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["Throughput", "Queue length (all replicas)"])
    for i, run in enumerate(runs):
        tp = run.throughput
        fig.add_trace(go.Scatter(x=tp["t"], y=tp["output_tok_s"], mode="lines", name=run.label,
                                 legendgroup=run.label, line={"color": color(i)},
                                 hovertemplate="%{y:,.0f} output tok/s at %{x:.0f} s<extra>"
                                               f"{run.label}</extra>"), row=1, col=1)
        if run.replicas:
            t, q = _sum_series(run, "queue")
            fig.add_trace(go.Scatter(x=t, y=q, mode="lines", name=run.label, showlegend=False,
                                     legendgroup=run.label, line={"color": color(i),
                                                                  "shape": "hv"},
                                     hovertemplate="%{y} queued at %{x:.0f} s<extra>"
                                                   f"{run.label}</extra>"), row=2, col=1)
    fig.update_yaxes(title_text="output tokens/s", row=1, col=1)
    fig.update_yaxes(title_text="requests waiting", row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    return _layout(fig, "Load over time", 560)


def replica_state(runs: list[RunData]) -> go.Figure | None:
    """Batch size, KV-cache utilisation and preemptions per replica (or per run when many)."""
    sims = [(i, r) for i, r in enumerate(runs) if r.replicas]
    if not sims:
        return None
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=["Running batch size", "KV-cache utilisation",
                                        "Preemptions so far"])
    per_replica = sum(len(r.replicas) for _, r in sims) <= 16
    for i, run in sims:
        groups = (
            [(f"{run.label} r{k}", s["t"], s["running"], s["kv"], s["preemptions"])
             for k, s in sorted(run.replicas.items())] if per_replica else
            [(run.label, _sum_series(run, "running")[0], _sum_series(run, "running")[1],
              _sum_series(run, "kv", mean=True)[1], _sum_series(run, "preemptions")[1])])
        for g, (name, t, running, kv, pre) in enumerate(groups):
            style = {"color": color(i), "shape": "hv",
                     "dash": ["solid", "dot", "dash", "longdash", "dashdot"][g % 5]}
            for row, ys, fmt in ((1, running, "%{y} running"),
                                 (2, [x * 100 for x in kv], "%{y:.1f}% KV"),
                                 (3, pre, "%{y} preemptions")):
                fig.add_trace(go.Scatter(x=t, y=ys, mode="lines", name=name, legendgroup=name,
                                         showlegend=row == 1, line=style,
                                         hovertemplate=f"{fmt} at %{{x:.0f}} s<extra>{name}"
                                                       "</extra>"), row=row, col=1)
    fig.update_yaxes(title_text="sequences", row=1, col=1)
    fig.update_yaxes(title_text="% of blocks", row=2, col=1)
    fig.update_yaxes(title_text="count", row=3, col=1)
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    return _layout(fig, "Replica state", 700)


def cost_bars(runs: list[RunData]) -> go.Figure | None:
    sims = [(i, r) for i, r in enumerate(runs) if "cost_per_hour_usd" in r.summary]
    if not sims:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["$ per hour", "$ per 1M output tokens"])
    for i, run in sims:
        s = run.summary
        for col, v, fmt in ((1, s["cost_per_hour_usd"], "$%{y:.2f}/h"),
                            (2, s["cost_per_million_output_tokens"], "$%{y:.3f} per 1M tokens")):
            fig.add_trace(go.Bar(x=[run.label], y=[v], name=run.label, legendgroup=run.label,
                                 showlegend=col == 1, marker={"color": color(i)},
                                 hovertemplate=fmt + "<extra></extra>"), row=1, col=col)
    return _layout(fig, "Cost")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (x) and latency (y), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def cost_vs_latency(rows: list[dict], slo: dict | None = None) -> go.Figure:
    """Each deployment's $/hour against its p90 TTFT and p90 TPOT, the Pareto front joined.
    ``rows`` carry label, cost_per_hour_usd, ttft_s.p90, tpot_s.p90 and meets (bool or None)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["cost vs p90 TTFT", "cost vs p90 TPOT"])
    for col, key in ((1, "ttft_s.p90"), (2, "tpot_s.p90")):
        pts = [r for r in rows if r.get(key) is not None and r.get("cost_per_hour_usd")]
        symbols = ["circle" if r.get("meets") in (True, None) else "x" for r in pts]
        fig.add_trace(go.Scatter(
            x=[r["cost_per_hour_usd"] for r in pts], y=[r[key] * 1e3 for r in pts],
            mode="markers", text=[r["label"] for r in pts], name="deployments",
            showlegend=col == 1, marker={"symbol": symbols, "size": 9,
                                         "color": [color(i) for i in range(len(pts))]},
            hovertemplate="%{text}<br>$%{x:.2f}/h<br>" + key.split("_")[0].upper()
                          + " p90 %{y:.1f} ms<extra></extra>"), row=1, col=col)
        front = [pts[i] for i in pareto_front([(r["cost_per_hour_usd"], r[key]) for r in pts])]
        fig.add_trace(go.Scatter(
            x=[r["cost_per_hour_usd"] for r in front], y=[r[key] * 1e3 for r in front],
            mode="lines", line={"shape": "hv", "color": "#444", "dash": "dot"},
            name="Pareto front", showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        limit = (slo or {}).get(key.split("_")[0])
        if limit and pts:
            xs = [r["cost_per_hour_usd"] for r in pts]
            fig.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[limit * 1e3] * 2, mode="lines",
                                     name="SLO", showlegend=False,
                                     line={"color": "red", "dash": "dash"}), row=1, col=col)
        fig.update_xaxes(title_text="$ per hour", row=1, col=col)
        fig.update_yaxes(type="log", title_text="ms", row=1, col=col)
    return _layout(fig, "Cost against latency (x: misses the SLOs)", 420)
