"""Fit the cost model's efficiency factors and per-step overheads to measured vLLM steps.

Input: measured runs (folders written by :mod:`simulator.profiler.vllm_replay`) whose
``steps.jsonl`` carries each batch's device time ``gpu_s`` (CUDA events) and each engine call's
wall-clock start and return. For every sampled step the simulator's own
:class:`~simulator.cost.roofline.Roofline` costs the batch under a candidate profile and
:func:`simulator.engine_loop.place` places it as the simulator would, anchored where the
measurement puts it (:mod:`simulator.measured_steps`: its call's start, the previous batch's end
on the GPU). Two residuals per step: the predicted device time against ``gpu_s``, and the
predicted return of the call (when the previous batch's tokens went out) against the measured
one, which pins the engine thread's costs (launch, harvest) that device times alone cannot. A
robust least-squares fit (scipy, soft-L1 on log ratios, so a 10% miss on a 5 ms decode step
weighs the same as on a 500 ms prefill) moves the factors that the data identify. A factor
whose operator class is absent from the runs (FP8 GEMMs without FP8 runs, expert GEMMs without
an MoE model) keeps its default.

Output: ``profiles/calibration/<gpu>/vllm-<version>.toml`` with the fitted values, the
per-run fit residuals, and provenance (GPU as the driver names it, vLLM and torch versions, date,
models, runs, command). The simulator then picks it for that GPU and says so in its summary.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from simulator.cost.calibration import CalibrationProfile, load_profile
from simulator.cost.power import Heat, slowed
from simulator.deployment import resolve, with_calibration
from simulator.engine_loop import place
from simulator.engine_thread import RunShape, measure
from simulator.errors import InputError
from simulator.gpu import parse_deployment
from simulator.measured_costs import alone_requests, draft_pass_time, front_end_latency
from simulator.measured_steps import read_records, read_steps
from simulator.paths import profiles_dir
from simulator.profiler.host import host_key
from simulator.validate import load_run, run_meta

# Nothing streams HBM faster than a device-to-device copy: 0.89 of the datasheet bandwidth on
# both lent GPUs (profiles/calibration/operators). Bandwidth efficiencies stop there, so a fit
# cannot buy decode speed with unphysical bandwidth and hide the difference in other terms.
COPY_BW = 0.9

# (section, key, lower bound, upper bound): what the fit may move.
PARAMS = (
    ("efficiency", "gemm_compute", 0.05, 1.0),
    ("efficiency", "gemm_compute_fp8", 0.05, 1.0),
    ("efficiency", "gemm_memory", 0.2, COPY_BW),
    ("efficiency", "gemm_memory_fp8", 0.2, COPY_BW),
    ("efficiency", "attn_prefill_compute", 0.05, 1.0),
    ("efficiency", "attn_decode_memory", 0.1, COPY_BW),
    ("efficiency", "attn_mixed_decode_memory", 0.1, COPY_BW),
    ("efficiency", "moe_gemm", 0.05, 1.0),
    ("efficiency", "gemm_roofline_p", 1.0, 30.0),  # 1: compute and memory times add up
    ("efficiency", "gemm_compute_decay", 0.0, 0.5),
    ("efficiency", "gemm_compute_decay_fp8", -0.3, 0.3),
    ("efficiency", "power_slowdown", 0.0, 1.0),
    ("overhead", "step_s", 0.0, 0.02),
    ("overhead", "per_seq_s", 0.0, 1e-4),
    ("overhead", "prefill_step_s", 0.0, 0.02),
    ("overhead", "prefill_step_fp8_s", 0.0, 0.02),
    ("overhead", "eager_layer_s", 0.0, 0.005),
    ("overhead", "eager_moe_layer_s", 0.0, 0.005),
    ("overhead", "moe_layer_s", 0.0, 0.001),
    ("overhead", "cpu_step_s", 0.0, 0.02),
    ("overhead", "cpu_seq_s", 0.0, 1e-4),
    ("overhead", "piecewise_layer_s", 0.0, 0.005),
    ("overhead", "output_s", 0.0, 0.02),
    ("overhead", "output_seq_s", 0.0, 1e-4),
)
FP8_ONLY = ("gemm_compute_fp8", "gemm_memory_fp8", "prefill_step_fp8_s", "gemm_compute_decay_fp8")
MOE_ONLY = ("moe_gemm", "eager_moe_layer_s", "moe_layer_s")
STEPS_PER_RUN = 1500  # evenly spaced sample of each run's steps: enough to pin 8 factors


class Sample:
    """One run's sampled steps, placed where the measurement puts them (measured_steps)."""

    def __init__(self, run_dir: Path, per_run: int):
        cfg, _, _, meta = load_run(run_dir)
        self.cfg, self.dep = cfg, resolve(cfg.model_copy(update={"calibration": "none"}))
        rf = self.dep.roofline
        self.name, self.meta = f"{run_dir.parent.name}/{run_dir.name}", meta
        self.gpu = rf.gpu
        self.fp8 = rf.prec.gemm_dtype == "fp8"
        self.moe = rf.model.is_moe
        # Every call's raw record, read once: the fit's steps and the requests served alone.
        records = read_records(run_dir)
        self.alone = alone_requests(run_dir, records)
        # The first steps of a replay include one-off warm-up (allocator, first shapes).
        every = read_steps(run_dir, records)
        # The GPU's compute load when each step began, from the measured timeline
        # (simulator.cost.power): FLOPs are counts, the same under every profile.
        heat, loads = Heat.of(rf), []
        for st in every:
            loads.append(heat.at(st.gpu_start))
            if st.gpu_s and st.tokens:
                c = rf.step(st.n_decode, st.decode_ctx, st.prefill, st.seqs)
                heat.add(st.gpu_start + st.gpu_s, st.gpu_s, c.flops)
        kept = [(st, h) for st, h in zip(every[5:], loads[5:], strict=True) if st.tokens]
        steps = [st for st, _ in kept]
        if not steps:
            raise InputError("no steps with device times (gpu_s); re-profile with CUDA events",
                             file=str(run_dir / "steps.jsonl"), field="gpu_s")
        stride = max(1, len(steps) // per_run)
        self.steps = steps[::stride]
        self.heat = [h for _, h in kept[::stride]]
        self.timeline = any(st.launched is not None for st in steps)
        # FP8's extra launch is measured against 16-bit runs of the same model and host.
        host = host_key(meta)
        self.shape = RunShape(steps, rf.layers, rf.moe_layers, rf.graph_max_tokens, self.fp8,
                              meta["model"] + (f" @ {host}" if host else ""))

    def errors(self, cal: CalibrationProfile) -> tuple[list[float], list[float], list[float]]:
        """Per step: log(simulated / measured) of the device time, and of the call's duration
        up to its return (the previous batch's tokens emitted) and, where the run timed it (0
        where not), up to the end of its launch."""
        rf = with_calibration(self.dep, cal).roofline
        dev, call, launch = [], [], []
        for st, h in zip(self.steps, self.heat, strict=True):
            c = rf.step(st.n_decode, st.decode_ctx, st.prefill, st.seqs)
            if st.prefill and rf.power_k:
                c = slowed(c, rf.power_k, h)
            pl = place(st.gpu_free, st.call_start, c, rf.output_time(st.prev_seqs),
                       in_flight=st.in_flight, async_sched=rf.async_sched,
                       wait_s=rf.overhead.prefill_harvest_s if st.prev_prefill else 0.0)
            dev.append(math.log(max(pl.end - st.gpu_start, 1e-6) / st.gpu_s))
            if not rf.async_sched:  # the call waits for its own batch, then harvests it
                ret = pl.end + rf.output_time(st.seqs)
            else:
                ret = pl.prev_emit if st.in_flight else pl.next_call
            call.append(math.log(max(ret - st.call_start, 1e-6)
                                 / max(st.call_end - st.call_start, 1e-6)))
            stalled = st.prev_tokens > rf.graph_max_tokens  # see engine_thread
            launch.append(0.0 if st.launched is None or stalled else math.log(
                max(pl.launched - st.call_start, 1e-6) / max(st.launched - st.call_start, 1e-6)))
        return dev, call, launch

    def log_errors(self, cal: CalibrationProfile) -> list[float]:
        """log(simulated / measured) device time per sampled step."""
        return self.errors(cal)[0]


def own_engine_thread(run_dir: Path, cal: CalibrationProfile) -> CalibrationProfile | None:
    """``cal`` with the engine-thread costs (preparation, launches, harvest) measured from
    ``run_dir``'s own timeline, or None where the run carries none. A diagnostic, not a
    prediction: how much of a run's error is its engine's CPU speed, which differs 30-40%
    between engines on one host and across hosts (``simulate validate --repeatability``)."""
    try:
        s = Sample(run_dir, 1)
    except InputError:  # no device times at all (a run profiled without CUDA events)
        return None
    over = {k: v for k, (v, _) in measure([s.shape]).items()}
    if not over:
        return None
    if s.fp8:  # an FP8 run alone measures its whole launch as the base, no extra on top
        for base, extra in (("piecewise_layer_s", "piecewise_fp8_layer_s"),
                            ("eager_layer_s", "eager_fp8_layer_s")):
            if base in over:
                over[extra] = 0.0
    return cal.model_copy(update={"overhead": cal.overhead.model_copy(update=over)})


def _with(base: dict, names: list[tuple[str, str]], x,
          carried: dict[str, float] | None = None) -> CalibrationProfile:
    """``base`` with the named values set; ``("engine_thread", "host_speed")`` scales the
    engine-thread costs ``carried`` from another host's measurement."""
    d = json.loads(json.dumps(base))
    for (sec, key), v in zip(names, x, strict=True):
        if sec == "engine_thread":
            for k, c in (carried or {}).items():
                d["overhead"][k] = c * float(v)
        else:
            d[sec][key] = float(v)
    return CalibrationProfile(**d)


def fit(run_dirs: list[Path], base: CalibrationProfile, per_run: int = STEPS_PER_RUN,
        engine_thread_from: CalibrationProfile | None = None,
        fixed: dict[str, float] | None = None, draft_runs: list[Path] | None = None,
        fp8_decay: bool = False, fit_carried: list[str] | None = None) -> dict:
    """Fitted profile data plus per-run residual statistics. ``fp8_decay``: fit 8-bit GEMMs'
    rate past 2,048 tokens apart from 16-bit GEMMs' (``gemm_compute_decay_fp8``; otherwise they
    share ``gemm_compute_decay``). ``engine_thread_from``: a profile
    whose engine-thread costs were measured (``provenance.measured``); where no run here
    carries the timeline, those costs are carried over times one fitted host-speed factor, but
    for those named in ``fit_carried``, fitted here instead: an MoE layer's eager launch does not
    follow a host's dense launches (two H200 hosts: 1.57 and 1.21 ms per MoE layer against 0.44
    and 0.61 per dense one), so one factor cannot carry both."""
    try:
        import numpy as np
        from scipy.optimize import least_squares
    except ImportError:
        raise InputError("calibrate needs numpy and scipy: install the project's [calibrate] "
                         "extra") from None
    samples = [Sample(d, per_run) for d in run_dirs]
    gpus = {s.gpu.name for s in samples}
    if len(gpus) != 1:
        raise InputError(f"runs from several GPUs ({', '.join(sorted(gpus))}): fit one GPU at a time")
    active = [p for p in PARAMS
              if not (p[1] in FP8_ONLY and not any(s.fp8 for s in samples))
              and (fp8_decay or p[1] != "gemm_compute_decay_fp8")
              and not (p[1] in MOE_ONLY and not any(s.moe for s in samples))]
    data = base.model_dump(exclude={"path"})
    # Where runs carry the engine thread's timeline, its costs are measured, not fitted.
    measured = measure([s.shape for s in samples if s.timeline])
    for key, (v, _) in measured.items():
        data["overhead"][key] = v
    active = [p for p in active if p[1] not in measured]
    # Values held at a measurement made by other means (e.g. the operator tables), not fitted.
    for key, v in (fixed or {}).items():
        sec = next((p[0] for p in PARAMS if p[1] == key), None)
        if sec is None:
            raise InputError(f"not a fitted value: {key}", field="fix")
        data[sec][key] = v
    active = [p for p in active if p[1] not in (fixed or {})]
    carried: dict[str, float] = {}
    notes: dict[tuple[str, str], str] = {}  # (section, key) -> why, for values set, not fitted
    if not measured and engine_thread_from is not None:
        keys = ((engine_thread_from.model_extra or {}).get("provenance") or {}).get("measured") or {}
        if not keys:
            raise InputError("its engine-thread costs were not measured (no provenance.measured)",
                             file=engine_thread_from.path, field="engine-thread-from")
        carried = {k: getattr(engine_thread_from.overhead, k) for k in keys}
        # A spread, not a time: carried as it is, outside the host-speed factor.
        spread = carried.pop("launch_jitter", None)
        if spread is not None:
            data["overhead"]["launch_jitter"] = spread
            notes[("overhead", "launch_jitter")] = (
                f"carried from {engine_thread_from.name}, where it was measured (a call-to-call "
                "spread of the engine thread, not a time: the host-speed factor leaves it)")
        fittable = {p[1] for p in active}
        for k in fit_carried or []:
            if k not in carried or k not in fittable:
                raise InputError(f"not a carried engine-thread cost these runs can fit: {k}",
                                 field="fit-carried")
            del carried[k]
        active = [p for p in active if p[1] not in carried] + [
            ("engine_thread", "host_speed", 0.3, 3.0)]
    elif fit_carried:
        raise InputError("only costs carried with --engine-thread-from can be fitted instead",
                         field="fit-carried")
    names = [(sec, key) for sec, key, _, _ in active]
    # The fit starts from the datasheet defaults, never from the profile it refits: a robust fit
    # over this many factors stops at a start-dependent point, so starting from its own last
    # output would make the committed command's result depend on how often it was run.
    origin = load_profile(profiles_dir() / "calibration" / "defaults.toml").model_dump(
        exclude={"path"})
    # A launch time of 0 has no gradient where it never binds: start it where it binds sometimes.
    start = {"gemm_roofline_p": 4.0, "gemm_compute_decay": 0.02, "gemm_compute_decay_fp8": 0.02,
             "power_slowdown": 0.05,
             "eager_layer_s": 1e-3,
             "eager_moe_layer_s": 1e-4,
             "prefill_step_fp8_s": 1e-3, "moe_layer_s": 1e-5, "cpu_step_s": 1e-3,
             "piecewise_layer_s": 3e-4, "output_s": 1e-3, "cpu_seq_s": 1e-6, "output_seq_s": 1e-6}
    x0 = [1.0 if sec == "engine_thread" else
          min(max(start.get(key) or origin[sec].get(key) or 0.7, lo + 1e-6), hi - 1e-9)
          for sec, key, lo, hi in active]
    # Overheads are fitted in milliseconds/microseconds so every variable is of order one.
    unit = {"step_s": 1e-3, "prefill_step_s": 1e-3, "prefill_step_fp8_s": 1e-3, "per_seq_s": 1e-6,
            "eager_layer_s": 1e-4, "eager_moe_layer_s": 1e-4, "moe_layer_s": 1e-5,
            "cpu_step_s": 1e-3, "cpu_seq_s": 1e-6, "piecewise_layer_s": 1e-4, "output_s": 1e-3,
            "output_seq_s": 1e-6}
    scale = np.array([unit.get(k, 1.0) for _, k in names])

    # Each run weighs the same, and within a run its prefill-carrying steps weigh as much as its
    # decode-only steps (which outnumber them 10-100x but set only TPOT, not TTFT); the calls'
    # return times weigh as much as the device times.
    weights = []
    for s in samples:
        has_pre = np.array([bool(st.prefill) for st in s.steps])
        n_pre, n_dec = has_pre.sum(), (~has_pre).sum()
        w = np.where(has_pre, 1 / math.sqrt(2 * max(n_pre, 1)), 1 / math.sqrt(2 * max(n_dec, 1)))
        weights.append(w)

    def resid(z):
        cal = _with(data, names, z * scale, carried)
        parts = []
        for s, w in zip(samples, weights, strict=True):
            parts += [np.asarray(e) * w for e in s.errors(cal)]
        return np.concatenate(parts)

    res = least_squares(resid, np.array(x0) / scale,
                        bounds=([lo for *_, lo, _ in active] / scale, [hi for *_, hi in active] / scale),
                        loss="soft_l1", f_scale=0.05)
    fitted = res.x * scale
    cal = _with(data, names, fitted, carried)
    # The draft model's per-pass launch cost, measured on speculative runs given for it.
    draft = draft_pass_time(draft_runs or [], cal)
    if draft is not None:
        measured["draft_layer_pass_s"] = draft
        cal = cal.model_copy(update={"overhead": cal.overhead.model_copy(
            update={"draft_layer_pass_s": draft[0]})})
    # Front-end latency is measured, not fitted: what requests served alone waited beyond the
    # fitted engine loop.
    latency, n_alone = front_end_latency(samples, cal)
    if latency is not None:
        cal = cal.model_copy(update={"overhead": cal.overhead.model_copy(
            update={"request_latency_s": latency})})
    per_run = {}
    for s in samples:
        dev, call, _ = (sorted(abs(v) for v in x) for x in s.errors(cal))
        per_run[s.name] = {"steps": len(dev), "median_abs_log_err": dev[len(dev) // 2],
                           "p90_abs_log_err": dev[int(0.9 * (len(dev) - 1))],
                           "call_median_abs_log_err": call[len(call) // 2]}
    params = dict(zip([k for _, k in names], fitted.tolist(), strict=True))
    params.update({k: v for k, (v, _) in measured.items()})
    speed = params.pop("host_speed", None)
    params.update({k: c * speed for k, c in carried.items()} if speed is not None else {})
    if latency is not None:
        params["request_latency_s"] = latency
    return {"profile": cal, "params": params, "alone_requests": n_alone,
            "measured": {k: n for k, (_, n) in measured.items()},
            "carried": ({"from": engine_thread_from.name, "host_speed": speed, "values": carried}
                        if speed is not None else None),
            "fixed": dict(fixed or {}), "notes": notes,
            "runs": per_run, "gpu": samples[0].gpu.name, "meta": samples[0].meta,
            # The calibrated range: the widest engine shape among the fitted runs.
            "max_model_len": max(s.meta["engine_args"]["max_model_len"] for s in samples),
            "max_tensor_parallel_size": max(s.meta["engine_args"].get("tensor_parallel_size") or 1
                                            for s in samples),
            "models": sorted({s.meta["model"] + (" fp8" if s.fp8 else "") for s in samples})}


def _comments(path: Path) -> dict[tuple[str, str], str]:
    """(section, key) -> the inline comment a profile gives that value (its reason)."""
    out, sec = {}, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\s*\[([\w.]+)\]", line):
            sec = m.group(1)
        elif m := re.match(r"\s*(\w+)\s*=\s*[^#]*#\s*(.*)$", line):
            out[(sec, m.group(1))] = m.group(2)
    return out


def write_profile(result: dict, out: Path, command: str, error_band: float,
                  base: Path | None = None) -> Path:
    """A TOML profile: the base profile's values with the fitted ones replaced, and provenance.

    Values not fitted keep the base's number and its stated reason (e.g. a hand-measured
    ``w4a16_stream``), so refitting a GPU never silently drops what was measured by other means.
    """
    cal: CalibrationProfile = result["profile"]
    meta = result["meta"]
    has_base = base is not None and base.exists()
    why = _comments(base) if has_base else {}
    measured = ", ".join(f"{k} = {n}" for k, n in sorted(result.get("measured", {}).items()))
    lines = [
        f"# Fitted by `simulate calibrate` on {time.strftime('%Y-%m-%d')} from step-level device times",
        "# of real vLLM runs (see [provenance]); values not in [provenance].fitted keep the defaults.",
        f'name = "{result["gpu"]}-vllm-{meta["vllm"]}"',
        "calibrated = true",
        f"error_band = {error_band:.2f}  # --error-band: the stated uncertainty of a p50 "
        "(validation.csv holds the measured errors; a test checks the bands cover them)",
    ]
    # Wider bands for FP8 or MoE runs keep the base's value and reason, like unfitted values.
    prior = load_profile(base) if has_base else None
    for key in ("error_band_fp8", "error_band_moe"):
        if prior is not None and getattr(prior, key) is not None:
            note = f"  # {why[('', key)]}" if ("", key) in why else ""
            lines.append(f"{key} = {getattr(prior, key):.2f}{note}")
    for sec in ("efficiency", "overhead", "memory"):
        lines.append(f"\n[{sec}]")
        for k, v in getattr(cal, sec).model_dump().items():
            if v is not None:
                why_k = result.get("notes", {}).get((sec, k)) or (
                    None if k in result["params"] else why.get((sec, k)))
                note = f"  # {why_k}" if why_k else ""
                lines.append(f"{k} = {v:.6g}{note}")
    lines += ["\n[provenance]", f'gpu_driver_name = "{meta["gpu"]}"', f'vllm = "{meta["vllm"]}"',
              f'torch = "{meta["torch"]}"', f'date = "{time.strftime("%Y-%m-%d")}"',
              f"models = {json.dumps(result['models'])}",
              f"fitted = {json.dumps(sorted(result['params']))}",
              "# measured, not fitted: engine-thread costs from runs that carry its timeline "
              "(calls measured)",
              f"measured = {{ {measured} }}",
              *([f"fixed = {{ {', '.join(f'{k} = {v:g}' for k, v in sorted(result['fixed'].items()))} }}"
                 "  # held at a measurement made by other means (see command)"]
                if result.get("fixed") else []),
              *([f"# engine-thread costs carried from {c['from']} (measured there) x a fitted host "
                 f"speed factor", f"engine_thread_from = {json.dumps(c['from'])}",
                 f"host_speed = {c['host_speed']:.6g}",
                 "# the values carried, as that profile held them: refitting it changes them, and"
                 " then this profile must be refitted too (a test checks they still agree)",
                 "engine_thread_source = { " + ", ".join(
                     f"{k} = {v:.6g}" for k, v in sorted(c["values"].items())) + " }"]
                if (c := result.get("carried")) else []),
              f"max_tensor_parallel_size = {result['max_tensor_parallel_size']}",
              f"max_model_len = {result['max_model_len']}",
              f"command = {json.dumps(command)}",
              "\n[provenance.fit_residuals]  # |log(sim/meas)| per step: device time; "
              "call_median: the engine call's return"]
    for run, r in sorted(result["runs"].items()):
        lines.append(f'"{run}" = {{ steps = {r["steps"]}, median = {r["median_abs_log_err"]:.4f}, '
                     f'p90 = {r["p90_abs_log_err"]:.4f}, '
                     f'call_median = {r["call_median_abs_log_err"]:.4f} }}')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    load_profile(out)  # what we write must read back
    return out


def default_output(gpu: str, vllm_version: str) -> Path:
    return profiles_dir() / "calibration" / parse_deployment(gpu)[0].name / f"vllm-{vllm_version}.toml"


def output_for(run_dir: Path) -> Path:
    """Where a profile fitted to this measured run's GPU and vLLM version belongs (reads only
    its ``meta.json``; the fit reads the steps)."""
    meta, gpu = run_meta(run_dir)
    return default_output(gpu, meta["vllm"])
