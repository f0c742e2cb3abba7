"""The machine a run was measured on, recorded in ``meta.json`` (``host``).

Why: the engine thread's costs are CPU work and differ between hosts (two H200 hosts of
2026-12-03 launched Llama-3.1-8B's eager layers at 0.46 and 0.72 ms and prepared a step in
1.8 and 2.7 ms, and served the same runs 2-17% apart), and FP8's extra launch cost is measured
against the same model's 16-bit runs of the same host (:mod:`simulator.engine_thread`), which
needs to know which runs shared one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux), else what the platform reports."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def host_info() -> dict:
    """Host name, CPU model and count, and the GPU's UUID where a CUDA GPU is visible."""
    info = {"name": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count()}
    try:
        import torch
    except ImportError:
        return info
    if torch.cuda.is_available():
        info["gpu_uuid"] = str(torch.cuda.get_device_properties(0).uuid)
    return info


def host_key(meta: dict) -> str:
    """What tells a run's host apart in a measured run's ``meta.json`` ("" before 2026-12-03,
    when it was not recorded: such runs count as one host)."""
    h = meta.get("host") or {}
    return h.get("gpu_uuid") or h.get("name") or ""
