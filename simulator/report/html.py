"""One self-contained HTML page per report: plotly.js inlined once (opens offline), headline
figures against the SLOs, the figures, the resolved config and, with a measured run, the error
table.

Every number in the tables carries ``data-run``/``data-key``/``data-value`` attributes holding the
exact value it shows, so tests (and scripts) can check the page against ``summary.json``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import plotly.io as pio
from plotly.offline import get_plotlyjs

from simulator.accuracy import error_line
from simulator.metrics import lookup
from simulator.report import figures
from simulator.report.data import RunData

# (dotted summary key, label, unit) in the headline table; unit picks the formatting.
HEADLINE = (
    ("ttft_s.p50", "TTFT p50", "ms"), ("ttft_s.p90", "TTFT p90", "ms"),
    ("ttft_s.p99", "TTFT p99", "ms"), ("tpot_s.p50", "TPOT p50", "ms"),
    ("tpot_s.p90", "TPOT p90", "ms"), ("tpot_s.p99", "TPOT p99", "ms"),
    ("itl_s.p50", "ITL p50", "ms"), ("itl_s.p99", "ITL p99", "ms"),
    ("e2e_s.p50", "E2E p50", "ms"), ("e2e_s.p99", "E2E p99", "ms"),
    ("request_throughput", "requests/s", "rate"), ("output_throughput", "output tokens/s", "int"),
    ("goodput", "goodput (req/s within SLOs)", "rate"), ("slo_attainment", "SLO attainment", "pct"),
    ("completed", "completed", "int"), ("rejected", "rejected", "int"),
    ("preemptions", "preemptions", "int"), ("mean_batch_size", "mean batch size", "rate"),
    ("kv_cache_utilization.mean", "KV-cache utilisation, mean", "pct"),
    ("kv_cache_utilization.peak", "KV-cache utilisation, peak", "pct"),
    ("cost_per_hour_usd", "cost, $/hour", "usd"),
    ("cost_per_million_output_tokens", "cost, $ per 1M output tokens", "usd3"),
    ("cost_usd", "cost of the run, $", "usd"),
)
SLO_OF = {"ttft_s": "ttft", "tpot_s": "tpot", "e2e_s": "e2e"}

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px}
.sub{color:#666;margin:2px 0} .warn{color:#a35a00}
table{border-collapse:collapse;font-size:0.9em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right} th{background:#f4f4f4}
td.k,th.k{text-align:left} td.ok{background:#e3f6e3} td.miss{background:#fbe0e0}
tr.diff td{background:#fff7d6} details{margin:8px 0}
"""


def fmt(v, unit: str) -> str:
    """How a value is shown; tests parse these back (ms x1e3, pct x100)."""
    if v is None:
        return "-"
    return {"ms": lambda: f"{v * 1e3:,.1f} ms", "rate": lambda: f"{v:,.2f}",
            "int": lambda: f"{v:,.0f}", "pct": lambda: f"{v * 100:.1f}%",
            "usd": lambda: f"${v:,.2f}", "usd3": lambda: f"${v:,.3f}",
            "signed": lambda: f"{v * 100:+.1f}%"}[unit]()


def _cell(run: int, key: str, v, unit: str, cls: str = "") -> str:
    attrs = f' data-run="{run}" data-key="{html.escape(key)}" data-value="{json.dumps(v)}"'
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}{attrs}>{html.escape(fmt(v, unit))}</td>"


def _slo_class(s: dict, key: str, v) -> str:
    limit = (s.get("slo") or {}).get(SLO_OF.get(key.split(".")[0], ""))
    if limit is None or v is None:
        return ""
    return "ok" if v <= limit else "miss"


def headline_table(runs: list[RunData]) -> str:
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in runs)
    rows = [f"<tr><th class='k'>metric</th>{head}</tr>"]
    for key, label, unit in HEADLINE:
        vals = [lookup(r.summary, key) for r in runs]
        if all(v is None for v in vals):
            continue
        cells = "".join(_cell(i, key, v, unit, _slo_class(r.summary, key, v))
                        for i, (r, v) in enumerate(zip(runs, vals, strict=True)))
        rows.append(f"<tr><td class='k'>{label}</td>{cells}</tr>")
    slos = []
    for i, r in enumerate(runs):
        s = {k: v for k, v in (r.summary.get("slo") or {}).items() if v is not None}
        if s:
            slos.append(f"{html.escape(r.label)}: " + ", ".join(
                f"{k.upper()} &le; {v * 1e3:g} ms" for k, v in s.items()) + f" (run {i})")
    note = ("<p class='sub'>SLOs: " + "; ".join(slos) + ". Green: the percentile meets the SLO; "
            "red: it misses.</p>") if slos else ""
    return f"<table id='headline'>{''.join(rows)}</table>{note}"


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_table(runs: list[RunData]) -> str:
    flat = [_flatten(r.summary.get("config") or {}) for r in runs]
    keys = sorted({k for f in flat for k in f})
    head = "".join(f"<th>{html.escape(r.label)}</th>" for r in runs)
    rows = [f"<tr><th class='k'>setting</th>{head}</tr>"]
    for k in keys:
        vals = [f.get(k) for f in flat]
        cls = " class='diff'" if len({json.dumps(v, sort_keys=True) for v in vals}) > 1 else ""
        cells = "".join(f"<td class='k'>{html.escape('' if v is None else str(v))}</td>"
                        for v in vals)
        rows.append(f"<tr{cls}><td class='k'>{html.escape(k)}</td>{cells}</tr>")
    return (f"<details open><summary>Resolved configuration ({len(keys)} settings; rows that "
            f"differ between runs are highlighted)</summary><table id='config'>{''.join(rows)}"
            "</table></details>")


ERROR_KEYS = tuple(f"{m}.{p}" for m in ("ttft_s", "tpot_s", "e2e_s") for p in ("p50", "p90", "p99")
                   ) + ("request_throughput", "output_throughput")


def error_rows(sim: RunData, meas: RunData) -> dict[str, float | None]:
    """Signed error (simulated / measured - 1) of each compared metric."""
    out = {}
    for k in ERROR_KEYS:
        s, m = lookup(sim.summary, k), lookup(meas.summary, k)
        out[k] = None if s is None or not m else s / m - 1
    return out


def error_table(pairs: list[tuple[int, int]], runs: list[RunData]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ERROR_KEYS)
    rows = [f"<tr><th class='k'>simulated vs measured</th>{head}</tr>"]
    for si, mi in pairs:
        errs = error_rows(runs[si], runs[mi])
        cells = "".join(_cell(si, f"error.{k}", v, "signed") for k, v in errs.items())
        rows.append(f"<tr><td class='k'>{html.escape(runs[si].label)} vs "
                    f"{html.escape(runs[mi].label)}</td>{cells}</tr>")
    return (f"<h2>Error against measurement</h2><table id='errors'>{''.join(rows)}</table>"
            "<p class='sub'>(simulated / measured - 1); negative: the simulator is faster than "
            "the real run.</p>")


def _status(r: RunData) -> str:
    s = r.summary
    if r.kind == "measured":
        return f"{html.escape(r.label)}: measured"
    cal = lookup(s, "config.calibration") or {}
    band = s.get("error_band")
    what = (f"calibrated ({cal.get('name')})" if s.get("calibrated") else
            "UNCALIBRATED (datasheet defaults or transferred efficiencies)")
    host = (lookup(s, "config.provenance") or {}).get("host_speed")  # --host-speed, when not 1
    return (f"{html.escape(r.label)}: {html.escape(what)}" +
            (f", stated error band &plusmn;{band:.0%}" if band is not None else "") +
            (f"; {html.escape(host)}" if host else "") +
            (f"; error against real vLLM: {html.escape(error_line(me))}"
             if (me := s.get("measured_error")) else ""))


def render(runs: list[RunData], title: str, pairs: list[tuple[int, int]] = (),
           extra_figures: list = (), extra_html: str = "") -> str:
    slo = next((r.summary.get("slo") for r in runs if r.summary.get("slo")), None)
    figs = [*extra_figures]
    if runs:
        figs = [figures.latency_cdfs(runs, slo), figures.percentiles_over_time(runs),
                figures.load_over_time(runs), figures.replica_state(runs),
                figures.cost_bars(runs), *figs]
    divs = []
    for n, fig in enumerate(f for f in figs if f is not None):
        divs.append(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig{n}",
                                config={"displaylogo": False, "responsive": True}))
    warnings = [w for r in runs for w in r.summary.get("warnings") or []]
    try:
        ver = version("llm-serving-simulator")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ver = "source"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='sub'>llm-serving-simulator {ver}, written "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        *(f"<p class='sub'>{_status(r)}</p>" for r in runs),
        *(f"<p class='warn'>warning: {html.escape(w)}</p>" for w in warnings),
        "<h2>Headline figures</h2>", headline_table(runs),
        error_table(list(pairs), runs) if pairs else "", extra_html,
        "<h2>Charts</h2><p class='sub'>Hover for values; click a legend entry to hide or show "
        "a run, double-click to isolate it.</p>", *divs,
        "<h2>Configuration</h2>", config_table(runs),
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style><script type='text/javascript'>{get_plotlyjs()}"
            f"</script></head><body>{''.join(parts)}</body></html>")


def write_html(text: str, path: Path) -> None:
    """Write whole or not at all: a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
