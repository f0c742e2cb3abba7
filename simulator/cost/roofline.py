"""Roofline cost of one vLLM engine step, per operator, and its CPU side.

Each operator takes ``max(FLOPs / achieved compute, HBM bytes / achieved bandwidth,
wire bytes / achieved link bandwidth) + fixed latency`` (for GEMMs a soft maximum, see
:meth:`Roofline.op_time`), where achieved = datasheet peak x an efficiency from the calibration
profile. All figures are per GPU of one tensor-parallel group (weights and heads split ``tp``
ways). A step's GPU work adds its fixed GPU costs; its CPU side (scheduling and input
preparation, then a graph replay, a piecewise launch or, above the CUDA-graph capture size, an
eager launch of every kernel) runs on the engine thread, which :mod:`simulator.engine_loop`
overlaps with the GPU as vLLM does.

Between two scheduler events a replica only decodes, so :meth:`Roofline.decode_run` hands the
run to :class:`~simulator.cost.decode_run.DecodeRun`, which sums its steps in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from simulator.cost.calibration import CalibrationProfile
from simulator.cost.decode_run import DecodeRun
from simulator.cost.fixed import FixedCosts
from simulator.cost.gemm_shapes import run_size
from simulator.cost.quantization import Precision
from simulator.gpu import GPUSpec
from simulator.model import ModelSpec

INF = math.inf
# GEMMs compute at their fitted rate up to this many tokens, slower beyond by
# ``gemm_compute_decay`` (see :class:`~simulator.cost.calibration.Efficiency`).
GEMM_DECAY_FROM = 2048
# Memoised count-only parts of general steps (Roofline.step): 4,305 entries for a 100k-request
# day on h100x8, a 96% hit rate; cleared beyond this many.
STEP_CACHE_MAX = 200_000


@dataclass(frozen=True)
class OpCost:
    """One operator of a step, summed over the layers it appears in (``count``)."""

    name: str
    count: int
    flops: float
    hbm_bytes: float
    wire_bytes: float
    time_s: float
    bound: str

    @property
    def intensity(self) -> float:
        return self.flops / self.hbm_bytes if self.hbm_bytes else INF


class StepCost(NamedTuple):
    """One step's cost (a named tuple: built per general step and per decode run)."""

    time_s: float  # GPU work: operators plus fixed GPU costs
    flops: float
    hbm_bytes: float
    cpu_s: float = 0.0  # engine thread, call start to first kernel: schedule, prepare inputs
    launch_s: float = 0.0  # engine thread launching the rest: sampler, piecewise/eager layers


GEMMS = frozenset({"attn_proj(qkv,o)", "mlp", "moe_experts", "lm_head"})


@cache
def _is_gemm(name: str) -> bool:
    """Projection, MLP, expert and lm_head operators (the target's or the draft's)."""
    if name.startswith("draft:"):
        name = name[6:].removesuffix("(prefill)")
    return name in GEMMS


class Roofline(FixedCosts):
    """Step-cost model for one (model, GPU, TP, precision, calibration): GPU operators here,
    fixed GPU and engine-thread costs in :class:`~simulator.cost.fixed.FixedCosts`."""

    def __init__(
        self, model: ModelSpec, gpu: GPUSpec, tp: int, prec: Precision, cal: CalibrationProfile
    ) -> None:
        self.model, self.gpu, self.tp, self.prec, self.cal = model, gpu, tp, prec, cal
        e, bw = cal.efficiency, gpu.memory_bandwidth
        m = model
        # 8-bit W8A8 GEMMs (FP8, and INT8 by assumption: the same scaled-GEMM kernel family)
        # use the fitted 8-bit efficiency where a profile has one.
        eight = prec.gemm_dtype in ("fp8", "int8") and e.gemm_compute_fp8
        gemm_eff = e.gemm_compute_fp8 if eight else e.gemm_compute
        self.rc_gemm = gpu.peak_flops(prec.gemm_dtype) * gemm_eff * prec.gemm_rate_factor
        w4 = prec.scheme in ("awq", "gptq")
        self.moe_eff = e.moe_gemm or 1.0
        # lm_head stays 16-bit under every quantization scheme: 16-bit rate and streaming.
        self.rc_head = gpu.peak_flops(prec.attn_dtype) * e.gemm_compute
        self.rm_head = bw * e.gemm_memory
        self.gemm_p = e.gemm_roofline_p or INF
        self.gemm_decay = (e.gemm_compute_decay_fp8 if eight and e.gemm_compute_decay_fp8
                           is not None else e.gemm_compute_decay) or 0.0
        self.rm_gemm = bw * (e.gemm_memory_fp8 if eight and e.gemm_memory_fp8 else e.gemm_memory)
        self.fp8_step = prec.gemm_dtype in ("fp8", "int8")
        if w4:  # Marlin: dequantise in registers, stream 4-bit weights
            self.rc_gemm *= e.w4a16_compute or 1.0
            self.rm_gemm *= e.w4a16_stream or 1.0
        self.rc_attn_p = gpu.peak_flops(prec.attn_dtype) * e.attn_prefill_compute
        self.rm_attn_p = bw * e.attn_prefill_memory
        self.rc_attn_d = gpu.peak_flops(prec.attn_dtype) * e.attn_decode_compute
        self.rm_attn_d = bw * e.attn_decode_memory
        # Decodes batched with prefill run in the same varlen attention kernel as the prompts.
        self.rm_attn_mix = bw * (e.attn_mixed_decode_memory or e.attn_decode_memory)
        if prec.kv_bytes == 1 and e.attn_fp8_kv:  # the same kernels reading an FP8 cache
            self.rm_attn_d *= e.attn_fp8_kv
            self.rm_attn_mix *= e.attn_fp8_kv
        self.rm_elem = bw * e.elementwise_memory
        # Prefill steps slow with the GPU's recent compute load (simulator.cost.power). A fit
        # that finds none stops at its bound, 0, within rounding (the H100's: 3e-15); below 1e-9
        # it moves no step by a nanosecond, and the replica then skips tracking the load.
        k = e.power_slowdown or 0.0
        self.power_k = k if k > 1e-9 else 0.0
        link_gbs, self.link_name = gpu.interconnect_gbs()
        # A ring all-reduce moves 2(tp-1)/tp of the message out of each GPU, one direction.
        self.rn = link_gbs / 2 * 1e9 * e.comm_bus
        self.layers = m.num_layers
        self.moe_layers = sum(g.count for g in m.groups if g.moe is not None)
        ab = prec.act_bytes
        # KV cache per token per layer on one GPU. MLA's latent is shared by all heads, so every
        # TP rank keeps all of it; GQA replicates KV heads when tp > kv heads.
        kv_el = m.kv_elements_per_token_per_layer()
        self.kv_elems_shard = kv_el if m.mla else kv_el * max(m.num_kv_heads / tp, 1) / m.num_kv_heads
        self.kv_bytes_token_layer = self.kv_elems_shard * prec.kv_bytes
        heads = m.num_heads / tp
        if m.mla:  # FLOPs per (query, key) pair per head: absorbed form for decode, expanded for prefill
            qk = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim
            self.pair_flops_prefill = heads * (2 * qk + 2 * m.mla.v_head_dim)
            self.pair_flops_decode = heads * (4 * m.mla.kv_lora_rank + 2 * m.mla.qk_rope_head_dim)
            q_width = m.num_heads * qk / tp
        else:
            self.pair_flops_prefill = self.pair_flops_decode = heads * 4 * m.head_dim
            q_width = m.num_heads * m.head_dim / tp
        # Per-token bytes of the query read and output written by attention.
        self.attn_qo_bytes = 2 * q_width * ab
        self.attn_params = m.attn_params() / tp
        self.attn_act = ab * (2 * m.hidden + 2 * q_width + 2 * kv_el / max(tp, 1))
        self.groups = []
        for g in m.groups:
            if g.moe is None:
                self.groups.append((g.count, None, 3 * m.hidden * m.intermediate / tp, 0.0, 0.0))
            else:
                mo = g.moe
                self.groups.append((
                    g.count, mo, 3 * m.hidden * mo.expert_intermediate / tp,
                    3 * m.hidden * mo.shared_intermediate / tp, float(m.hidden * mo.num_experts),
                ))
        self.head_params = m.hidden * m.vocab / tp
        self.elem_bytes_token = ab * 6 * m.hidden  # 2 norms + residual in/out per layer
        self.overhead = cal.overhead
        # Speculative decoding (set by the deployment): q = k+1 positions verified per decoding
        # sequence per step, and the draft's own cost.
        self.spec = None
        self.q = 1
        self.pp = 1  # pipeline stages (set by the deployment)
        # Largest step (in tokens) vLLM runs from a captured CUDA graph (set by the deployment
        # from --max-cudagraph-capture-size / --enforce-eager). Larger steps run eagerly: the
        # CPU launches every kernel of every layer, and the step cannot end before that.
        self.graph_max_tokens = INF
        # vLLM's async scheduling (set by the deployment): the engine thread's cost overlaps
        # the GPU's; without it, it is serial (see simulator.engine_loop).
        self.async_sched = True
        # Sizes where the GEMMs run off the curve, measured (set by the deployment;
        # simulator.cost.gemm_shapes): {tokens the GEMMs run at: factor on their time}.
        self.gemm_excess: dict[int, float] = {}
        self._k_cache: dict[int, tuple] = {}
        self._layer_cache: dict[int, tuple[float, float, float]] = {}
        self._step_cache: dict[tuple[int, int, int, bool, bool], tuple] = {}

    # --- weights -----------------------------------------------------------------------------
    def weight_bytes_per_gpu(self) -> float:
        m, wb = self.model, self.prec.weight_bytes
        layers = sum(g.count * (m.attn_params() + m.mlp_params(g.moe)) for g in m.groups)
        head = 0 if m.tie_embeddings else m.lm_head_params()
        # vLLM keeps embeddings and lm_head in 16-bit under FP8/INT quantization.
        return (layers * wb + (m.embedding_params() + head) * 2) / self.tp + m.norm_params() * 2

    # --- operators ---------------------------------------------------------------------------
    def layer_ops(self, tokens: int) -> list[tuple]:
        """Operators whose cost depends only on the step's token count: projections, MLP or
        experts, norms and KV writes, tensor-parallel all-reduces.

        Each entry is ``(name, count, flops, hbm_bytes, wire_bytes, rc, rm, rn, fixed_s)``.
        """
        wb, ab, L = self.prec.weight_bytes, self.prec.act_bytes, self.layers
        out = []
        rc = self.rc_gemm * (1.0 if tokens <= GEMM_DECAY_FROM or not self.gemm_decay
                             else (tokens / GEMM_DECAY_FROM) ** -self.gemm_decay)
        slow = (self.gemm_excess.get(run_size(tokens, self.graph_max_tokens), 1.0)
                if self.gemm_excess else 1.0)
        for count, moe, mlp_p, shared_p, router_p in self.groups:
            # A measured off-curve size slows the dense layers' GEMMs (rates / factor).
            dc, dm = (rc / slow, self.rm_gemm / slow) if moe is None else (rc, self.rm_gemm)
            out.append(("attn_proj(qkv,o)", count, 2 * tokens * self.attn_params,
                        self.attn_params * wb + tokens * self.attn_act, 0.0,
                        dc, dm, INF, 0.0))
            if moe is None:
                out.append(("mlp", count, 2 * tokens * mlp_p,
                            mlp_p * wb + tokens * ab * (2 * self.model.hidden + mlp_p / self.model.hidden),
                            0.0, dc, dm, INF, 0.0))
            else:
                # Experts touched by `tokens` tokens each routed to top_k of E (uniform routing).
                touched = moe.num_experts * (1 - (1 - moe.top_k / moe.num_experts) ** tokens)
                out.append(("moe_experts", count,
                            2 * tokens * (moe.top_k * mlp_p + shared_p + router_p),
                            (touched * mlp_p + shared_p + router_p) * wb
                            + tokens * ab * (2 * self.model.hidden * (moe.top_k + 1)),
                            0.0, rc * self.moe_eff, self.rm_gemm * self.moe_eff, INF,
                            self.overhead.moe_layer_s))
        out.append(("norms+kv_write", L, 0.0,
                    tokens * (self.elem_bytes_token + self.kv_bytes_token_layer), 0.0,
                    INF, self.rm_elem, INF, 0.0))
        if self.tp > 1:
            msg = tokens * self.model.hidden * ab
            out.append((f"allreduce({self.link_name})", 2 * L, 0.0, 0.0,
                        2 * (self.tp - 1) / self.tp * msg, INF, INF, self.rn,
                        self.overhead.comm_latency_s))
        return out

    def step_ops(
        self, n_decode: int, decode_ctx: float, prefills: list[tuple[int, int]], n_logits: int,
        *, skip_decode_attention: bool = False,
    ) -> list[tuple]:
        """Operators that depend on the batch's make-up: attention, lm_head, pipeline sends."""
        tokens = n_decode * self.q + sum(n for n, _ in prefills)
        return (self.attention_ops(n_decode, decode_ctx, prefills, skip_decode_attention)
                + self.head_ops(n_logits, tokens))

    def attention_ops(self, n_decode: int, decode_ctx: float, prefills: list[tuple[int, int]],
                      skip_decode_attention: bool = False) -> list[tuple]:
        """Prefill and decode attention. ``decode_ctx`` is the summed number of tokens already
        in the KV cache of the decoding sequences; each reads its context plus the token it
        writes this step."""
        out = []
        L = self.layers
        if prefills:
            pairs = kv_read = 0.0
            for n, p in prefills:
                pairs += n * p + n * (n + 1) / 2
                kv_read += p + n
            n_pre = sum(n for n, _ in prefills)
            out.append(("attention_prefill", L, self.pair_flops_prefill * pairs,
                        kv_read * self.kv_bytes_token_layer + n_pre * self.attn_qo_bytes, 0.0,
                        self.rc_attn_p, self.rm_attn_p, INF, 0.0))
        if n_decode and not skip_decode_attention:
            q = self.q  # each sequence's queries (k+1 when verifying drafts) read its context
            ctx = decode_ctx + n_decode * q
            out.append(("attention_decode", L, self.pair_flops_decode * ctx * q,
                        ctx * self.kv_bytes_token_layer + n_decode * q * self.attn_qo_bytes, 0.0,
                        self.rc_attn_d, self.rm_attn_mix if prefills else self.rm_attn_d, INF,
                        0.0))
        return out

    def head_ops(self, n_logits: int, tokens: int) -> list[tuple]:
        """lm_head over the positions sampled, and pipeline stages' sends of ``tokens``
        hidden states: they depend on counts only."""
        out = []
        if n_logits:
            out.append(("lm_head", 1, 2 * n_logits * self.head_params,
                        self.head_params * 2 + n_logits * self.model.vocab / self.tp * 4, 0.0,
                        self.rc_head, self.rm_head, INF, 0.0))
        if self.pp > 1:
            # Each stage boundary sends the batch's hidden states to the next stage's GPUs.
            out.append((f"pp_send({self.link_name})", self.pp - 1, 0.0, 0.0,
                        tokens * self.model.hidden * self.prec.act_bytes / self.tp, INF, INF,
                        self.rn, self.overhead.comm_latency_s))
        return out

    def ops(
        self, n_decode: int, decode_ctx: float, prefills: list[tuple[int, int]], n_logits: int,
        *, skip_decode_attention: bool = False,
    ) -> list[tuple]:
        """Every operator of one step (the target's, then the draft's when speculating)."""
        q = self.q
        tokens = n_decode * q + sum(n for n, _ in prefills)
        gpu = self.layer_ops(tokens) + self.step_ops(
            n_decode, decode_ctx, prefills, n_logits + n_decode * (q - 1),
            skip_decode_attention=skip_decode_attention) + self.draft_ops(
            n_decode, decode_ctx, prefills)
        return gpu + self.cpu_ops(n_decode + len(prefills), tokens, bool(prefills),
                                  self._sum(gpu)[0], decoding=n_decode > 0)

    def draft_ops(self, n_decode: int, decode_ctx: float,
                  prefills: list[tuple[int, int]]) -> list[tuple]:
        """The draft's work in a step: k passes over the decoding sequences, one over the
        prompt chunks (see :mod:`simulator.cost.speculative`)."""
        sp = self.spec
        if sp is None or not n_decode and not prefills:
            return []
        if sp.draft is None:  # n-gram lookup on the CPU
            from simulator.cost.speculative import NGRAM_CPU_S

            return [("draft:ngram(cpu)", 1, 0.0, 0.0, 0.0, INF, INF, INF, NGRAM_CPU_S * n_decode)]
        # k passes when sequences decode; a prefill-only step runs the draft over its chunks
        # once. Their launches are the engine thread's (FixedCosts.draft_launch), not GPU work.
        d, out = sp.draft, []
        if n_decode:
            per_pass = d.layer_ops(n_decode) + d.step_ops(n_decode, decode_ctx, [], n_decode)
            out += [(f"draft:{o[0]}", o[1] * sp.k, *o[2:]) for o in per_pass]
        if prefills:
            n_pre = sum(n for n, _ in prefills)
            out += [(f"draft:{o[0]}(prefill)", *o[1:]) for o in
                    d.layer_ops(n_pre) + d.step_ops(0, 0.0, prefills, 0)]
        return out

    def op_time(self, name: str, fl: float, hb: float, wi: float, rc: float, rm: float,
                rn: float) -> float:
        """An operator's time: the slowest of its compute, memory and network times; for GEMMs a
        soft maximum (p-norm), since a real GEMM kernel near the ridge point neither streams at
        full bandwidth nor computes at full rate (the operator tables show ~15-20% above the hard
        roofline there). p = inf is the hard roofline."""
        x, y = fl / rc, hb / rm
        if self.gemm_p < INF and _is_gemm(name) and x and y:
            p = self.gemm_p
            m = max(x, y)
            return m * ((x / m) ** p + (y / m) ** p) ** (1 / p)
        return max(x, y, wi / rn)

    def _sum(self, ops: list[tuple]) -> tuple[float, float, float]:
        t = f = b = 0.0
        for name, c, fl, hb, wi, rc, rm, rn, fx in ops:
            t += c * (self.op_time(name, fl, hb, wi, rc, rm, rn) + fx)
            f += c * fl
            b += c * hb
        return t, f, b

    def step(
        self, n_decode: int, decode_ctx: float, prefills: list[tuple[int, int]], n_logits: int
    ) -> StepCost:
        """GPU work (operators and fixed GPU time) and CPU side of one step. All but attention
        (and the draft's work) depends on counts only, and is memoised per count: a general
        step recomputes just its attention."""
        q = self.q
        n_pre = len(prefills)
        tokens = n_decode * q + (prefills[0][0] if n_pre == 1 else sum(n for n, _ in prefills))
        n_logits += n_decode * (q - 1)
        n_seqs, pre, decoding = n_decode + n_pre, n_pre > 0, n_decode > 0
        key = (tokens, n_logits, n_seqs, pre, decoding)
        fixed = self._step_cache.get(key)
        if fixed is None:
            if len(self._step_cache) >= STEP_CACHE_MAX:
                self._step_cache.clear()  # a bound on memory; entries recompute identically
            lay = self._layer_cache.get(tokens)
            if lay is None:
                lay = self._layer_cache[tokens] = self._sum(self.layer_ops(tokens))
            head = self._sum(self.head_ops(n_logits, tokens))
            first = self.first_kernel(n_seqs)
            fixed = self._step_cache[key] = (
                lay[0] + head[0] + self.gpu_fixed(n_seqs, tokens, pre), lay[1] + head[1],
                lay[2] + head[2], first,
                self.cpu_prepare(n_seqs) - first + self.launch_time(tokens, pre, decoding))
        t, f, b = self._sum(self.attention_ops(n_decode, decode_ctx, prefills))
        if self.spec is not None:
            dt, df, db = self._sum(self.draft_ops(n_decode, decode_ctx, prefills))
            t, f, b = t + dt, f + df, b + db
        return StepCost(t + fixed[0], f + fixed[1], b + fixed[2], fixed[3], fixed[4])

    def explain(
        self, n_decode: int, decode_ctx: float, prefills: list[tuple[int, int]], n_logits: int
    ) -> list[OpCost]:
        rows = []
        for name, c, fl, hb, wi, rc, rm, rn, fx in self.ops(n_decode, decode_ctx, prefills, n_logits):
            times = {"compute": fl / rc, "memory": hb / rm, "network": wi / rn}
            bound = max(times, key=times.get)
            t = self.op_time(name, fl, hb, wi, rc, rm, rn)
            if fx and t == 0:
                bound = "overhead"
            rows.append(OpCost(name, c, c * fl, c * hb, c * wi, c * (t + fx), bound))
        return rows

    # --- closed form over a decode run -------------------------------------------------------
    def decode_run(self, batch: int, ctx0: float, growth: float | None = None) -> DecodeRun:
        """``batch`` sequences decoding from summed context ``ctx0``, which grows by ``growth``
        tokens a step (``batch``; more when speculating)."""
        k = self._k_cache.get(batch)
        if k is None:
            q = self.q
            lay = self._sum(self.layer_ops(batch * q))
            rest = self._sum(self.step_ops(batch, 0.0, [], batch * q, skip_decode_attention=True))
            d = self._sum([o for o in self.draft_ops(batch, 0.0, []) if
                           not o[0].startswith("draft:attention_decode")])
            gpu = lay[0] + rest[0] + d[0] + self.gpu_fixed(batch, batch * q, False)
            first = self.first_kernel(batch)
            # A step lasts serial + (constant GPU work + its attention) floored (steady).
            serial, floor = self.steady(batch, batch * q, False)
            k = (gpu + serial, lay[1] + rest[1] + d[1], lay[2] + rest[2] + d[2], floor - gpu,
                 StepCost(gpu, 0.0, 0.0, first, self.cpu_prepare(batch) - first
                          + self.launch_time(batch * q, False)), self.output_time(batch),
                 self.layers, q, self.pair_flops_decode, self.kv_bytes_token_layer,
                 batch * q * self.attn_qo_bytes, self.rc_attn_d, self.rm_attn_d)
            self._k_cache[batch] = k
        return DecodeRun(self, batch, ctx0, k, growth)
