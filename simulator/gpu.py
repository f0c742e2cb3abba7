"""GPU specifications, read from ``profiles/hardware/*.toml`` (the one place each figure lives).

Also resolves deployment strings such as ``h100x2`` (two H100 SXM in one node), ``mi300xx8`` and
MIG slices such as ``h100-3g.40gb`` (one slice) or ``a100-1g.10gbx7`` (seven slices).
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulator.errors import InputError, suggest
from simulator.paths import profiles_dir

GIB = 1024**3
# Figures that must each carry a source line in the profile.
_SOURCED = (
    "memory_gb",
    "usable_memory_gib",
    "memory_bandwidth_gbs",
    "sm_count",
    "nvlink_gbs",
    "pcie_gbs",
    "tdp_w",
    "sparsity_multiplier",
    "cost_per_gpu_hour_usd",
)


# Driver-reported GPU names (torch.cuda.get_device_name) -> simulator profile names.
GPU_NAMES = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200",
             "NVIDIA H100 PCIe": "h100-pcie"}

class MigProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sm_count: int = Field(gt=0)
    memory_slices: int = Field(ge=1, le=8)
    memory_gb: float = Field(gt=0)


class GPUSpec(BaseModel):
    """One GPU (or MIG slice). Bandwidths in GB/s, compute in dense TFLOPS per dtype."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    aliases: list[str] = []
    display_name: str
    vendor: str
    architecture: str
    memory_gb: float = Field(gt=0)
    usable_memory_gib: float = Field(gt=0)
    memory_bandwidth_gbs: float = Field(gt=0)
    sm_count: int = Field(gt=0)
    nvlink_gbs: float | None = Field(default=None, gt=0)
    pcie_gbs: float = Field(gt=0)
    tdp_w: float = Field(gt=0)
    sparsity_multiplier: float = Field(ge=1)
    cost_per_gpu_hour_usd: float = Field(ge=0)
    notes: str = ""
    dense_tflops: dict[str, float]
    sources: dict[str, str]
    mig: dict[str, MigProfile] = {}
    mig_sources: dict[str, str] = {}
    mig_parent: str | None = None

    @model_validator(mode="after")
    def _every_figure_sourced(self) -> GPUSpec:
        missing = [
            k for k in (*_SOURCED, *self.dense_tflops)
            if k not in self.sources and getattr(self, k, 0) is not None
        ]
        if missing and self.mig_parent is None:
            raise ValueError(f"figures without a source: {', '.join(missing)}")
        if "bf16" not in self.dense_tflops:
            raise ValueError("dense_tflops needs at least bf16")
        if self.mig and not self.mig_sources:
            raise ValueError("mig profiles need [mig_sources]")
        return self

    @property
    def usable_memory_bytes(self) -> float:
        return self.usable_memory_gib * GIB

    @property
    def memory_bandwidth(self) -> float:
        """Bytes per second."""
        return self.memory_bandwidth_gbs * 1e9

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a math dtype, or raise if the chip lacks it."""
        try:
            return self.dense_tflops[dtype] * 1e12
        except KeyError:
            raise InputError(
                f"{self.display_name} has no {dtype} tensor cores "
                f"(has {', '.join(sorted(self.dense_tflops))})"
            ) from None

    def supports(self, dtype: str) -> bool:
        return dtype in self.dense_tflops

    def interconnect_gbs(self) -> tuple[float, str]:
        """Per-GPU bidirectional bandwidth of the link tensor parallelism uses, and its name."""
        if self.nvlink_gbs:
            return self.nvlink_gbs, "nvlink" if self.vendor == "nvidia" else "infinity-fabric"
        return self.pcie_gbs, "pcie"

    def mig_slice(self, profile: str) -> GPUSpec:
        """A MIG slice as a GPU of its own: compute by SM share, bandwidth by memory slices."""
        m = self.mig[profile]
        sm_frac = m.sm_count / self.sm_count
        mem_frac = m.memory_slices / 8
        compute_slices = int(profile.split("g.")[0])
        ratio = self.usable_memory_gib / self.memory_gb
        return GPUSpec(
            name=f"{self.name}-{profile}",
            display_name=f"{self.display_name} MIG {profile}",
            vendor=self.vendor,
            architecture=self.architecture,
            memory_gb=m.memory_gb,
            usable_memory_gib=m.memory_gb * ratio,
            memory_bandwidth_gbs=self.memory_bandwidth_gbs * mem_frac,
            sm_count=m.sm_count,
            nvlink_gbs=None,
            pcie_gbs=self.pcie_gbs,
            tdp_w=self.tdp_w * compute_slices / 7,
            sparsity_multiplier=self.sparsity_multiplier,
            cost_per_gpu_hour_usd=self.cost_per_gpu_hour_usd * compute_slices / 7,
            notes=(
                f"MIG {profile} of {self.display_name}: compute x {m.sm_count}/{self.sm_count} SMs, "
                f"bandwidth x {m.memory_slices}/8 memory slices, price x {compute_slices}/7; "
                f"no NVLink (derived, {self.mig_sources.get('all', '')})"
            ),
            dense_tflops={k: v * sm_frac for k, v in self.dense_tflops.items()},
            sources={"derived_from": self.name, **self.mig_sources},
            mig_parent=self.name,
        )


@cache
def _catalog(root: str) -> tuple[dict[str, GPUSpec], dict[str, str]]:
    specs: dict[str, GPUSpec] = {}
    aliases: dict[str, str] = {}
    for path in sorted(Path(root).glob("*.toml")):
        try:
            spec = GPUSpec(**tomllib.loads(path.read_text()))
        except (tomllib.TOMLDecodeError, ValidationError, TypeError) as e:
            raise InputError(f"bad GPU profile: {_short(e)}", file=str(path)) from None
        specs[spec.name] = spec
        for a in (spec.name, *spec.aliases):
            aliases[a.lower()] = spec.name
    return specs, aliases


def _short(e: Exception) -> str:
    return str(e).replace("\n", " ")[:300]


def catalog() -> dict[str, GPUSpec]:
    return _catalog(str(profiles_dir() / "hardware"))[0]


def known_names() -> list[str]:
    """Every name --gpu accepts (before an optional xN), MIG slices included."""
    specs, aliases = _catalog(str(profiles_dir() / "hardware"))
    names = list(aliases)
    for alias, target in aliases.items():
        names += [f"{alias}-{p}" for p in specs[target].mig]
    return names


def get_gpu(name: str) -> GPUSpec:
    specs, aliases = _catalog(str(profiles_dir() / "hardware"))
    key = name.lower()
    if key in aliases:
        return specs[aliases[key]]
    m = re.fullmatch(r"(.+)-(\d+g\.\d+gb)", key)
    if m and m.group(1) in aliases:
        parent = specs[aliases[m.group(1)]]
        if m.group(2) in parent.mig:
            return parent.mig_slice(m.group(2))
        raise InputError(
            f"{parent.display_name} has no MIG profile {m.group(2)!r}; "
            f"it has {', '.join(parent.mig) or 'none'}",
            field="gpu",
        )
    raise InputError(f"unknown GPU {name!r}{suggest(key, known_names())}", field="gpu")


def parse_deployment(text: str) -> tuple[GPUSpec, int]:
    """'h100x2' -> (H100 SXM, 2). A name that is itself a GPU ('mi300x', 'rtx4090') wins."""
    key = text.strip().lower()
    if not key:
        raise InputError("empty GPU name", field="gpu")
    try:
        return get_gpu(key), 1
    except InputError:
        m = re.fullmatch(r"(.+?)x(\d+)", key)
        if not m:
            raise
    count = int(m.group(2))
    if count < 1:
        raise InputError(f"GPU count must be >= 1 in {text!r}", field="gpu")
    return get_gpu(m.group(1)), count
