"""Fit the cost model's efficiency factors and per-step overheads to measured vLLM steps.

Input: measured runs (folders written by :mod:`simulator.profiler.vllm_replay`) whose
``steps.jsonl`` carries each batch's device time ``gpu_s`` (CUDA events). For every sampled step
the simulator's own :class:`~simulator.cost.roofline.Roofline` predicts the step time from the
batch's make-up under a candidate profile; a robust least-squares fit (scipy, soft-L1 on the log
ratio, so a 10% miss on a 5 ms decode step weighs the same as on a 500 ms prefill) moves the
factors that the data identify. A factor whose operator class is absent from the runs (FP8
GEMMs without FP8 runs, expert GEMMs without an MoE model) keeps its default.

Output: ``profiles/calibration/<gpu>/vllm-<version>.toml`` with the fitted values, the
per-run fit residuals, and provenance (GPU as the driver names it, vLLM and torch versions, date,
models, runs, command). The simulator then picks it for that GPU and says so in its summary.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import time
from pathlib import Path

from simulator.cost.calibration import CalibrationProfile, load_profile
from simulator.cost.roofline import Roofline
from simulator.deployment import resolve
from simulator.errors import InputError
from simulator.gpu import parse_deployment
from simulator.paths import profiles_dir
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
    ("efficiency", "moe_gemm", 0.05, 1.0),
    ("efficiency", "gemm_roofline_p", 1.5, 30.0),
    ("overhead", "step_s", 0.0, 0.02),
    ("overhead", "per_seq_s", 0.0, 1e-4),
    ("overhead", "prefill_step_s", 0.0, 0.02),
    ("overhead", "prefill_step_fp8_s", 0.0, 0.02),
    ("overhead", "eager_layer_s", 0.0, 0.005),
    ("overhead", "eager_moe_layer_s", 0.0, 0.005),
    ("overhead", "moe_layer_s", 0.0, 0.001),
)
FP8_ONLY = ("gemm_compute_fp8", "gemm_memory_fp8", "prefill_step_fp8_s")
MOE_ONLY = ("moe_gemm", "eager_moe_layer_s", "moe_layer_s")
STEPS_PER_RUN = 1500  # evenly spaced sample of each run's steps: enough to pin 8 factors


class Sample:
    """One run's sampled steps and the fixed parts of its roofline."""

    def __init__(self, run_dir: Path, per_run: int):
        cfg, _, _, meta = load_run(run_dir)
        dep = resolve(cfg.model_copy(update={"calibration": "none"}))
        rf = dep.roofline
        self.name, self.meta = f"{run_dir.parent.name}/{run_dir.name}", meta
        self.model, self.gpu, self.tp, self.prec = rf.model, rf.gpu, rf.tp, rf.prec
        self.graph_max_tokens = rf.graph_max_tokens
        self.fp8 = self.prec.gemm_dtype == "fp8"
        self.moe = rf.model.is_moe
        steps = []
        path = run_dir / "steps.jsonl"
        with path.open() as f:
            for i, line in enumerate(f, 1):
                s = json.loads(line)
                tokens = s["n_decode"] + sum(n for n, _ in s["prefill"])
                # The first steps of a replay include one-off warm-up (allocator, first shapes).
                if i > 5 and s.get("gpu_s") and tokens:
                    steps.append((s["n_decode"], s["decode_ctx"], [tuple(c) for c in s["prefill"]],
                                  s["gpu_s"]))
        if not steps:
            raise InputError("no steps with device times (gpu_s); re-profile with CUDA events",
                             file=str(path), field="gpu_s")
        stride = max(1, len(steps) // per_run)
        self.steps = steps[::stride]

    def log_errors(self, cal: CalibrationProfile) -> list[float]:
        rf = Roofline(self.model, self.gpu, self.tp, self.prec, cal)
        rf.graph_max_tokens = self.graph_max_tokens
        out = []
        for n_dec, ctx, pre, meas in self.steps:
            t = rf.step(n_dec, ctx, pre, n_dec + len(pre)).time_s
            out.append(math.log(t / meas))
        return out


def alone_latencies(run_dir: Path) -> list[float]:
    """TTFT minus the prefill step's device time, for requests served alone (no other request
    in flight between their arrival and finish, prompt prefilled in one step, no cache hit):
    what a request waits outside the engine's steps (admission, output processing).

    Linear in the run's size after sorting: a request is alone when every earlier arrival has
    finished before it arrives and the next arrival comes after it finishes."""
    reqs = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines() if x]
    steps = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines() if x]
    steps.sort(key=lambda s: s["start_s"])
    starts = [s["start_s"] for s in steps]
    spans = sorted((r["arrival_s"], r["finish_s"], i) for i, r in enumerate(reqs)
                   if r["finish_s"] is not None)
    out, latest = [], -math.inf  # latest finish among earlier arrivals
    for j, (a, f, i) in enumerate(spans):
        alone = latest <= a and (j + 1 == len(spans) or spans[j + 1][0] >= f)
        latest = max(latest, f)
        r, t = reqs[i], reqs[i]["first_token_s"]
        if not alone or t is None or r.get("cached_tokens"):
            continue
        lo, hi = bisect.bisect_left(starts, a), bisect.bisect_right(starts, t)
        pre = [s for s in steps[lo:hi] if s["gpu_s"] and not s["n_decode"]
               and s["prefill"] == [[r["input_tokens"], 0]]]
        if len(pre) == 1:
            out.append(t - a - pre[0]["gpu_s"])
    return out


def _with(base: dict, names: list[tuple[str, str]], x) -> CalibrationProfile:
    d = json.loads(json.dumps(base))
    for (sec, key), v in zip(names, x, strict=True):
        d[sec][key] = float(v)
    return CalibrationProfile(**d)


def fit(run_dirs: list[Path], base: CalibrationProfile, per_run: int = STEPS_PER_RUN) -> dict:
    """Fitted profile data plus per-run residual statistics."""
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
              and not (p[1] in MOE_ONLY and not any(s.moe for s in samples))]
    names = [(sec, key) for sec, key, _, _ in active]
    data = base.model_dump(exclude={"path"})
    # Front-end latency is measured, not fitted: the median over requests served alone.
    alone = sorted(x for d in run_dirs for x in alone_latencies(d))
    latency = max(alone[len(alone) // 2], 0.0) if len(alone) >= 5 else None
    if latency is not None:
        data["overhead"]["request_latency_s"] = latency
    # A launch floor of 0 has no gradient (it never binds): start it where it binds sometimes.
    start = {"gemm_roofline_p": 4.0, "eager_layer_s": 1e-3, "eager_moe_layer_s": 1e-4,
             "prefill_step_fp8_s": 1e-3, "moe_layer_s": 1e-5}
    x0 = [min(max(data[sec].get(key) or start.get(key, 0.7), lo + 1e-6), hi - 1e-9)
          for sec, key, lo, hi in active]
    # Overheads are fitted in milliseconds/microseconds so every variable is of order one.
    unit = {"step_s": 1e-3, "prefill_step_s": 1e-3, "prefill_step_fp8_s": 1e-3, "per_seq_s": 1e-6,
            "eager_layer_s": 1e-4, "eager_moe_layer_s": 1e-4, "moe_layer_s": 1e-5}
    scale = np.array([unit.get(k, 1.0) for _, k in names])

    # Each run weighs the same, and within a run its prefill-carrying steps weigh as much as its
    # decode-only steps (which outnumber them 10-100x but set only TPOT, not TTFT).
    weights = []
    for s in samples:
        has_pre = np.array([bool(pre) for _, _, pre, _ in s.steps])
        n_pre, n_dec = has_pre.sum(), (~has_pre).sum()
        w = np.where(has_pre, 1 / math.sqrt(2 * max(n_pre, 1)), 1 / math.sqrt(2 * max(n_dec, 1)))
        weights.append(w)

    def resid(z):
        cal = _with(data, names, z * scale)
        return np.concatenate([np.asarray(s.log_errors(cal)) * w
                               for s, w in zip(samples, weights, strict=True)])

    res = least_squares(resid, np.array(x0) / scale,
                        bounds=([lo for *_, lo, _ in active] / scale, [hi for *_, hi in active] / scale),
                        loss="soft_l1", f_scale=0.05)
    fitted = res.x * scale
    cal = _with(data, names, fitted)
    per_run = {}
    for s in samples:
        e = sorted(abs(v) for v in s.log_errors(cal))
        per_run[s.name] = {"steps": len(e), "median_abs_log_err": e[len(e) // 2],
                           "p90_abs_log_err": e[int(0.9 * (len(e) - 1))]}
    params = dict(zip([k for _, k in names], fitted.tolist(), strict=True))
    if latency is not None:
        params["request_latency_s"] = latency
    return {"profile": cal, "params": params, "alone_requests": len(alone),
            "runs": per_run, "gpu": samples[0].gpu.name, "meta": samples[0].meta,
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
    why = _comments(base) if base is not None and base.exists() else {}
    lines = [
        f"# Fitted by `simulate calibrate` on {time.strftime('%Y-%m-%d')} from step-level device times",
        "# of real vLLM runs (see [provenance]); values not in [provenance].fitted keep the defaults.",
        f'name = "{result["gpu"]}-vllm-{meta["vllm"]}"',
        "calibrated = true",
        f"error_band = {error_band:.2f}  # --error-band: covers the worst p50 error in validation.csv",
    ]
    for sec in ("efficiency", "overhead", "memory"):
        lines.append(f"\n[{sec}]")
        for k, v in getattr(cal, sec).model_dump().items():
            if v is not None:
                note = "" if k in result["params"] or (sec, k) not in why else f"  # {why[(sec, k)]}"
                lines.append(f"{k} = {v:.6g}{note}")
    lines += ["\n[provenance]", f'gpu_driver_name = "{meta["gpu"]}"', f'vllm = "{meta["vllm"]}"',
              f'torch = "{meta["torch"]}"', f'date = "{time.strftime("%Y-%m-%d")}"',
              f"models = {json.dumps(result['models'])}",
              f"fitted = {json.dumps(sorted(result['params']))}",
              f"max_tensor_parallel_size = {meta['engine_args'].get('tensor_parallel_size') or 1}",
              f"max_model_len = {meta['engine_args']['max_model_len']}",
              f"command = {json.dumps(command)}", "\n[provenance.fit_residuals]  # |log(sim/meas)| per step"]
    for run, r in sorted(result["runs"].items()):
        lines.append(f'"{run}" = {{ steps = {r["steps"]}, median = {r["median_abs_log_err"]:.4f}, '
                     f'p90 = {r["p90_abs_log_err"]:.4f} }}')
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
