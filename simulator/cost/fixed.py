"""A step's fixed costs beyond its operators: fixed GPU time, and the engine thread's
(simulator.engine_loop) preparation, launch and harvest, each from the calibration profile's
``[overhead]``; and what they make of a step in steady state.

Mixed into :class:`~simulator.cost.roofline.Roofline`, which sets what these read: ``overhead``,
``layers``, ``moe_layers``, ``graph_max_tokens``, ``fp8_step``, ``async_sched`` and ``spec``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.cost.calibration import Overhead
    from simulator.cost.speculative import SpecDecode

INF = math.inf


class FixedCosts:
    overhead: Overhead
    layers: int
    moe_layers: int
    graph_max_tokens: float
    fp8_step: bool
    async_sched: bool
    spec: SpecDecode | None

    def gpu_fixed(self, n_seqs: int, tokens: int, has_prefill: bool) -> float:
        """Fixed GPU time of a step beyond its operators (per step, per sequence, and the
        piecewise-graph extra of a step that holds prefill within the capture size)."""
        o = self.overhead
        t = o.step_s + o.per_seq_s * n_seqs
        if has_prefill and tokens <= self.graph_max_tokens:
            t += o.prefill_step_s + (o.prefill_step_fp8_s if self.fp8_step else 0.0)
        return t

    def cpu_prepare(self, n_seqs: int) -> float:
        """Engine thread, from a call's start until a full-graph step is launched: schedule,
        prepare inputs, replay the graph, launch the sampler."""
        o = self.overhead
        return o.cpu_step_s + o.cpu_seq_s * n_seqs

    def first_kernel(self, n_seqs: int) -> float:
        """... until the step's first kernel: all of that but the sampler's launch."""
        return max(self.cpu_prepare(n_seqs) - self.overhead.sample_launch_s, 0.0)

    def launch_time(self, tokens: int, has_prefill: bool, decoding: bool = True) -> float:
        """Engine thread launching the step's kernels beyond a graph replay: the target's
        (:meth:`target_launch`) and a draft's passes (:meth:`draft_launch`)."""
        return self.target_launch(tokens, has_prefill) + self.draft_launch(decoding)

    def target_launch(self, tokens: int, has_prefill: bool) -> float:
        """The target model's launches beyond a graph replay: eager above the capture size
        (every kernel of every layer), piecewise for prefill within it; FP8 W8A8 layers launch
        more kernels."""
        o, fp8 = self.overhead, self.fp8_step
        if tokens > self.graph_max_tokens:
            return (self.layers * (o.eager_layer_s + (o.eager_fp8_layer_s if fp8 else 0.0))
                    + self.moe_layers * o.eager_moe_layer_s)
        if not has_prefill:
            return 0.0
        return self.layers * (o.piecewise_layer_s + (o.piecewise_fp8_layer_s if fp8 else 0.0))

    def draft_launch(self, decoding: bool = True) -> float:
        """Engine thread launching a draft's passes (draft model or EAGLE/MTP head): k when the
        step decodes, one over the prompt chunks of a prefill-only step, ``draft_layer_pass_s``
        per layer per pass. vLLM 0.25 feeds the draft the target's sampled tokens on the GPU
        (gpu_model_runner: "does not need to wait for bookkeeping"), so these launches queue
        behind the target's GPU work instead of waiting for it: they overlap it, and the step
        cannot end before them (a launch-bound draft's measured steps stay flat in the batch
        size). None for n-gram drafts, whose lookup is CPU work of its own."""
        sp = self.spec
        if sp is None or sp.draft is None:
            return 0.0
        return (sp.k if decoding else 1) * sp.draft.layers * self.overhead.draft_layer_pass_s

    def output_time(self, n_seqs: int) -> float:
        """Engine thread harvesting a finished batch of ``n_seqs`` and emitting its tokens."""
        o = self.overhead
        return o.output_s + o.output_seq_s * n_seqs

    def cpu_cycle(self, n_seqs: int, tokens: int, has_prefill: bool,
                  decoding: bool = True) -> float:
        """The engine thread's time per step in steady state: harvest, prepare, launch."""
        return (self.output_time(n_seqs) + self.cpu_prepare(n_seqs)
                + self.launch_time(tokens, has_prefill, decoding))

    def steady(self, n_seqs: int, tokens: int, has_prefill: bool,
               decoding: bool = True) -> tuple[float, float]:
        """``(serial, floor)``: in steady state (each step following one like it,
        :func:`simulator.engine_loop.place`) a step lasts ``serial + max(GPU work, floor)``.
        Async, the engine thread's whole cycle overlaps the GPU (serial 0, floor the cycle);
        sync, harvest and the wait for the first kernel are serial, and only the rest of the
        launch can outlast the GPU work."""
        if self.async_sched:
            return 0.0, self.cpu_cycle(n_seqs, tokens, has_prefill, decoding)
        first = self.first_kernel(n_seqs)
        return (self.output_time(n_seqs) + first, self.cpu_prepare(n_seqs) - first
                + self.launch_time(tokens, has_prefill, decoding))

    def cpu_ops(self, n_seqs: int, tokens: int, has_prefill: bool, gpu_s: float,
                decoding: bool = True) -> list[tuple]:
        """The step's fixed GPU time, and the engine thread's time as it shows in steady state
        (:meth:`steady`): async, only what exceeds the GPU work; sync, the serial part plus any
        launch not hidden."""
        out = [("step_overhead(gpu)", 1, 0.0, 0.0, 0.0, INF, INF, INF,
                self.gpu_fixed(n_seqs, tokens, has_prefill))]
        gpu = gpu_s + out[0][-1]
        serial, floor = self.steady(n_seqs, tokens, has_prefill, decoding)
        shown = serial + max(floor - gpu, 0.0)
        if shown > 0:
            name = "engine_thread(cpu, exposed)" if self.async_sched else "engine_thread(cpu, serial)"
            out.append((name, 1, 0.0, 0.0, 0.0, INF, INF, INF, shown))
        return out
