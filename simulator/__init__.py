"""LLM serving simulator: replays request traces through a discrete-event model of vLLM.

Public API::

    from simulator import SimulationConfig, run_simulation, load_trace
    result = run_simulation(SimulationConfig(gpu="h100x2"), load_trace("traces/x.jsonl"))
    result.summary["ttft_s"]["p50"]

Names are imported lazily so that ``simulator.profiler`` runs on a GPU host that has vLLM but
none of the simulator's own dependencies.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EngineArgs": "simulator.config",
    "SimulationConfig": "simulator.config",
    "InputError": "simulator.errors",
    "SimulationResult": "simulator.run",
    "run_simulation": "simulator.run",
    "load_trace": "simulator.trace",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
