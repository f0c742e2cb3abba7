"""``simulate trace stats``: what a workload looks like, in one streaming pass.

Holds three numeric arrays (arrival, input and output length; 20 bytes a request) for the
percentiles and charts; everything else is running sums. Burstiness is the coefficient of
variation (CV) of inter-arrival gaps (1 for Poisson, > 1 bursty) and the peak-to-mean ratio of
the per-bin request rate. Prefix reuse is the share of ``hash_ids`` blocks seen before in the
trace: the prefix-cache hit rate of an unbounded cache (an upper bound for a real one).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

from simulator.metrics import percentile
from simulator.request import Request

PCTS = (50, 90, 99)


def trace_stats(reqs: Iterable[Request], bins: int = 200) -> dict:
    arrivals, ins, outs = array("d"), array("l"), array("l")
    seen: set[int] = set()
    blocks = reused = 0
    sessions: set[str] = set()
    with_hashes = 0
    for r in reqs:
        arrivals.append(r.arrival)
        ins.append(r.input_tokens)
        outs.append(r.output_tokens)
        if r.session_id is not None:
            sessions.add(r.session_id)
        if r.hash_ids:
            with_hashes += 1
            for h in r.hash_ids:
                blocks += 1
                if h in seen:
                    reused += 1
                else:
                    seen.add(h)
    n = len(arrivals)
    t0, t1 = arrivals[0], arrivals[-1]
    span = max(t1 - t0, 1e-9)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    mean_gap = sum(gaps) / len(gaps) if gaps else math.nan
    cv = (math.sqrt(sum((g - mean_gap) ** 2 for g in gaps) / len(gaps)) / mean_gap
          if gaps and mean_gap > 0 else math.nan)
    width = span / bins
    per_bin = [0] * bins
    tok_in = [0] * bins
    tok_out = [0] * bins
    for t, i, o in zip(arrivals, ins, outs, strict=True):
        b = min(int((t - t0) / width), bins - 1)
        per_bin[b] += 1
        tok_in[b] += i
        tok_out[b] += o
    rate = n / span

    def dist(vals: array) -> dict:
        s = sorted(vals)
        return {"mean": sum(s) / len(s), **{f"p{p}": percentile(s, p) for p in PCTS},
                "max": s[-1], "min": s[0]}

    return {
        "requests": n, "span_s": span, "request_rate": rate,
        "interarrival_cv": cv,
        "peak_to_mean_rate": max(per_bin) / width / rate if rate > 0 else math.nan,
        "input_tokens": dist(ins), "output_tokens": dist(outs),
        "input_tokens_per_s": sum(ins) / span, "output_tokens_per_s": sum(outs) / span,
        "total_tokens_per_s": (sum(ins) + sum(outs)) / span,
        "peak_total_tokens_per_s": max(a + b for a, b in zip(tok_in, tok_out, strict=True))
        / width,
        "sessions": len(sessions),
        "requests_with_hash_ids": with_hashes,
        "prefix_blocks": blocks, "prefix_block_reuse": reused / blocks if blocks else None,
        "series": {"t": [t0 + (k + 0.5) * width for k in range(bins)],
                   "rate": [c / width for c in per_bin],
                   "input_tokens_per_s": [x / width for x in tok_in],
                   "output_tokens_per_s": [x / width for x in tok_out]},
        "_lengths": (ins, outs, gaps),
    }


def stats_html(st: dict, title: str) -> str:
    """The stats page: the table, rate and token load over time, length and gap histograms."""
    import html as h

    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs
    from plotly.subplots import make_subplots

    from simulator.report.html import CSS

    ins, outs, gaps = st["_lengths"]
    s = st["series"]
    over = make_subplots(rows=2, cols=1, shared_xaxes=True,
                         subplot_titles=["requests/s", "tokens/s"])
    over.add_trace(go.Scatter(x=s["t"], y=s["rate"], name="requests/s", mode="lines"), 1, 1)
    over.add_trace(go.Scatter(x=s["t"], y=s["input_tokens_per_s"], name="input tokens/s",
                              mode="lines"), 2, 1)
    over.add_trace(go.Scatter(x=s["t"], y=s["output_tokens_per_s"], name="output tokens/s",
                              mode="lines"), 2, 1)
    over.update_xaxes(title_text="arrival time (s)", row=2, col=1)
    over.update_layout(title="Load over time", height=520, template="plotly_white")
    hist = make_subplots(rows=1, cols=3, subplot_titles=["input tokens", "output tokens",
                                                         "inter-arrival gap (s)"])
    step = max(1, len(ins) // 200_000)  # histograms of up to 200k points stay light
    hist.add_trace(go.Histogram(x=list(ins[::step]), name="input", nbinsx=80), 1, 1)
    hist.add_trace(go.Histogram(x=list(outs[::step]), name="output", nbinsx=80), 1, 2)
    hist.add_trace(go.Histogram(x=gaps[::step], name="gap", nbinsx=80), 1, 3)
    hist.update_layout(title="Distributions", height=380, template="plotly_white",
                       showlegend=False)
    rows = "".join(f"<tr><td class='k'>{h.escape(k)}</td><td data-key='{h.escape(k)}'>"
                   f"{h.escape(v)}</td></tr>" for k, v in stats_rows(st))
    figs = "".join(pio.to_html(f, include_plotlyjs=False, full_html=False, div_id=f"fig{i}",
                               config={"displaylogo": False}) for i, f in enumerate((over, hist)))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{h.escape(title)}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{h.escape(title)}</h1><table id='stats'>{rows}</table>{figs}</body></html>")


def stats_rows(st: dict) -> list[tuple[str, str]]:
    def d(x: dict) -> str:
        return (f"mean {x['mean']:,.0f}, p50 {x['p50']:,.0f}, p90 {x['p90']:,.0f}, "
                f"p99 {x['p99']:,.0f}, max {x['max']:,}")

    reuse = st["prefix_block_reuse"]
    return [
        ("requests", f"{st['requests']:,} over {st['span_s']:,.1f} s"),
        ("request rate", f"{st['request_rate']:.3f} req/s (peak bin {st['peak_to_mean_rate']:.2f}"
                         "x the mean)"),
        ("burstiness", f"inter-arrival CV {st['interarrival_cv']:.2f} (Poisson: 1)"),
        ("input tokens", d(st["input_tokens"])),
        ("output tokens", d(st["output_tokens"])),
        ("token load", f"{st['input_tokens_per_s']:,.0f} input + {st['output_tokens_per_s']:,.0f}"
                       f" output tok/s (total peak bin {st['peak_total_tokens_per_s']:,.0f})"),
        ("sessions", f"{st['sessions']:,}"),
        ("prefix reuse", "- (no hash_ids)" if reuse is None else
         f"{reuse:.1%} of {st['prefix_blocks']:,} hash blocks seen before "
         f"({st['requests_with_hash_ids']:,} requests carry hash_ids)"),
    ]
