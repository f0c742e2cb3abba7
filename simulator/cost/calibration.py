"""Efficiency factors and overheads for the roofline, from a calibration profile.

Selection order: an explicit ``--calibration`` path; a profile measured on the simulated GPU
(``profiles/calibration/<gpu>/*.toml``, newest vLLM first); else ``defaults.toml``. The chosen
profile's name, path and whether it is calibrated go into the run's summary.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simulator.errors import InputError
from simulator.paths import profiles_dir


class Efficiency(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gemm_compute: float = Field(gt=0, le=1)
    gemm_memory: float = Field(gt=0, le=1)
    attn_prefill_compute: float = Field(gt=0, le=1)
    attn_prefill_memory: float = Field(gt=0, le=1)
    attn_decode_compute: float = Field(gt=0, le=1)
    attn_decode_memory: float = Field(gt=0, le=1)
    elementwise_memory: float = Field(gt=0, le=1)
    comm_bus: float = Field(gt=0, le=1)
    # Fitted only where measured: FP8 W8A8 GEMMs (per-token activation quantisation and scaled
    # GEMM kernels reach a lower share of their datasheet rate than bf16), and MoE expert GEMMs
    # (grouped GEMM, routing, permutation) relative to dense ones. None: same as gemm_compute / 1.
    gemm_compute_fp8: float | None = Field(default=None, gt=0, le=1)
    # FP8 W8A8 weight streaming (small batches): the scaled-GEMM kernels stream 8-bit weights at
    # a lower share of bandwidth than bf16 GEMMs stream theirs (the operator tables in
    # profiles/calibration/operators show 0.5 vs 0.8 at one token). None: gemm_memory.
    gemm_memory_fp8: float | None = Field(default=None, gt=0, le=1)
    moe_gemm: float | None = Field(default=None, gt=0, le=1)
    # Decode attention in a step that also holds prefill: vLLM runs the whole batch through one
    # varlen attention kernel (FlashAttention's prefill path), whose KV reads for single-query
    # sequences are slower than the decode kernel's. Fitted on mixed steps; None: as decode.
    attn_mixed_decode_memory: float | None = Field(default=None, gt=0, le=1)
    # Sharpness of the GEMM roofline: op time = p-norm of (compute time, memory time); None is
    # the hard max. Fitted: kernels near the ridge point are slower than either bound alone.
    gemm_roofline_p: float | None = Field(default=None, ge=1)
    # GEMM compute rate beyond 2,048 tokens: x (tokens / 2048) ** -decay. The operator tables
    # show serving-shape GEMMs slowing past 2k tokens (Llama-3.1-8B's layer on the H200: 0.71 of
    # peak at 2,048, 0.68 at 8,192). None: flat.
    gemm_compute_decay: float | None = Field(default=None, ge=0, le=0.5)
    # The same exponent for 8-bit (FP8/INT8 W8A8) GEMMs where fitted apart; negative: their rate
    # grows past 2,048 tokens. None: the shared one.
    gemm_compute_decay_fp8: float | None = Field(default=None, ge=-0.5, le=0.5)
    # W4A16 (AWQ/GPTQ on Marlin kernels), relative to the 16-bit GEMM: compute rate (dequantising
    # in registers) and achieved bandwidth streaming the 4-bit weights.
    w4a16_compute: float | None = Field(default=None, gt=0, le=2)
    w4a16_stream: float | None = Field(default=None, gt=0, le=2)
    # An FP8 KV cache (--kv-cache-dtype fp8): the decode attention kernel's achieved bandwidth
    # reading it, relative to a 16-bit cache's (FlashAttention-3 runs FP8 queries against it,
    # its tiles tuned for 16-bit). Measured from the operator tables' paged decode rows
    # (simulator.profiler.vllm_kernels); None: the 16-bit efficiency.
    attn_fp8_kv: float | None = Field(default=None, gt=0, le=2)
    # The power cap: a step holding prefill takes 1 + this x the GPU's recent compute load
    # (simulator.cost.power). Fitted on the measured timeline; None: no slowdown.
    power_slowdown: float | None = Field(default=None, ge=0, le=1)


class Overhead(BaseModel):
    """Fixed costs of an engine step, on the two timelines of vLLM's engine loop
    (:mod:`simulator.engine_loop`): GPU time beyond the roofline's operators, and CPU time of
    the engine-core thread, which schedules and launches batch k+1 while the GPU runs batch k
    and emits batch k's tokens only after that launch."""

    model_config = ConfigDict(extra="forbid")
    # --- GPU timeline: added to every step's device time ---------------------------------------
    # Per step and per sequence beyond the operators: sampling, input copies, gaps inside the
    # graph replay; fitted to the device time of decode steps whose launch the GPU never waits for.
    step_s: float = Field(ge=0)
    per_seq_s: float = Field(ge=0)
    comm_latency_s: float = Field(ge=0)
    # Extra device time of a step that holds prefill and fits a captured CUDA graph (vLLM runs
    # such mixed batches as piecewise graphs with attention between the pieces) ...
    prefill_step_s: float = Field(default=0.0, ge=0)
    # ... and its extra under FP8 W8A8 (per-token activation quantisation in the pieces).
    prefill_step_fp8_s: float = Field(default=0.0, ge=0)
    # Fixed GPU time of every MoE layer in every step, graphs or not: routing, top-k, token
    # alignment and permutation kernels, latency-bound at small batches.
    moe_layer_s: float = Field(default=0.0, ge=0)
    # Speculative decoding: fixed cost per draft layer per draft pass (vLLM runs a draft
    # model's k passes layer by layer, launch-bound at small batch).
    draft_layer_pass_s: float = Field(default=0.0, ge=0)
    # --- CPU timeline: the engine-core thread ----------------------------------------------------
    # From an engine call's start until a full-graph (decode) step is launched: scheduling,
    # input preparation, the graph replay and the sampler's launch; per call and per
    # scheduled sequence.
    cpu_step_s: float = Field(default=0.0, ge=0)
    cpu_seq_s: float = Field(default=0.0, ge=0)
    # ... of which the sampler's launch, after the graph replay: the GPU can start before it.
    sample_launch_s: float = Field(default=0.0, ge=0)
    # Launching a piecewise-graph step (prefill within the capture size): per layer, the
    # attention kernels launched between the graph pieces.
    piecewise_layer_s: float = Field(default=0.0, ge=0)
    # Launching a step larger than the biggest captured graph, which runs eagerly: per layer,
    # every kernel launched from Python; plus this per MoE layer (router, top-k, permutation
    # and grouped-GEMM launches). The GPU cannot finish the step before its last launch.
    eager_layer_s: float = Field(default=0.0, ge=0)
    eager_moe_layer_s: float = Field(default=0.0, ge=0)
    # ... and their extra per layer under FP8 W8A8, whose layers launch more kernels (activation
    # quantisation before each scaled GEMM): measured as FP8 runs' launches less the same
    # model's 16-bit runs' (simulator.engine_thread).
    piecewise_fp8_layer_s: float = Field(default=0.0, ge=0)
    eager_fp8_layer_s: float = Field(default=0.0, ge=0)
    # Harvesting a finished batch and emitting its tokens (waiting on its output copy,
    # update_from_output, the engine loop's turn): per call and per sequence in the batch.
    output_s: float = Field(default=0.0, ge=0)
    output_seq_s: float = Field(default=0.0, ge=0)
    # ... and this much more in a call that launched nothing (the last before the engine idles):
    # it blocks on the batch in flight and harvests it late, so the last tokens before an idle
    # spell reach the client later than a busy engine's (simulator.engine_thread).
    drain_s: float = Field(default=0.0, ge=0)
    # ... and this much more when the call waited for a batch that held prefill (its first
    # tokens): a first token that waits for its prefill on the GPU goes out later.
    prefill_harvest_s: float = Field(default=0.0, ge=0)
    # How a call's preparation and launch vary from call to call: the log-sd of a lognormal
    # factor of mean 1 on each step the replica places one by one (simulator.jitter); measured
    # from timeline runs, each call against its run's typical one. 0: every call takes the mean.
    launch_jitter: float = Field(default=0.0, ge=0, le=1)
    # --- outside the engine ----------------------------------------------------------------------
    # Per request, outside the engine loop (a server's API front end; the profiler's own
    # bookkeeping): shifts first-token and finish times, not the engine. Measured by `simulate
    # calibrate` on requests served alone: median of measured TTFT minus the simulated one.
    request_latency_s: float = Field(default=0.0, ge=0)


class MemoryModel(BaseModel):
    """What vLLM's start-up memory profiling sets aside beyond the weights and the dense
    activation formula in deployment.py (``_activation_reserve``). Measured from the vLLM 0.25.1
    logs of every committed run (measurements/*/logs: 'Model loading took', 'Available KV cache
    memory'; profiles/calibration/defaults.toml [memory] says how)."""

    model_config = ConfigDict(extra="forbid")
    # Outside torch's allocator (CUDA context, cuBLAS and NCCL state) plus what the weights
    # formula misses: the residual of the dense 16-bit runs, per GPU.
    nontorch_gib: float = Field(ge=0)
    # MoE models (vLLM's V1 model runner; fused-MoE workspaces, routing buffers and its CUDA-graph
    # memory estimate): bytes per (batched token x top-k x hidden unit). Qwen3-30B-A3B at 8192
    # batched tokens: 2.65 GiB on both the H100 and the H200. Other MoE shapes: scaled by this,
    # an assumption.
    moe_routed_bytes: float = Field(default=21.2, ge=0)
    # Speculative decoding (also the V1 runner: its sampler's dummy run, the drafter's, and its
    # CUDA-graph memory estimate): one measured constant, Llama-3.1-8B with a Llama-3.2-1B draft,
    # k=4, 1024 seqs, 8192 batched tokens on the H100 (3.13 GiB); other drafts and shapes assume it.
    spec_reserve_gib: float = Field(default=3.13, ge=0)


class CalibrationProfile(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    calibrated: bool
    error_band: float = Field(ge=0)
    error_band_fp8: float | None = Field(default=None, ge=0)
    error_band_moe: float | None = Field(default=None, ge=0)
    efficiency: Efficiency
    overhead: Overhead
    memory: MemoryModel
    path: str = ""
    # Set on a profile borrowed from another GPU's measurements (see select_profile).
    transferred_from: str | None = None


def load_profile(path: Path) -> CalibrationProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return CalibrationProfile(**data, path=str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read calibration profile: {e}", file=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not valid TOML: {e}", file=str(path)) from None
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(
            err["msg"], file=str(path), field=".".join(str(x) for x in err["loc"])
        ) from None


def measured_gpus() -> list[str]:
    """GPUs with a fitted profile (``profiles/calibration/<gpu>/*.toml``)."""
    root = profiles_dir() / "calibration"
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.toml")))


def _measured(root: Path, gpu_name: str) -> CalibrationProfile | None:
    found = sorted((root / gpu_name).glob("*.toml"), reverse=True)
    return load_profile(found[0]) if found else None


def select_profile(gpu_name: str, explicit: str | None,
                   transfer_from: tuple[str, ...] = ()) -> CalibrationProfile:
    """The profile for a GPU: an explicit path; else the one measured on that GPU; else the
    first measured one among ``transfer_from`` (nearest GPUs first), its efficiencies and
    overheads carried over but marked uncalibrated, with the defaults' wider error bands; else
    the datasheet defaults."""
    root = profiles_dir() / "calibration"
    if explicit and explicit != "none":
        p = Path(explicit)
        if not p.is_file():
            raise InputError("calibration profile not found", file=explicit, field="calibration")
        return load_profile(p)
    own = None if explicit == "none" else _measured(root, gpu_name)
    if own is not None:
        return own
    defaults = load_profile(root / "defaults.toml")
    if explicit == "none":
        return defaults
    for other in transfer_from:
        src = _measured(root, other)
        if src is None:
            continue
        return src.model_copy(update={
            "name": f"transferred from {src.name}", "calibrated": False, "transferred_from": src.name,
            "error_band": max(src.error_band, defaults.error_band),
            "error_band_fp8": max(src.error_band, defaults.error_band_fp8 or 0),
            "error_band_moe": max(src.error_band, defaults.error_band_moe or 0),
        })
    return defaults


# The serving host's CPU time: the engine thread's costs (simulator.engine_thread measures all
# but the draft model's launches from a run's timeline). ``--host-speed`` scales them together:
# engines launch 0.7-1.6x the H200 profile's times across the hosts measured (validation.csv's
# host_speed), the same GPU work on every one.
ENGINE_THREAD_KEYS = ("cpu_step_s", "cpu_seq_s", "sample_launch_s", "piecewise_layer_s",
                      "eager_layer_s", "eager_moe_layer_s", "piecewise_fp8_layer_s",
                      "eager_fp8_layer_s", "output_s", "output_seq_s", "drain_s",
                      "prefill_harvest_s", "draft_layer_pass_s")


def with_host_speed(cal: CalibrationProfile, factor: float) -> CalibrationProfile:
    """``cal`` on a host whose engine thread takes ``factor`` times the profile's time (1.2: a
    CPU 20% slower than the hosts the profile was fitted on); the GPU's costs unchanged."""
    o = cal.overhead
    return cal.model_copy(update={"overhead": o.model_copy(update={
        k: getattr(o, k) * factor for k in ENGINE_THREAD_KEYS})})


def error_band(cal: CalibrationProfile, fp8: bool, moe: bool) -> float:
    """The stated uncertainty for this precision and model class (widest that applies)."""
    bands = [cal.error_band]
    if fp8 and cal.error_band_fp8 is not None:
        bands.append(cal.error_band_fp8)
    if moe and cal.error_band_moe is not None:
        bands.append(cal.error_band_moe)
    return max(bands)
