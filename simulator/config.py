"""Typed, validated configuration: the vLLM engine knobs and the deployment around them.

Field names mirror vLLM's flags (``max_num_seqs`` <-> ``--max-num-seqs``) so a serving config can
be pasted. Defaults that vLLM derives at start-up (batch limits per GPU class, max model length)
are resolved in :mod:`simulator.deployment`, which records where each value came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import InputError


class SpeculativeConfig(BaseModel):
    """vLLM's ``--speculative-config`` JSON, plus how often drafts are accepted.

    Acceptance is given as ``acceptance_rate``: one probability per drafted token, or a list of
    per-position conditional probabilities (position i is accepted given 1..i-1 were), or as
    vLLM's own ``synthetic_acceptance_length`` (mean tokens per step, bonus token included).
    A trace may override the rate per request (``acceptance_rate`` field). Other vLLM keys
    (``prompt_lookup_max``, ``rejection_sample_method``, ...) are accepted and ignored.
    """

    model_config = ConfigDict(extra="allow")
    method: Literal["ngram", "eagle", "eagle3", "mtp", "draft_model"] | None = None
    model: str | None = None
    num_speculative_tokens: int = Field(ge=1, le=32)
    acceptance_rate: float | list[float] | None = None
    synthetic_acceptance_length: float | None = None

    @model_validator(mode="after")
    def _check(self) -> SpeculativeConfig:
        if self.method is None:
            self.method = "ngram" if self.model in (None, "ngram", "[ngram]") else "draft_model"
        if self.method == "draft_model" and not self.model:
            raise ValueError("a draft_model speculative config needs 'model' (the draft)")
        rates = self.acceptance_rate
        if isinstance(rates, list) and len(rates) != self.num_speculative_tokens:
            raise ValueError(f"acceptance_rate has {len(rates)} entries for "
                             f"{self.num_speculative_tokens} speculative tokens")
        if rates is not None and not all(0 <= a <= 1 for a in (
                rates if isinstance(rates, list) else [rates])):
            raise ValueError("acceptance rates must be within [0, 1]")
        length = self.synthetic_acceptance_length
        if length is not None and not 1 <= length <= self.num_speculative_tokens + 1:
            raise ValueError(f"synthetic_acceptance_length must be within [1, "
                             f"{self.num_speculative_tokens + 1}]")
        if rates is None and length is None:
            raise ValueError("say how often drafts are accepted: acceptance_rate (0..1) or "
                             "synthetic_acceptance_length")
        return self


class EngineArgs(BaseModel):
    """vLLM engine arguments (``vllm serve`` flags). ``None`` means "vLLM's default"."""

    model_config = ConfigDict(extra="forbid")
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    block_size: int = Field(default=16, ge=1)
    quantization: Literal["fp8", "int8", "w8a8", "awq", "gptq", "awq_marlin", "gptq_marlin",
                          "none"] | None = None
    # Not a vLLM flag (vLLM reads it from a sparse checkpoint): "what if the weights were 2:4".
    sparsity: Literal["2:4"] | None = None
    speculative_config: SpeculativeConfig | None = None
    enable_prefix_caching: bool = True  # vLLM v1's default
    # Not a vLLM flag: tokens per trace hash id (Mooncake's traces use 512).
    hash_block_size: int = Field(default=512, ge=1)
    kv_cache_dtype: Literal["auto", "fp8"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16"] = "auto"
    # CUDA graphs: vLLM captures graphs for steps of up to this many tokens (default
    # min(2 x max-num-seqs x (1 + speculative tokens), 512, max-num-batched-tokens)); larger
    # steps, and every step under --enforce-eager, run eagerly.
    max_cudagraph_capture_size: int | None = Field(default=None, ge=1)
    enforce_eager: bool = False

    @model_validator(mode="after")
    def _budget_covers_seqs(self) -> EngineArgs:
        if (
            self.max_num_seqs is not None
            and self.max_num_batched_tokens is not None
            and self.max_num_batched_tokens < self.max_num_seqs
        ):
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}), as vLLM requires"
            )
        return self


class SimulationConfig(BaseModel):
    """Everything one simulation run needs besides the trace."""

    model_config = ConfigDict(extra="forbid")
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    engine: EngineArgs = EngineArgs()
    router: str = "round-robin"
    gpu_cost_per_hour: float | None = Field(default=None, ge=0)
    calibration: str | None = Field(
        default=None, description="path to a calibration TOML, 'none' for datasheet defaults"
    )
    # Not a vLLM flag: the serving host's engine-thread (CPU) time relative to the hosts the
    # calibration profile was fitted on (simulator.cost.calibration.with_host_speed).
    host_speed: float = Field(default=1.0, gt=0, le=10)
    slo_ttft: float | None = Field(default=None, gt=0)
    slo_tpot: float | None = Field(default=None, gt=0)
    slo_e2e: float | None = Field(default=None, gt=0)
    timeseries_points: int = Field(default=2000, ge=10)
    # Disaggregated serving: "P:D" prefill and decode replicas, KV shipped between them.
    disaggregate: str | None = Field(default=None, pattern=r"^\d+:\d+$")
    kv_transfer_gbs: float | None = Field(default=None, gt=0)
    kv_transfer_latency_s: float = Field(default=0.001, ge=0)


def validated(cls: type[BaseModel], **kwargs: object) -> BaseModel:
    """Build a config model, turning pydantic's report into one InputError line."""
    try:
        return cls(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or None
        raise InputError(err["msg"], field=loc.replace("_", "-") if loc else None) from None
