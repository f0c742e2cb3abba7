"""What a report draws, reduced to a few thousand numbers per run.

A run (simulated or measured) becomes a :class:`RunData`: its summary plus downsampled series
(CDF points, windowed percentiles, throughput and per-replica state over time). The reduction is
O(requests) once; the figures and the HTML never touch per-request data, so a report of a
million-request run stays a few MB and a sweep's workers can send theirs back cheaply.

Sources: a :class:`~simulator.run.SimulationResult` in memory, a ``simulate`` output folder
(``summary.json``, ``requests.csv``, ``timeseries.csv``), a profiler run folder (``meta.json``,
``requests.jsonl``), or a ``vllm bench serve --save-result --save-detailed`` JSON.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.metrics import distribution

# CDF sample levels: every 0.5%, then the tail every 0.1%.
CDF_LEVELS = [i / 200 for i in range(199)] + [0.99 + i / 1000 for i in range(11)]
WINDOW_PCTS = (50, 90, 99)


@dataclass
class RunData:
    label: str
    kind: str  # "simulated" or "measured"
    summary: dict
    cdf: dict[str, list[float]] = field(default_factory=dict)  # metric -> values at CDF_LEVELS
    windows: dict = field(default_factory=dict)  # t, and metric -> pNN -> list over windows
    throughput: dict = field(default_factory=dict)  # t, output_tok_s, completed_req_s
    replicas: dict[int, dict[str, list]] = field(default_factory=dict)  # replica -> series


# (arrival, first token, finish, output tokens) of each completed request
Row = tuple[float, float, float, int]


def _tpot(r: Row) -> float | None:
    return (r[2] - r[1]) / (r[3] - 1) if r[3] > 1 else None


def reduce_rows(rows: list[Row], start: float, end: float) -> tuple[dict, dict, dict]:
    """CDFs, percentiles per arrival window and throughput over time, from completed requests
    (in arrival order). Vectorised: a million requests reduce in about a second."""
    a = np.array(rows, dtype=float).reshape(-1, 4)
    arrival, first, fin, n = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
    multi = n > 1
    ttft, e2e = first - arrival, fin - arrival
    tpot = (fin - first)[multi] / (n[multi] - 1)
    levels = np.array(CDF_LEVELS) * 100
    cdf = {k: (np.percentile(v, levels).tolist() if v.size else [])
           for k, v in (("ttft_s", ttft), ("tpot_s", tpot), ("e2e_s", e2e))}
    span = max(end - start, 1e-9)
    # Windows by arrival time: enough requests per window for a p99 to mean something.
    nwin = max(5, min(120, len(rows) // 100))
    width = span / nwin
    win = np.minimum(((arrival - start) / width).astype(int), nwin - 1)
    windows: dict = {"t": [start + (i + 0.5) * width for i in range(nwin)]}
    for k, vals, w in (("ttft_s", ttft, win), ("tpot_s", tpot, win[multi])):
        per: dict[str, list[float | None]] = {f"p{p}": [] for p in WINDOW_PCTS}
        order = np.argsort(w, kind="stable")
        bounds = np.searchsorted(w[order], np.arange(nwin + 1))
        for i in range(nwin):
            chunk = vals[order[bounds[i]:bounds[i + 1]]]
            qs = np.percentile(chunk, WINDOW_PCTS).tolist() if chunk.size else [None] * 3
            for p, q in zip(WINDOW_PCTS, qs, strict=True):
                per[f"p{p}"].append(q)
        windows[k] = per
    return cdf, windows, _throughput(first, fin, n, start, span)


def _throughput(first: np.ndarray, fin: np.ndarray, n: np.ndarray, start: float,
                span: float, nb: int = 200) -> dict:
    """Output tokens/s and completions/s per time bin. A request's first token lands at its
    first-token time; the other n-1 are spread evenly up to its finish (a decode rate), so
    tokens in a bin are the integral of a sum of boxcars, evaluated at the bin edges from
    prefix sums over the sorted start and end times."""
    w = span / nb
    edges = start + w * np.arange(nb + 1)
    edges[-1] = np.inf  # the last bin takes everything up to the end

    def points(t: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        idx = np.clip(((t - start) / w).astype(int), 0, nb - 1)
        return np.bincount(idx, weights=weight, minlength=nb)

    tok = points(first).astype(float)
    spread = (n > 1) & (fin > first)
    tok += points(fin[(n > 1) & ~spread], n[(n > 1) & ~spread] - 1)
    rate = (n[spread] - 1) / (fin[spread] - first[spread])

    def integral(times: np.ndarray) -> np.ndarray:
        """sum over requests of rate x (edge - time)+ at every edge."""
        o = np.argsort(times)
        ts, rs = times[o], rate[o]
        r_cum = np.concatenate(([0.0], np.cumsum(rs)))
        rt_cum = np.concatenate(([0.0], np.cumsum(rs * ts)))
        k = np.searchsorted(ts, edges[:-1], side="left")
        return edges[:-1] * r_cum[k] - rt_cum[k]

    cum = integral(first[spread]) - integral(fin[spread])  # tokens emitted before each edge
    total = float(np.sum(n[spread] - 1))
    tok += np.diff(np.append(cum, total))
    done = points(fin)
    return {"t": (edges[:-1] + w / 2).tolist(), "output_tok_s": (tok / w).tolist(),
            "completed_req_s": (done / w).tolist()}


def _replica_series(samples) -> dict[int, dict[str, list]]:
    out: dict[int, dict[str, list]] = {}
    for t, rep, q, run, kv, pre in samples:
        s = out.setdefault(int(rep), {"t": [], "queue": [], "running": [], "kv": [],
                                      "preemptions": []})
        s["t"].append(float(t))
        s["queue"].append(int(q))
        s["running"].append(int(run))
        s["kv"].append(float(kv))
        s["preemptions"].append(int(pre))
    return out


def _build(label: str, kind: str, summary: dict, rows: list[Row], start: float,
           samples=()) -> RunData:
    end = max((r[2] for r in rows), default=start)
    cdf, windows, tput = reduce_rows(rows, start, end)
    return RunData(label, kind, summary, cdf, windows, tput, _replica_series(samples))


def from_result(res, label: str) -> RunData:
    """From a SimulationResult in memory (what ``simulate`` writes as report.html)."""
    rows = [(r.arrival, r.first_token_t, r.finish_t, r.output_tokens)
            for r in res.requests if r.finish_t is not None]
    return _build(label, "simulated", res.summary, rows, res.requests[0].arrival,
                  res.timeseries)


def _float(text: str) -> float | None:
    return float(text) if text else None


def from_sim_dir(path: Path, label: str | None = None) -> RunData:
    try:
        summary = json.loads((path / "summary.json").read_text())
        with open(path / "requests.csv", newline="") as f:
            reqs = list(csv.DictReader(f))
        with open(path / "timeseries.csv", newline="") as f:
            ts = [(float(r["time_s"]), int(r["replica"]), int(r["queue_length"]),
                   int(r["running"]), float(r["kv_cache_utilization"]),
                   int(r.get("preemptions") or 0)) for r in csv.DictReader(f)]
        rows = [(float(r["arrival_s"]), float(r["first_token_s"]), float(r["finish_s"]),
                 int(r["output_tokens"])) for r in reqs if r["finish_s"]]
        start = min(float(r["arrival_s"]) for r in reqs)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"not a readable simulate output folder ({e})", file=str(path)) from None
    return _build(label or path.name, "simulated", summary, rows, start, ts)


def _measured_summary(rows: list[Row], arrivals: list[float], failed: int, input_tokens: int,
                      extra: dict) -> dict:
    start = min(arrivals)
    end = max((r[2] for r in rows), default=start)
    dur = max(end - start, 1e-9)
    out_tok = sum(r[3] for r in rows)
    return {
        "ttft_s": distribution([r[1] - r[0] for r in rows]),
        "tpot_s": distribution([t for r in rows if (t := _tpot(r)) is not None]),
        "e2e_s": distribution([r[2] - r[0] for r in rows]),
        "completed": len(rows), "rejected": failed, "duration_s": dur,
        "request_throughput": len(rows) / dur, "output_throughput": out_tok / dur,
        "total_token_throughput": (out_tok + input_tokens) / dur, **extra,
    }


def profiler_summary(recs: list[dict], extra: dict | None = None) -> tuple[dict, list[Row]]:
    """Measured metrics of a profiler run's requests.jsonl records, and its completed rows."""
    rows = [(r["arrival_s"], r["first_token_s"], r["finish_s"], r["output_tokens"])
            for r in recs if r.get("finish_s") is not None]
    return _measured_summary(rows, [r["arrival_s"] for r in recs], len(recs) - len(rows),
                             sum(r["input_tokens"] for r in recs), extra or {}), rows


def from_profiler_dir(path: Path, label: str | None = None) -> RunData:
    """A run measured by ``simulator.profiler`` (meta.json + requests.jsonl)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        recs = [json.loads(x) for x in (path / "requests.jsonl").read_text().splitlines() if x]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder ({e})", file=str(path)) from None
    summary, rows = profiler_summary(recs, {"config": {
        "gpu": meta.get("gpu"), "model": meta.get("model"),
        "engine_args": meta.get("engine_args", {}), "vllm": meta.get("vllm")}})
    return _build(label or f"measured {path.parent.name}/{path.name}", "measured", summary,
                  rows, min(r["arrival_s"] for r in recs))


def read_bench_json(path: Path) -> dict:
    """A ``vllm bench serve --save-result --save-detailed`` result, checked for what we use."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable JSON file ({e})", file=str(path)) from None
    if not isinstance(doc, dict):
        raise InputError("expected a vllm bench serve result object", file=str(path))
    need = ("start_times", "ttfts", "itls", "input_lens", "output_lens")
    for k in need:
        if not isinstance(doc.get(k), list):
            raise InputError("missing per-request list (save with --save-detailed)",
                             file=str(path), field=k)
    n = len(doc["start_times"])
    for k in need:
        if len(doc[k]) != n:
            raise InputError(f"has {len(doc[k])} entries, start_times has {n}", file=str(path),
                             field=k)
    return doc


def bench_rows(doc: dict, path: Path) -> tuple[list[Row], list[float], int]:
    """Completed requests of a bench result, arrivals from its first request; failed count."""
    t0 = min(doc["start_times"]) if doc["start_times"] else 0.0
    errors = doc.get("errors") or [""] * len(doc["start_times"])
    rows: list[Row] = []
    arrivals = []
    for i, (st, ttft, itl, n) in enumerate(zip(doc["start_times"], doc["ttfts"], doc["itls"],
                                               doc["output_lens"], strict=True)):
        for name, v in (("start_times", st), ("ttfts", ttft)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise InputError(f"entry {i} is not a finite number: {v!r}", file=str(path),
                                 field=name)
        a = st - t0
        arrivals.append(a)
        if errors[i] or not isinstance(n, int) or n < 1 or ttft <= 0:
            continue
        rows.append((a, a + ttft, a + ttft + sum(itl or []), n))
    return rows, arrivals, len(arrivals) - len(rows)


def from_bench_json(path: Path, label: str | None = None) -> RunData:
    doc = read_bench_json(path)
    rows, arrivals, failed = bench_rows(doc, path)
    if not rows:
        raise InputError("no successful request in the result", file=str(path))
    summary = _measured_summary(rows, arrivals, failed, sum(doc["input_lens"]),
                                {"config": {"model": doc.get("model_id"),
                                            "request_rate": doc.get("request_rate")}})
    return _build(label or f"measured {path.stem}", "measured", summary, rows, 0.0)


def load_run_data(path: Path, label: str | None = None) -> RunData:
    """Any run the ``report`` command accepts, recognised by what it holds."""
    if path.is_file():
        return from_bench_json(path, label)
    if (path / "summary.json").is_file():
        return from_sim_dir(path, label)
    if (path / "meta.json").is_file():
        return from_profiler_dir(path, label)
    if not path.exists():
        raise InputError("no such run folder or file", file=str(path))
    raise InputError("not a run: expected a simulate output folder (summary.json), a measured "
                     "run folder (meta.json) or a vllm bench serve JSON", file=str(path))
