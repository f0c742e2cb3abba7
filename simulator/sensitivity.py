"""How far a run's simulated latencies move when the GPU's work takes 2% longer.

A step-time error does not stay a step-time error. Past saturation the queue integrates it:
every request waits behind the prefill work of all requests queued ahead of it, so a 2% error
in that work becomes a 2% error in a wait that can be several times the request's own service
time. On the committed H200 runs (``simulate validate --sensitivity``, the elasticities in
``validation.csv``), 2% slower GPU work raises TTFT p50 by 7-12% on the runs past saturation
(Llama-3.1-8B at 20 and 40 req/s, FP8 at 40, Qwen2.5-14B at 20, Qwen2.5-32B at 8) and by at
most 5% at light load, where a step boundary moving across an arrival can even lower it. The elasticity
says how closely a run's step times must match for its latency targets to be reachable at all,
and how far a capacity plan near saturation can be trusted.

The probe slows only the GPU timeline: every efficiency that is a share of a datasheet rate is
divided by 1.02 and every fixed GPU time is multiplied by it; the engine thread's CPU costs, the
roofline's shape parameters and the ratios between kernel families are left as they are.
"""

from __future__ import annotations

from simulator.cost.calibration import CalibrationProfile

PROBE = 0.02  # GPU work this much slower
# Efficiencies that are shares of a datasheet rate (the others shape the roofline or are ratios
# to another kernel family, which the probe keeps).
RATES = ("gemm_compute", "gemm_memory", "attn_prefill_compute", "attn_prefill_memory",
         "attn_decode_compute", "attn_decode_memory", "elementwise_memory", "comm_bus",
         "gemm_compute_fp8", "gemm_memory_fp8", "attn_mixed_decode_memory")
# Fixed costs on the GPU timeline (simulator.cost.fixed.FixedCosts.gpu_fixed, MoE layers, comm).
GPU_FIXED = ("step_s", "per_seq_s", "prefill_step_s", "prefill_step_fp8_s", "moe_layer_s",
             "comm_latency_s")


def slower_gpu(cal: CalibrationProfile, by: float = PROBE) -> CalibrationProfile:
    """``cal`` with the GPU's work ``by`` slower: rates / (1 + by), fixed GPU times x (1 + by)."""
    eff, ovh = cal.efficiency, cal.overhead
    rates = {k: getattr(eff, k) / (1 + by) for k in RATES if getattr(eff, k) is not None}
    fixed = {k: getattr(ovh, k) * (1 + by) for k in GPU_FIXED}
    return cal.model_copy(update={"efficiency": eff.model_copy(update=rates),
                                  "overhead": ovh.model_copy(update=fixed)})


def elasticity(base: dict, slow: dict, keys: tuple[str, ...],
               by: float = PROBE) -> dict[str, float]:
    """Percent change of each ``metric.pct`` key per percent of slower GPU work, from two run
    summaries."""
    out = {}
    for key in keys:
        m, p = key.split(".")
        if base[m][p]:
            out[key] = (slow[m][p] / base[m][p] - 1) / by
    return out
