"""Model architecture numbers, read from a Hugging Face ``config.json``.

Only what a performance model needs: layer shapes, heads, experts, vocabulary. Families covered:
dense (Llama, Qwen2/3, Mistral), Mixtral-/Qwen3-style MoE, and DeepSeek-V2/V3 (MLA + MoE with
shared experts and leading dense layers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from simulator.errors import InputError, suggest
from simulator.paths import profiles_dir


@dataclass(frozen=True)
class MLA:
    """DeepSeek multi-head latent attention: the KV cache holds one compressed latent per token."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class MoE:
    num_experts: int
    top_k: int
    expert_intermediate: int
    shared_intermediate: int  # summed width of always-on shared experts (0 if none)


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive layers with one shape (e.g. DeepSeek's 3 dense layers, then 58 MoE layers)."""

    count: int
    moe: MoE | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    hidden: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    max_position: int
    checkpoint_quantization: str | None
    groups: tuple[LayerGroup, ...]
    mla: MLA | None = None
    extra: dict = field(default_factory=dict, compare=False)

    # --- per-layer parameter counts (elements, whole model, before TP sharding) ---
    def attn_params(self) -> int:
        h, d = self.hidden, self.head_dim
        if self.mla:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = (h * m.q_lora_rank + m.q_lora_rank * self.num_heads * qk) if m.q_lora_rank else (
                h * self.num_heads * qk
            )
            kv_a = h * (m.kv_lora_rank + m.qk_rope_head_dim)
            kv_b = m.kv_lora_rank * self.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
            o = self.num_heads * m.v_head_dim * h
            return q + kv_a + kv_b + o
        return h * d * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * d * h

    def mlp_params(self, moe: MoE | None) -> int:
        """All MLP weights of one layer (every expert counted)."""
        if moe is None:
            return 3 * self.hidden * self.intermediate
        experts = moe.num_experts * 3 * self.hidden * moe.expert_intermediate
        return experts + 3 * self.hidden * moe.shared_intermediate + self.hidden * moe.num_experts

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def norm_params(self) -> int:
        """RMSNorm weights: two per layer and a final one (MLA adds its latent norms)."""
        per_layer = 2 * self.hidden
        if self.mla:
            per_layer += (self.mla.q_lora_rank or 0) + self.mla.kv_lora_rank
        return self.num_layers * per_layer + self.hidden

    def total_params(self) -> int:
        layers = sum(g.count * (self.attn_params() + self.mlp_params(g.moe)) for g in self.groups)
        head = 0 if self.tie_embeddings else self.lm_head_params()
        return layers + self.embedding_params() + head + self.norm_params()

    def active_params(self) -> int:
        """Parameters touched per token (MoE: top-k experts plus shared ones)."""
        total = 0
        for g in self.groups:
            mlp = (
                3 * self.hidden * self.intermediate
                if g.moe is None
                else 3 * self.hidden * (g.moe.top_k * g.moe.expert_intermediate
                                        + g.moe.shared_intermediate)
            )
            total += g.count * (self.attn_params() + mlp)
        return total + self.embedding_params() + self.lm_head_params()

    def kv_elements_per_token_per_layer(self) -> int:
        """Cache elements one token adds in one layer (K and V, or MLA's latent + rope key)."""
        if self.mla:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return any(g.moe for g in self.groups)


def _req(cfg: dict, key: str, path: str) -> int:
    if key not in cfg:
        raise InputError(f"missing in model config.json (needed to model {cfg.get('model_type')})",
                         file=path, field=key)
    v = cfg[key]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise InputError(f"must be a positive integer, got {v!r}", file=path, field=key)
    return v


def parse_config(cfg: dict, name: str, path: str) -> ModelSpec:
    """Turn a Hugging Face config dict into a ModelSpec, with file/field errors."""
    if not isinstance(cfg, dict):
        raise InputError("config.json must hold a JSON object", file=path)
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers
        cfg = cfg["text_config"]
    hidden = _req(cfg, "hidden_size", path)
    layers = _req(cfg, "num_hidden_layers", path)
    heads = _req(cfg, "num_attention_heads", path)
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = _req(cfg, "intermediate_size", path)
    vocab = _req(cfg, "vocab_size", path)
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = MLA(
            q_lora_rank=cfg.get("q_lora_rank"),
            kv_lora_rank=_req(cfg, "kv_lora_rank", path),
            qk_nope_head_dim=_req(cfg, "qk_nope_head_dim", path),
            qk_rope_head_dim=_req(cfg, "qk_rope_head_dim", path),
            v_head_dim=_req(cfg, "v_head_dim", path),
        )
    n_exp = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    groups: tuple[LayerGroup, ...]
    if n_exp:
        moe = MoE(
            num_experts=n_exp,
            top_k=_req(cfg, "num_experts_per_tok", path),
            expert_intermediate=cfg.get("moe_intermediate_size") or inter,
            shared_intermediate=(cfg.get("n_shared_experts") or 0)
            * (cfg.get("moe_intermediate_size") or inter)
            + (cfg.get("shared_expert_intermediate_size") or 0),
        )
        first_dense = cfg.get("first_k_dense_replace") or 0
        groups = tuple(
            g for g in (LayerGroup(first_dense, None), LayerGroup(layers - first_dense, moe))
            if g.count
        )
    else:
        groups = (LayerGroup(layers, None),)
    q = cfg.get("quantization_config") or {}
    ckpt_q = q.get("quant_method") if isinstance(q, dict) else None
    return ModelSpec(
        name=name,
        source=cfg.get("_name_or_path") or path,
        hidden=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=inter,
        vocab=vocab,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=cfg.get("max_position_embeddings") or 4096,
        checkpoint_quantization=ckpt_q,
        groups=groups,
        mla=mla,
    )


def shipped_models() -> list[str]:
    return sorted(p.stem for p in (profiles_dir() / "models").glob("*.json"))


def load_model(name_or_path: str) -> ModelSpec:
    """A shipped model name (``llama-3.1-8b``), or a path to a config.json or a folder holding one."""
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        shipped = profiles_dir() / "models" / f"{name_or_path.lower()}.json"
        if not shipped.is_file():
            raise InputError(
                f"unknown model {name_or_path!r}{suggest(name_or_path, shipped_models())}; "
                "give a shipped name or a path to a config.json",
                field="model",
            )
        p = shipped
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"not valid JSON: {e}", file=str(p)) from None
    return parse_config(cfg, p.stem if p.name != "config.json" else p.parent.name, str(p))
