"""Report writers: what a run leaves in its output directory.

Writers register by name. ``write_outputs`` writes every file into a staging directory first and
moves them into place only when all succeeded, so a failed run never leaves partial output.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from simulator.errors import InputError
from simulator.registry import Registry
from simulator.run import SimulationResult

Writer = Callable[[SimulationResult, Path], None]
WRITERS: Registry[Writer] = Registry("report writer")


def _clean(x):
    """JSON has no NaN/inf: write null instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


@WRITERS.register("summary.json")
def write_summary(res: SimulationResult, path: Path) -> None:
    path.write_text(json.dumps(_clean(res.summary), indent=2) + "\n")


REQUEST_COLUMNS = (
    "request_id", "trace_line", "arrival_s", "first_token_s", "finish_s", "input_tokens",
    "output_tokens", "ttft_s", "tpot_s", "e2e_s", "replica", "preemptions", "rejected_reason",
)


def _q(text: str) -> str:
    """CSV-quote a free-text field only when it needs it (ids and reasons rarely do)."""
    if "," in text or '"' in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


@WRITERS.register("requests.csv")
def write_requests(res: SimulationResult, path: Path) -> None:
    # One f-string per row: twice as fast as csv.writer on a million rows.
    with open(path, "w", newline="") as f:
        f.write(",".join(REQUEST_COLUMNS) + "\n")
        rows = []
        for r in res.requests:
            a, ft, fin = r.arrival, r.first_token_t, r.finish_t
            if fin is None:
                rows.append(f"{_q(r.rid)},{r.line},{a:.6f},,,{r.input_tokens},{r.output_tokens},"
                            f",,,,{r.preemptions},{_q(r.rejected or '')}\n")
                continue
            tpot = r.tpot
            tpot = "" if tpot is None else f"{tpot:.6f}"
            rows.append(f"{_q(r.rid)},{r.line},{a:.6f},{ft:.6f},{fin:.6f},{r.input_tokens},"
                        f"{r.output_tokens},{ft - a:.6f},{tpot},{fin - a:.6f},{r.replica},"
                        f"{r.preemptions},\n")
            if len(rows) >= 50_000:
                f.writelines(rows)
                rows.clear()
        f.writelines(rows)


TIMESERIES_COLUMNS = ("time_s", "replica", "queue_length", "running", "kv_cache_utilization",
                      "preemptions")


@WRITERS.register("timeseries.csv")
def write_timeseries(res: SimulationResult, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TIMESERIES_COLUMNS)
        w.writerows((f"{t:.6f}", i, q, run, f"{kv:.6f}", pre)
                    for t, i, q, run, kv, pre in res.timeseries)


def run_label(summary: dict) -> str:
    c = summary["config"]
    return (f"{c['num_gpus']}x {c['gpu']} {c['model']} TP{c['tensor_parallel_size']}"
            f"x{c['data_parallel_replicas']}")


@WRITERS.register("report.html")
def write_report(res: SimulationResult, path: Path) -> None:
    from simulator.report.data import from_result
    from simulator.report.html import render

    label = run_label(res.summary)
    path.write_text(render([from_result(res, label)], f"Simulated vLLM run: {label}"),
                    encoding="utf-8")


def write_outputs(res: SimulationResult, out_dir: Path) -> list[Path]:
    """Write every registered report into ``out_dir``, all or nothing."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory: {e.strerror}", file=str(out_dir),
                         field="output-dir") from None
    if not out_dir.is_dir():
        raise InputError("is not a directory", file=str(out_dir), field="output-dir")
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        for name in WRITERS.names():
            WRITERS.get(name)(res, stage / name)
        written = []
        for name in WRITERS.names():
            dest = out_dir / name
            (stage / name).replace(dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)
