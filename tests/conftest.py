"""Shared fixtures: small traces and a calibration profile with round numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "traces" / "azure-conv-2023-10min.jsonl"

UNIT_CAL = """
name = "unit-test"
calibrated = false
error_band = 0.3
[efficiency]
gemm_compute = 1.0
gemm_memory = 1.0
attn_prefill_compute = 1.0
attn_prefill_memory = 1.0
attn_decode_compute = 1.0
attn_decode_memory = 1.0
elementwise_memory = 1.0
comm_bus = 1.0
[overhead]
step_s = 0.001
per_seq_s = 0.0
comm_latency_s = 0.0
[memory]
nontorch_gib = 0.0
"""


def unit_cal_with(path: Path, **overhead: float) -> str:
    """UNIT_CAL with extra [overhead] values, written to ``path``."""
    extra = "".join(f"\n{k} = {v}" for k, v in overhead.items())
    path.write_text(UNIT_CAL.replace("comm_latency_s = 0.0", "comm_latency_s = 0.0" + extra))
    return str(path)


@pytest.fixture
def unit_cal(tmp_path: Path) -> str:
    p = tmp_path / "unit.toml"
    p.write_text(UNIT_CAL)
    return str(p)


def write_trace(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def poisson_rows(n: int, rate: float, inp: int = 512, out: int = 64, seed: int = 1) -> list[dict]:
    import random

    rng = random.Random(seed)
    t, rows = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        rows.append({"arrival_s": round(t, 6), "input_tokens": rng.randint(inp // 2, inp * 2),
                     "output_tokens": rng.randint(max(out // 2, 1), out * 2),
                     "request_id": f"r{i}"})
    return rows


# A step record as profiled before the engine thread's timeline (2026-11-24): device time and
# the engine call's start and end only.
UNTIMED_KEYS = ("n_decode", "decode_ctx", "prefill", "spec_tokens", "gpu_s", "start_s", "end_s")


def untimed(run: Path, dest: Path) -> Path:
    """A copy of the measured run folder ``run`` under ``dest`` whose steps carry no timeline,
    as runs recorded before 2026-12-02 (and ``vllm bench`` imports) do."""
    out = dest / run.parent.name / run.name
    out.mkdir(parents=True)
    for name in ("meta.json", "requests.jsonl"):
        (out / name).write_bytes((run / name).read_bytes())
    steps = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines() if x.strip()]
    (out / "steps.jsonl").write_text("".join(
        json.dumps({k: s[k] for k in UNTIMED_KEYS if k in s}) + "\n" for s in steps))
    return out
