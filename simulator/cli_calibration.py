"""``simulate validate | profile | calibrate``: measure real vLLM, fit the cost model to it, and
show how far the simulator is from the measurements (and how far the measurements are from each
other: :mod:`simulator.repeatability`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from simulator.cli import _fail, app, out
from simulator.errors import InputError
from simulator.report_table import (
    repeatability_table,
    step_error_table,
    targets_line,
    validation_table,
)


@app.command()
def validate(
    runs: Annotated[list[Path] | None, typer.Argument(help="measured run folders, or folders "
                                                        "holding them")] = None,
    write: Annotated[Path | None, typer.Option(help="write the error table (CSV) here")] = None,
    calibration: Annotated[str | None, typer.Option()] = None,
    sensitivity: Annotated[bool, typer.Option(
        help="simulate each run again with GPU work 2% slower and add TTFT/TPOT p50's % change "
             "per 1% (how far a step-time error moves the run; large past saturation)")] = False,
    own_engine_thread: Annotated[bool, typer.Option(
        help="a diagnostic, not a prediction: simulate each run with the engine thread's costs "
             "(preparation, launches, harvest) measured from its own timeline instead of the "
             "profile's, to see how much of its error is its engine's CPU speed (runs without "
             "a timeline keep the profile's; needs the [calibrate] extra)")] = False,
    host_speed: Annotated[str | None, typer.Option(
        help="simulate every run on a host this fast (as simulate's --host-speed), or "
             "'measured': each at its own measured host speed (the host column; a diagnostic "
             "of how much one number per host would fix)")] = None,
    repeatability: Annotated[Path | None, typer.Option(
        help="write the floors of runs measured more than once (same engine, config and "
             "requests on other hosts) here (CSV): the least error one simulated number can "
             "have against all of them")] = None,
    steps: Annotated[Path | None, typer.Option(
        help="write each run's per-step device-time errors here (CSV: median, 10th and 90th "
             "percentile by step class and sequences per step) and print them pooled: which "
             "steps the cost model has too fast or too slow")] = None,
) -> None:
    """Replay measured vLLM runs through the simulator and print the signed % errors; where a
    run was measured on several hosts, also how far the hosts differ (the accuracy floor)."""
    from simulator import repeatability as rep
    from simulator import step_errors as se
    from simulator.paths import profiles_dir
    from simulator.validate import find_runs, validate_run, write_table

    try:
        speed = _speed(host_speed, own_engine_thread)
        dirs = find_runs(runs or [profiles_dir() / "calibration" / "measurements"])
        found = rep.groups(dirs)  # measured values only: cheap, and checks the folders first
        results = [validate_run(d, calibration, sensitivity, own_engine_thread, speed,
                                steps=steps is not None) for d in dirs]
        timed = [r["steps"] for r in results if r.get("steps")]
        for path, writer, rows in ((write, write_table, results),
                                   (repeatability, rep.write_table, found),
                                   (steps, se.write_table,
                                    [row for name, cells in timed for row in se.summarise(
                                        name, cells)])):
            if path:
                try:
                    writer(rows, path)
                except OSError as e:
                    raise InputError(f"cannot write the table: {e.strerror}",
                                     file=str(path)) from None
    except InputError as e:
        _fail(e)
        return
    out.print(validation_table(results))
    if found:
        out.print(repeatability_table(found, results))
    if steps:
        if timed:
            out.print(step_error_table(se.summarise("all", se.pool([c for _, c in timed])),
                                       len(timed)))
        untimed = [r["run"] for r in results if r.get("steps") is None]
        if untimed:
            out.print(f"no device times (profiled without CUDA events, or against a server), "
                      f"so not in the step table: {', '.join(untimed)}", highlight=False,
                      soft_wrap=True)
    out.print(targets_line(results, found), highlight=False, soft_wrap=True)


def _speed(value: str | None, own_engine_thread: bool) -> float | str | None:
    """validate's --host-speed: None, 'measured', or a factor within simulate's bounds."""
    from simulator.config import SimulationConfig, validated

    if value is None or value == "measured":
        if value and own_engine_thread:
            raise InputError("give --host-speed measured or --own-engine-thread, not both",
                             field="host-speed")
        return value
    try:
        x = float(value)
    except ValueError:
        raise InputError(f"{value!r} is neither 'measured' nor a number",
                         field="host-speed") from None
    return validated(SimulationConfig, host_speed=x).host_speed  # SimulationConfig's bounds


PROFILERS = {"engine": "simulator.profiler.vllm_replay", "server": "simulator.profiler.server_replay",
             "operators": "simulator.profiler.operators"}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "help_option_names": []})
def profile(
    ctx: typer.Context,
    mode: Annotated[str, typer.Argument(help="engine: replay traces through an in-process vLLM "
                                             "engine (requests and per-step device times); "
                                             "server: replay them against a running "
                                             "OpenAI-compatible vLLM server (requests only); "
                                             "operators: time the model's operators (torch)")],
) -> None:
    """Measure real vLLM (needs the [profile] extra). `simulate profile MODE --help` for MODE's
    options."""
    import importlib

    if mode not in PROFILERS:
        _fail(InputError(f"unknown profiler {mode!r}; choose one of {', '.join(PROFILERS)}",
                         field="mode"))
        return
    try:
        rc = importlib.import_module(PROFILERS[mode]).main(ctx.args)
    except ImportError as e:
        _fail(InputError(f"profiling needs the [profile] extra ({e.name} is not installed)",
                         field="mode"))
        return
    raise typer.Exit(rc or 0)


@app.command()
def calibrate(
    runs: Annotated[list[Path], typer.Argument(help="measured run folders (with steps.jsonl "
                                                    "device times), or folders holding them")],
    hold_out: Annotated[list[str] | None, typer.Option(help="leave runs whose path contains "
                                                            "this out of the fit (repeatable)")]
    = None,
    output: Annotated[Path | None, typer.Option(help="default: profiles/calibration/<gpu>/"
                                                     "vllm-<version>.toml")] = None,
    error_band: Annotated[float, typer.Option(help="stated uncertainty to record")] = 0.2,
    engine_thread_from: Annotated[Path | None, typer.Option(
        help="a profile whose engine-thread costs were measured from timeline runs: used, "
             "times one fitted host-speed factor, when these runs carry no timeline")] = None,
    fix: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE: hold a fitted value at a measurement made by other means "
             "(repeatable)")] = None,
    draft_runs: Annotated[str | None, typer.Option(
        help="measure the draft model's per-pass cost on the runs (among RUNS, held out or "
             "not) whose path contains this")] = None,
    fit_carried: Annotated[list[str] | None, typer.Option(
        help="an engine-thread cost to fit on these runs instead of carrying it from "
             "--engine-thread-from (repeatable): one whose speed does not follow the host's "
             "other launches, such as eager_moe_layer_s")] = None,
    fit_fp8_decay: Annotated[bool, typer.Option(
        help="fit FP8/INT8 GEMMs' rate past 2,048 tokens apart from 16-bit GEMMs' "
             "(gemm_compute_decay_fp8, may grow: negative); default: they share one")] = False,
) -> None:
    """Fit efficiency factors and step overheads to measured vLLM steps; write a profile."""
    from simulator.calibrate import fit, output_for, write_profile
    from simulator.cost.calibration import load_profile
    from simulator.paths import profiles_dir
    from simulator.validate import find_runs

    try:
        dirs = [d for d in find_runs(runs) if not any(h in str(d) for h in hold_out or [])]
        if not dirs:
            raise InputError("every run is held out; nothing to fit", field="hold-out")
        # Refitting writes over the GPU's current profile where one exists, so what it holds
        # beyond the fitted factors (hand-measured values and their reasons) carries over; the
        # fit itself starts from the datasheet defaults, so its result does not depend on it.
        path = output or output_for(dirs[0])
        base = path if path.exists() else profiles_dir() / "calibration" / "defaults.toml"
        src = load_profile(engine_thread_from) if engine_thread_from is not None else None
        fixed = {}
        for item in fix or []:
            key, _, value = item.partition("=")
            try:
                fixed[key.strip()] = float(value)
            except ValueError:
                raise InputError(f"expected KEY=NUMBER, got {item!r}", field="fix") from None
        drafts = [d for d in find_runs(runs) if draft_runs and draft_runs in str(d)]
        result = fit(dirs, load_profile(base), engine_thread_from=src, fixed=fixed,
                     draft_runs=drafts, fp8_decay=fit_fp8_decay, fit_carried=fit_carried)
        write_profile(result, path, "simulate calibrate " + " ".join(sys.argv[2:]), error_band,
                      base=base)
    except InputError as e:
        _fail(e)
        return
    for k, v in result["params"].items():
        out.print(f"{k:22s} {v:.4g}")
    out.print(f"fitted on {len(dirs)} runs; wrote {path}")
