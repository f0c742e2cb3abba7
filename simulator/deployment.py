"""Resolve a SimulationConfig into a concrete deployment, recording where every value came from.

This is where vLLM's start-up logic is reproduced: default batch limits per GPU class, the
smallest tensor-parallel size whose weights fit, the KV-cache size left after weights and the
profiling run's activations, and the max model length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from simulator.accuracy import measured_error, run_key
from simulator.config import SimulationConfig
from simulator.cost import speculative
from simulator.cost.calibration import (
    CalibrationProfile,
    MemoryModel,
    error_band,
    measured_gpus,
    select_profile,
    with_host_speed,
)
from simulator.cost.gemm_shapes import excess
from simulator.cost.quantization import Precision, precision
from simulator.cost.roofline import Roofline
from simulator.errors import InputError
from simulator.gpu import GIB, GPUSpec, get_gpu, parse_deployment
from simulator.model import ModelSpec, load_model

VLLM_DEFAULTS_SRC = "vLLM EngineArgs.get_batch_defaults (OpenAI server usage context)"
# vLLM 0.25 turns async scheduling off for these speculative methods (VllmConfig.__post_init__).
SYNC_SPEC_METHODS = ("ngram", "draft_model")


@dataclass
class Deployment:
    gpu: GPUSpec
    num_gpus: int
    model: ModelSpec
    tp: int
    replicas: int
    precision: Precision
    calibration: CalibrationProfile
    roofline: Roofline
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int
    gpu_memory_utilization: float
    num_kv_blocks: int
    kv_bytes_per_token: float
    weight_bytes_per_gpu: float
    activation_reserve_bytes: float
    gpu_cost_per_hour: float
    router: str
    error_band: float
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    prefix_caching: bool = True
    hash_block_size: int = 512
    pp: int = 1  # pipeline stages per replica
    prefill_replicas: int = 0  # disaggregated serving: the first P replicas only prefill
    kv_transfer_bytes_per_s: float = 0.0  # per GPU, prefill to decode replica
    kv_transfer_latency_s: float = 0.0
    # The profile's errors against real vLLM on runs measured like this one (simulator.accuracy)
    measured_error: dict | None = None

    @property
    def async_scheduling(self) -> bool:
        """vLLM 0.25 turns async scheduling off for draft-model and n-gram speculation
        (``VllmConfig.__post_init__``); EAGLE/MTP keep it."""
        return self.roofline.async_sched

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def describe(self) -> dict:
        """The resolved config, as summary.json records it."""
        c = self.calibration
        return {
            "gpu": self.gpu.name,
            "gpu_display_name": self.gpu.display_name,
            "num_gpus": self.num_gpus,
            "model": self.model.name,
            "model_source": self.model.source,
            "model_params_b": round(self.model.total_params() / 1e9, 3),
            "tensor_parallel_size": self.tp,
            "pipeline_parallel_size": self.pp,
            "data_parallel_replicas": self.replicas,
            "router": self.router,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "cudagraph_max_tokens": self.roofline.graph_max_tokens,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "precision": self.precision.label,
            "speculative_decoding": self.roofline.spec.label() if self.roofline.spec else None,
            "async_scheduling": self.async_scheduling,
            "disaggregate": (f"{self.prefill_replicas}:{self.replicas - self.prefill_replicas}"
                             if self.prefill_replicas else None),
            "kv_transfer_gbs": self.kv_transfer_bytes_per_s / 1e9 if self.prefill_replicas
            else None,
            "enable_prefix_caching": self.prefix_caching,
            "hash_block_size": self.hash_block_size,
            "weight_bytes_per_gpu": self.weight_bytes_per_gpu,
            "activation_reserve_bytes": self.activation_reserve_bytes,
            "kv_cache_blocks_per_replica": self.num_kv_blocks,
            "kv_cache_tokens_per_replica": self.kv_capacity_tokens,
            "kv_bytes_per_token_per_gpu": self.kv_bytes_per_token,
            "gpu_cost_per_hour_usd": self.gpu_cost_per_hour,
            "gpu_peak_bf16_tflops": self.gpu.dense_tflops["bf16"],
            "gpu_memory_bandwidth_gbs": self.gpu.memory_bandwidth_gbs,
            "calibration": {
                "name": c.name,
                "path": c.path,
                "calibrated": c.calibrated,
                "error_band": self.error_band,
                "efficiency": c.efficiency.model_dump(),
                "overhead": c.overhead.model_dump(),
                "memory": c.memory.model_dump(),
            },
            "provenance": self.provenance,
        }


def _precision(cfg: SimulationConfig, model: ModelSpec, gpu: GPUSpec, prov: dict) -> Precision:
    e = cfg.engine
    quant = e.quantization or model.checkpoint_quantization
    if quant:
        prov["quantization"] = (f"--quantization {quant}" if e.quantization
                                else "checkpoint quantization_config")
    dtype = "fp16" if e.dtype == "float16" else "bf16"
    return precision(quant, e.sparsity, e.kv_cache_dtype, dtype, gpu, prov)


def _activation_reserve(model: ModelSpec, tp: int, tokens: int, prec: Precision,
                        mem: MemoryModel, spec: bool) -> float:
    """What vLLM 0.25.1's start-up profiling run peaks at above the weights, as its logs show
    (profiles/calibration/defaults.toml [memory]): the hidden states and residual of
    max-num-batched-tokens tokens, one 16-bit buffer the size of the LM head (vocab x hidden /
    TP), the 8-bit copy of the tokens' activations under W8A8 (FP8 or INT8, dense or 2:4
    sparse: the GEMM dtype decides, not the weights' bytes), and for the runs vLLM serves with
    its V1 model runner (MoE, speculative decoding) their measured extra. max-num-seqs does not
    enter: 64 and 1024 left the same KV cache."""
    reserve = tokens * 2 * model.hidden * prec.act_bytes + model.vocab * model.hidden / tp * 2
    if prec.gemm_dtype in ("fp8", "int8"):
        reserve += tokens * model.hidden
    top_k = max((g.moe.top_k for g in model.groups if g.moe), default=0)
    reserve += tokens * top_k * model.hidden * mem.moe_routed_bytes
    return reserve + (mem.spec_reserve_gib * GIB if spec else 0.0)


def calibration_range_warnings(cal: CalibrationProfile, model: str, prec: Precision,
                               tp: int) -> list[str]:
    """Where this deployment leaves what the profile was fitted on (its [provenance]): a model
    or precision, or a tensor-parallel size it never saw. (Context lengths depend on the trace:
    :func:`context_range_warning`.)"""
    prov = (cal.model_extra or {}).get("provenance")
    if not prov:
        return []
    out = []
    key = model + (" fp8" if prec.gemm_dtype == "fp8" else "")
    if key not in prov.get("models", []):
        out.append(f"{key} is outside the calibration's models ({', '.join(prov['models'])}): "
                   "its step costs are extrapolated from theirs")
    if tp > prov.get("max_tensor_parallel_size", 1):
        out.append(f"tensor-parallel size {tp} was not measured (calibration is TP1): "
                   "all-reduce costs are datasheet-based")
    return out


def context_range_warning(cal: CalibrationProfile, longest: int) -> list[str]:
    """A warning when the trace's longest request (prompt + output) is longer than any context
    the profile was measured at."""
    prov = (cal.model_extra or {}).get("provenance") or {}
    top = prov.get("max_model_len")
    if top is None or longest <= top:
        return []
    return [f"requests reach {longest} tokens of context, beyond the calibration's {top}: "
            "long-context attention is extrapolated"]


def nearest_measured(gpu: GPUSpec) -> tuple[str, ...]:
    """Measured GPUs to borrow a profile from: a MIG slice's parent, then GPUs of the same
    architecture, then the rest (Hopper first, the most measured)."""
    measured = measured_gpus()
    arch = {n: get_gpu(n).architecture for n in measured}
    order = sorted(measured, key=lambda n: (arch[n] != gpu.architecture, arch[n] != "hopper", n))
    return tuple(([gpu.mig_parent] if gpu.mig_parent else []) + order)


def resolve(cfg: SimulationConfig) -> Deployment:
    gpu, count = parse_deployment(cfg.gpu)
    model = load_model(cfg.model)
    e = cfg.engine
    prov: dict[str, str] = {"gpu": "profiles/hardware (datasheet figures, see sources)"}
    prec = _precision(cfg, model, gpu, prov)
    cal = select_profile(gpu.name, cfg.calibration, nearest_measured(gpu))
    if cal.transferred_from:
        prov["calibration"] = (f"{cal.name}: efficiencies and overheads carried over from the "
                               "nearest measured GPU; uncalibrated for this one")
    if cfg.host_speed != 1.0:
        cal = with_host_speed(cal, cfg.host_speed)
        prov["host_speed"] = (f"--host-speed {cfg.host_speed:g}: the engine thread's costs "
                              f"(preparation, launches, harvest) x{cfg.host_speed:g} the profile's")
    big = gpu.usable_memory_gib >= 70 and "a100" not in gpu.name
    seqs = e.max_num_seqs or (1024 if big else 256)
    tokens = e.max_num_batched_tokens or (8192 if big else 2048)
    if e.max_num_seqs is None:
        prov["max_num_seqs"] = f"{VLLM_DEFAULTS_SRC}: {seqs} on {'>=70 GiB non-A100' if big else 'this'} GPU"
    if e.max_num_batched_tokens is None:
        prov["max_num_batched_tokens"] = f"{VLLM_DEFAULTS_SRC}: {tokens}"
    tokens = max(tokens, seqs) if e.max_num_batched_tokens is None else tokens
    if tokens < seqs:
        raise InputError(f"must be >= max-num-seqs ({seqs})", field="max-num-batched-tokens")

    def graphs(q: int) -> int:
        """Largest CUDA-graph step in tokens (VllmConfig._set_cudagraph_sizes, vLLM 0.25.1)."""
        if e.enforce_eager:
            prov["cudagraphs"] = "--enforce-eager: every step runs eagerly"
            return 0
        size = e.max_cudagraph_capture_size or min(seqs * q * 2, 512)
        prov["cudagraphs"] = (
            f"captured up to {min(size, tokens)} tokens ("
            + ("--max-cudagraph-capture-size" if e.max_cudagraph_capture_size else
               "vLLM's default min(2 x max-num-seqs x (1 + speculative tokens), 512)")
            + ", capped at max-num-batched-tokens); larger steps run eagerly")
        return min(size, tokens)

    pp = e.pipeline_parallel_size
    stage_layers = -(-model.num_layers // pp)
    if count % pp:
        raise InputError(f"{count} GPUs do not split into {pp} pipeline stages",
                         field="pipeline-parallel-size")
    if pp > model.num_layers:
        raise InputError(f"{model.num_layers} layers do not split into {pp} stages",
                         field="pipeline-parallel-size")
    stage_gpus = count // pp  # TP groups are formed within each pipeline stage

    def budget(tp: int) -> tuple[float, float, Roofline]:
        rf = Roofline(model, gpu, tp, prec, cal)
        rf.pp = pp
        rf.spec = speculative.build(e.speculative_config, model,
                                    lambda m: Roofline(m, gpu, tp, prec, cal))
        if rf.spec is not None:
            rf.q = rf.spec.k + 1
        rf.graph_max_tokens = graphs(rf.q)
        rf.gemm_excess = _gemm_excess(gpu, model, tp, prec, prov)
        rf.async_sched = rf.spec is None or rf.spec.method not in SYNC_SPEC_METHODS
        act = _activation_reserve(model, tp, tokens, prec, cal.memory, rf.spec is not None)
        # Each pipeline stage holds its share of the layers (the largest share: ceil).
        avail = (gpu.usable_memory_bytes * e.gpu_memory_utilization
                 - weights(rf) * stage_layers / model.num_layers
                 - act - cal.memory.nontorch_gib * GIB)
        return avail, act, rf

    def weights(rf: Roofline) -> float:
        return rf.weight_bytes_per_gpu() + (rf.spec.weight_bytes_per_gpu() if rf.spec else 0.0)

    if e.tensor_parallel_size:
        tp = e.tensor_parallel_size
        if tp > stage_gpus:
            raise InputError(f"{tp} exceeds the {stage_gpus} GPU(s) of --gpu {cfg.gpu}"
                             + (" per pipeline stage" if pp > 1 else ""),
                             field="tensor-parallel-size")
        if stage_gpus % tp:
            raise InputError(f"{stage_gpus} GPUs do not split into TP{tp} replicas",
                             field="tensor-parallel-size")
        avail, act, rf = budget(tp)
        prov["tensor_parallel_size"] = "--tensor-parallel-size"
    else:
        tp = 1
        while True:
            avail, act, rf = budget(tp)
            if avail > 0 and (model.num_heads % tp == 0):
                break
            if tp * 2 > stage_gpus:
                raise InputError(
                    f"{model.name} ({model.total_params() / 1e9:.1f}B params, "
                    f"{rf.weight_bytes_per_gpu() * tp / GIB:.1f} GiB of weights) does not fit on "
                    f"{count} x {gpu.display_name}; add GPUs"
                    + (" or use --quantization fp8" if prec.weight_bytes > 1 else ""),
                    field="gpu",
                )
            tp *= 2
        prov["tensor_parallel_size"] = "smallest power of two whose weights fit, as vLLM needs"
    if tp > 1 and gpu.mig_parent:
        raise InputError("MIG slices have no NVLink or P2P: tensor parallelism across slices is "
                         "not possible", field="tensor-parallel-size")
    if model.num_heads % tp:
        raise InputError(f"{model.num_heads} attention heads do not split {tp} ways",
                         field="tensor-parallel-size")
    if avail <= 0:
        raise InputError(
            f"no memory left for the KV cache on {gpu.display_name} with TP{tp} "
            f"(weights {rf.weight_bytes_per_gpu() / GIB:.1f} GiB per GPU)",
            field="tensor-parallel-size",
        )
    if e.enable_prefix_caching and e.hash_block_size % e.block_size:
        raise InputError(f"{e.hash_block_size} is not a multiple of --block-size {e.block_size}",
                         field="hash-block-size")
    kv_token = rf.kv_bytes_token_layer * stage_layers + (
        rf.spec.kv_bytes_per_token() if rf.spec else 0.0)
    blocks = int(avail // (kv_token * e.block_size))
    cap = blocks * e.block_size
    if e.max_model_len:
        if e.max_model_len > cap:
            raise InputError(
                f"{e.max_model_len} tokens do not fit in the KV cache ({cap} tokens); "
                "vLLM refuses to start like this", field="max-model-len")
        max_len = e.max_model_len
        prov["max_model_len"] = "--max-model-len"
    else:
        max_len = min(model.max_position, cap)
        prov["max_model_len"] = (
            "model max_position_embeddings" if max_len == model.max_position
            else f"KV-cache capacity ({cap} tokens) < max_position_embeddings "
                 f"({model.max_position}); vLLM would ask for --max-model-len"
        )
    cost = cfg.gpu_cost_per_hour if cfg.gpu_cost_per_hour is not None else gpu.cost_per_gpu_hour_usd
    prov["gpu_cost_per_hour_usd"] = (
        "--gpu-cost" if cfg.gpu_cost_per_hour is not None
        else gpu.sources.get("cost_per_gpu_hour_usd", "derived from parent GPU price")
    )
    band = error_band(cal, prec.gemm_dtype == "fp8" or prec.weight_bytes < 2, model.is_moe)
    prov["calibration"] = prov.get("calibration", (
        f"measured profile {cal.path}" if cal.calibrated
        else f"uncalibrated: datasheet defaults ({cal.path}), +-{band:.0%} error band"
    ))
    warnings = calibration_range_warnings(cal, model.name, prec, tp)
    replicas = count // (tp * pp)
    prefill, kv_bw = _disaggregation(cfg, gpu, replicas, cal, prov)
    return Deployment(
        gpu=gpu, num_gpus=count, model=model, tp=tp, replicas=replicas, precision=prec,
        calibration=cal, roofline=rf, max_num_seqs=seqs, max_num_batched_tokens=tokens,
        max_model_len=max_len, block_size=e.block_size,
        gpu_memory_utilization=e.gpu_memory_utilization, num_kv_blocks=blocks,
        kv_bytes_per_token=kv_token,
        weight_bytes_per_gpu=weights(rf) * stage_layers / model.num_layers,
        activation_reserve_bytes=act, gpu_cost_per_hour=cost, router=cfg.router,
        error_band=band, provenance=prov, warnings=warnings,
        prefix_caching=e.enable_prefix_caching, hash_block_size=e.hash_block_size,
        pp=pp, prefill_replicas=prefill, kv_transfer_bytes_per_s=kv_bw,
        kv_transfer_latency_s=cfg.kv_transfer_latency_s if prefill else 0.0,
        measured_error=measured_error(cal, run_key(
            model.name, e.quantization, e.kv_cache_dtype, e.speculative_config is not None, tp,
            pp)),
    )


def _disaggregation(cfg: SimulationConfig, gpu: GPUSpec, replicas: int, cal: CalibrationProfile,
                    prov: dict) -> tuple[int, float]:
    """Prefill replicas and the per-GPU KV-transfer bandwidth of ``--disaggregate P:D``."""
    if cfg.disaggregate is None:
        return 0, 0.0
    if cfg.engine.pipeline_parallel_size > 1:
        raise InputError("disaggregation with pipeline parallelism is not modelled",
                         field="disaggregate")
    p, d = (int(x) for x in cfg.disaggregate.split(":"))
    if p < 1 or d < 1 or p + d != replicas:
        raise InputError(f"{cfg.disaggregate} needs {p + d} replicas, the deployment has "
                         f"{replicas} (GPUs / tensor-parallel size)", field="disaggregate")
    if cfg.kv_transfer_gbs is not None:
        prov["kv_transfer_gbs"] = "--kv-transfer-gbs"
        return p, cfg.kv_transfer_gbs * 1e9
    link, name = gpu.interconnect_gbs()
    # One direction of the GPU's link (datasheets print both directions), at the measured
    # collective efficiency: every TP rank ships its own KV shard in parallel.
    prov["kv_transfer_gbs"] = (f"{name} {link} GB/s / 2 (one direction) x comm_bus "
                               f"{cal.efficiency.comm_bus} (same node; --kv-transfer-gbs for "
                               "RDMA across nodes)")
    return p, link / 2 * 1e9 * cal.efficiency.comm_bus


def _gemm_excess(gpu, model, tp: int, prec, prov: dict) -> dict[int, float]:
    """The sizes where this model's 16-bit dense GEMMs were measured off the curve on this GPU
    (simulator.cost.gemm_shapes; the tables hold TP1 shapes), said in the provenance."""
    if tp != 1 or prec.gemm_dtype not in ("bf16", "fp16") or model.is_moe:
        return {}
    found, tables = excess(gpu.name, model.name)
    if found:
        prov["gemm_shapes"] = ("measured: " + ", ".join(
            f"GEMMs at {m} tokens x{f:.2f} the curve" for m, f in found.items())
            + f" (profiles/calibration/operators: {', '.join(tables)}; steps padded to that "
            "CUDA graph, or eager at that size)")
    return found


def with_calibration(dep: Deployment, cal: CalibrationProfile) -> Deployment:
    """The same deployment costed under another calibration profile (calibrate's candidates):
    a fresh roofline with the resolved graph limit, scheduling mode, speculation and stages."""
    old = dep.roofline
    rf = Roofline(dep.model, dep.gpu, dep.tp, dep.precision, cal)
    rf.pp, rf.spec, rf.q = old.pp, old.spec, old.q
    rf.graph_max_tokens, rf.async_sched = old.graph_max_tokens, old.async_sched
    rf.gemm_excess = old.gemm_excess
    return dataclasses.replace(dep, calibration=cal, roofline=rf)
