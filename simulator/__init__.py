"""LLM serving simulator: replays request traces through a discrete-event model of vLLM.

Public API::

    from simulator import SimulationConfig, run_simulation, load_trace
    result = run_simulation(SimulationConfig(gpu="h100x2"), load_trace("traces/x.jsonl"))
    result.summary["ttft_s"]["p50"]
"""

from simulator.config import EngineArgs, SimulationConfig
from simulator.errors import InputError
from simulator.run import SimulationResult, run_simulation
from simulator.trace import load_trace

__all__ = [
    "EngineArgs",
    "InputError",
    "SimulationConfig",
    "SimulationResult",
    "load_trace",
    "run_simulation",
]
__version__ = "0.1.0"
