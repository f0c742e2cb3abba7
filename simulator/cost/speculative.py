"""Speculative decoding: what a decode step costs and yields with k drafted tokens.

Per step each decoding sequence sends k drafts and the target verifies k+1 positions: its GEMMs
and lm_head see (k+1) tokens per sequence and its attention (k+1) queries over the sequence's
context. The draft costs, per step:

- ``ngram``: CPU lookup only, ``NGRAM_CPU_S`` per sequence (assumption);
- ``eagle``/``eagle3``/``mtp``: k passes of a one-layer head of the target's shape plus the
  target's lm_head, and its one-layer KV cache;
- ``draft_model``: k decode passes of the draft model (its own roofline on the same GPU, TP and
  precision), its prefill of every prompt chunk, its weights and KV cache.

The engine thread launches a head's or draft model's passes layer by layer while the GPU still
runs the target's work (vLLM feeds them the sampled tokens on the GPU), so those launches
(``draft_layer_pass_s`` per layer per pass) are a floor under the step, not GPU time added to it
(:meth:`simulator.cost.fixed.FixedCosts.draft_launch`).

A sequence then gains the mean accepted length E tokens per step (bonus token included):
E = 1 + sum_i prod_{j<=i} a_j for per-position conditional rates a_j, (1 - a^(k+1)) / (1 - a)
for one rate a, or vLLM's synthetic_acceptance_length directly. The simulator advances E tokens
per step as a fluid (a request needs ceil(remaining / E) steps), which is exact in the mean.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from simulator.config import SpeculativeConfig

NGRAM_CPU_S = 20e-6  # assumption: vLLM's numba n-gram matcher, per sequence per step


def mean_accepted_length(k: int, rate: float | list[float] | None,
                         length: float | None = None) -> float:
    if rate is None:
        assert length is not None
        return float(length)
    if isinstance(rate, list):
        e, p = 1.0, 1.0
        for a in rate:
            p *= a
            e += p
        return e
    if rate >= 1.0:
        return float(k + 1)
    return (1 - rate ** (k + 1)) / (1 - rate)


@dataclass
class SpecDecode:
    cfg: SpeculativeConfig
    draft: object | None  # a Roofline for the draft (draft model or one-layer head), or None
    head_lm: bool  # the draft reuses the target's lm_head (EAGLE/MTP): cost it here

    @property
    def k(self) -> int:
        return self.cfg.num_speculative_tokens

    @property
    def method(self) -> str:
        return self.cfg.method or "ngram"

    def tokens_per_step(self, rate: float | None = None) -> float:
        """E for a request (its own acceptance rate, else the config's)."""
        if rate is not None:
            return mean_accepted_length(self.k, rate)
        return mean_accepted_length(self.k, self.cfg.acceptance_rate,
                                    self.cfg.synthetic_acceptance_length)

    def weight_bytes_per_gpu(self) -> float:
        """The draft's weights: a whole draft model, or a head's one layer plus its fc (the
        head shares the target's embeddings and lm_head)."""
        d = self.draft
        if d is None:
            return 0.0
        if not self.head_lm:
            return d.weight_bytes_per_gpu()
        m = d.model
        layer = m.attn_params() + m.mlp_params(None)
        return (layer * d.prec.weight_bytes + 2 * m.hidden * m.hidden * 2) / d.tp

    def kv_bytes_per_token(self) -> float:
        d = self.draft
        return 0.0 if d is None else d.kv_bytes_token_layer * d.layers

    def label(self) -> str:
        what = self.method + (f" ({self.cfg.model})" if self.method == "draft_model" else "")
        return f"{what}, k={self.k}, mean accepted length {self.tokens_per_step():.2f}"


def build(cfg: SpeculativeConfig | None, target_model, make_roofline) -> SpecDecode | None:
    """``make_roofline(model)`` builds a Roofline for a model on the deployment's GPU, TP,
    precision and calibration."""
    if cfg is None:
        return None
    if cfg.method == "ngram":
        return SpecDecode(cfg, None, False)
    if cfg.method == "draft_model":
        from simulator.model import load_model

        return SpecDecode(cfg, make_roofline(load_model(cfg.model)), False)
    # EAGLE / MTP head: one dense decoder layer of the target's shape.
    from simulator.model import LayerGroup

    head = dataclasses.replace(target_model, name=f"{target_model.name}-{cfg.method}-head",
                               num_layers=1, groups=(LayerGroup(1, None),))
    return SpecDecode(cfg, make_roofline(head), True)
