"""``simulate trace convert | synth | stats``: bring traces in, make them, look at them.

``convert`` streams (one request in memory at a time, except with ``--sort`` and for OTel
spans), so a 10M-request trace converts in bounded memory; the output is written to a
temporary file and renamed into place only when the whole trace was good.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from simulator.cli import _fail, _warn, app, err, out
from simulator.errors import InputError
from simulator.trace import FORMATS

trace_app = typer.Typer(help="Convert, transform, synthesise and profile request traces.",
                        no_args_is_help=True, add_completion=False, rich_markup_mode=None)
app.add_typer(trace_app, name="trace")

FMT_HELP = f"{' | '.join(FORMATS.names())}; default: by extension and content"


@trace_app.command("convert")
def convert(
    source: Annotated[Path, typer.Argument(help="input trace (any supported format)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="native JSONL to write")],
    trace_format: Annotated[str | None, typer.Option("--from", "--trace-format",
                                                     help=FMT_HELP)] = None,
    sort: Annotated[bool, typer.Option(help="sort out-of-order arrivals (with a warning) "
                                            "instead of refusing them; reads the whole trace")]
    = False,
    drop_failed: Annotated[bool, typer.Option(help="BurstGPT: drop (and count) failed rows "
                                                   "with 0 response tokens")] = False,
    start: Annotated[float | None, typer.Option(help="keep arrivals from this second on "
                                                     "(shifted to 0)")] = None,
    end: Annotated[float | None, typer.Option(help="keep arrivals before this second")] = None,
    rate_scale: Annotated[float, typer.Option(help="2 = twice the load (inter-arrival times "
                                                   "halved)", min=1e-9)] = 1.0,
    sample: Annotated[float, typer.Option(help="keep each request with this probability",
                                          min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    min_input: Annotated[int | None, typer.Option()] = None,
    max_input: Annotated[int | None, typer.Option()] = None,
    min_output: Annotated[int | None, typer.Option()] = None,
    max_output: Annotated[int | None, typer.Option()] = None,
    max_requests: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Convert SOURCE to the native JSONL format, optionally windowing, rescaling the rate,
    sampling and filtering it on the way."""
    from simulator.trace import iter_trace, load_trace
    from simulator.workload.io import write_jsonl
    from simulator.workload.transform import Counts, Transform

    counts = Counts()
    try:
        if start is not None and end is not None and end <= start:
            raise InputError(f"must be after --start ({start})", field="end")
        if output.resolve() == source.resolve():
            raise InputError("would overwrite the input trace", file=str(output), field="output")
        drop = counts.drop if drop_failed else None
        reqs = (iter(load_trace(source, trace_format, True, _warn, drop)) if sort
                else iter_trace(source, trace_format, drop))
        tf = Transform(start, end, rate_scale, sample, seed, min_input, max_input, min_output,
                       max_output, max_requests)
        write_jsonl(tf.apply(reqs, counts), output)
    except InputError as e:
        _fail(e)
        return
    # Failed BurstGPT rows never reach Transform.apply: count them as read.
    counts.read += counts.dropped.get("failed (0 response tokens)", 0)
    err.print(f"{counts.line()}; wrote {output}", highlight=False, markup=False, soft_wrap=True)


@trace_app.command("synth")
def synth(
    output: Annotated[Path, typer.Option("--output", "-o")],
    rate: Annotated[float, typer.Option(help="mean requests (or new sessions) per second")],
    duration: Annotated[float | None, typer.Option(help="seconds of traffic")] = None,
    requests: Annotated[int | None, typer.Option(help="stop after this many requests", min=1)]
    = None,
    arrival: Annotated[str, typer.Option(help="poisson | gamma")] = "poisson",
    cv: Annotated[float, typer.Option(help="gamma: coefficient of variation of the gaps "
                                           "(> 1 bursty)")] = 2.0,
    pattern: Annotated[str, typer.Option(help="constant | diurnal | step | spike")] = "constant",
    period: Annotated[float, typer.Option(help="diurnal period, s")] = 86_400.0,
    amplitude: Annotated[float, typer.Option(help="diurnal swing, 0..1")] = 0.5,
    at: Annotated[float, typer.Option(help="step/spike start, s")] = 0.0,
    width: Annotated[float, typer.Option(help="spike length, s")] = 60.0,
    factor: Annotated[float, typer.Option(help="step/spike rate multiplier")] = 2.0,
    input_dist: Annotated[str, typer.Option("--input", help="e.g. lognormal:median=1000,"
                                                            "sigma=1")] = "lognormal:median=1000,sigma=1",
    output_dist: Annotated[str, typer.Option("--output-len", help="e.g. exponential:mean=250")]
    = "exponential:mean=250",
    resample: Annotated[Path | None, typer.Option(help="draw (input, output) pairs from this "
                                                       "real trace instead")] = None,
    system_prompts: Annotated[int, typer.Option(min=0, help="shared system prompts")] = 0,
    system_prompt_tokens: Annotated[int, typer.Option(min=0)] = 0,
    session_turns: Annotated[int, typer.Option(min=1, help="turns per conversation")] = 1,
    think_time: Annotated[float, typer.Option(help="mean seconds between turns")] = 30.0,
    hash_block: Annotated[int, typer.Option(min=1, help="tokens per hash_ids block")] = 512,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate a synthetic trace (native JSONL)."""
    from simulator.trace import iter_trace
    from simulator.workload.io import write_jsonl
    from simulator.workload.synth import RatePattern, Synth, parse_dist

    try:
        if arrival not in ("poisson", "gamma"):
            raise InputError(f"unknown arrival process {arrival!r}; choose poisson or gamma",
                             field="arrival")
        pairs = None
        if resample is not None:
            pairs = [(r.input_tokens, r.output_tokens) for r in iter_trace(resample)]
        s = Synth(RatePattern(rate, pattern, period, amplitude, at, width, factor),
                  parse_dist(input_dist, "input"), parse_dist(output_dist, "output-len"),
                  duration, requests, cv if arrival == "gamma" else 1.0, pairs, system_prompts,
                  system_prompt_tokens, session_turns, think_time, hash_block, seed)
        n = write_jsonl(s.generate(), output)
    except InputError as e:
        _fail(e)
        return
    err.print(f"wrote {n:,} requests to {output}", highlight=False, soft_wrap=True)


@trace_app.command("stats")
def stats(
    source: Annotated[Path, typer.Argument(help="trace (any supported format)")],
    trace_format: Annotated[str | None, typer.Option(help=FMT_HELP)] = None,
    html: Annotated[Path | None, typer.Option(help="also write an interactive page here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Request rate, burstiness, length distributions, prefix reuse and token load."""
    from rich.table import Table

    from simulator.report.html import write_html
    from simulator.trace import iter_trace
    from simulator.workload.stats import stats_html, stats_rows, trace_stats

    try:
        st = trace_stats(iter_trace(source, trace_format))
        if html:
            write_html(stats_html(st, f"Workload: {source.name}"), html)
    except InputError as e:
        _fail(e)
        return
    if as_json:
        clean = {k: v for k, v in st.items() if not k.startswith("_") and k != "series"}
        print(json.dumps(clean, indent=2, default=lambda x: None if isinstance(x, float)
                         and not math.isfinite(x) else x))
        return
    t = Table(title=f"workload of {source.name}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in stats_rows(st):
        t.add_row(k, v)
    out.print(t)
    if html:
        err.print(f"wrote {html}", highlight=False, soft_wrap=True)
