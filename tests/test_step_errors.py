"""simulate validate --steps: each measured step's device-time error under the run's profile,
split by step class and sequences per step, written per run and printed pooled."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest

from simulator.cost.calibration import load_profile
from simulator.sensitivity import slower_gpu
from simulator.step_errors import bin_order, seq_bin, step_cells
from tests.test_cli import simulate

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "profiles/calibration/measurements/h100-sxm/vllm-0.25.1"
RUN = H100 / "llama8b-bf16/az-r8"
UNTIMED = H100 / "qwen2.5-32b-fp8/az-r2"  # profiled before CUDA events were recorded


def test_sequence_bins_and_their_order():
    assert [seq_bin(n) for n in (1, 2, 8, 9, 32, 33, 256, 257, 512, 513, 4096)] == [
        "1", "2-8", "2-8", "9-32", "9-32", "33-64", "129-256", "257-512", "257-512", ">512",
        ">512"]
    labels = ["257-512", ">512", "1", "33-64", "2-8"]
    assert sorted(labels, key=bin_order) == ["1", "2-8", "33-64", "257-512", ">512"]


def test_gpu_work_ten_percent_slower_moves_every_step_by_ten_percent():
    """The error is of the step's device time from where the measurement starts it, so GPU work
    1.1x slower (every rate / 1.1, every fixed GPU time x 1.1) shows as +10% in every cell:
    the table reads the cost model, not the engine thread's placement."""
    cal = load_profile(ROOT / "profiles/calibration/h100-sxm/vllm-0.25.1.toml")
    name, base = step_cells(RUN, cal)
    _, slow = step_cells(RUN, slower_gpu(cal, 0.10))
    assert name == "llama8b-bf16/az-r8" and base.keys() == slow.keys()
    for k in base:
        shift = statistics.median(b - a for a, b in zip(base[k], slow[k], strict=True))
        assert math.exp(shift) == pytest.approx(1.10, abs=1e-3), k


def test_cli_writes_each_runs_cells_and_names_runs_without_device_times(tmp_path):
    out = tmp_path / "steps.csv"
    p = simulate("validate", str(RUN), str(UNTIMED), "--steps", str(out))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["run"] for r in rows} == {"llama8b-bf16/az-r8"}
    # Counted independently from the raw records: timed calls with tokens, less the first 5
    # (the replay's one-off warm-up, which the fit leaves out too).
    recs = [json.loads(x) for x in (RUN / "steps.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in recs if r.get("gpu_s")][5:]
    kept = [r for r in timed if r["n_decode"] + sum(n for n, _ in r["prefill"])]
    by_class: dict[str, int] = {}
    for r in rows:
        by_class[r["step"]] = by_class.get(r["step"], 0) + int(r["steps"])
    assert sum(by_class.values()) == len(kept)
    assert by_class["decode"] == sum(1 for r in kept if not r["prefill"])
    big = sum(1 for r in kept if r["prefill"] and
              r["n_decode"] + sum(n for n, _ in r["prefill"]) >= 2048)
    assert by_class["prefill >= 2048 tokens"] == big
    decode_one = next(r for r in rows if r["step"] == "decode" and r["seqs"] == "1")
    assert int(decode_one["steps"]) == sum(1 for r in kept if not r["prefill"]
                                            and r["n_decode"] == 1)
    for r in rows:  # percentiles bracket the median
        assert float(r["p10"]) <= float(r["median"]) <= float(r["p90"])
    assert "steps of 1 run: median device-time error" in p.stdout
    assert "not in the step table: qwen2.5-32b-fp8/az-r2" in " ".join(p.stdout.split())


def test_runs_without_steps_are_named_and_a_broken_steps_file_is_a_one_line_error(tmp_path):
    served = tmp_path / "m" / "h100-sxm" / "vllm-0.25.1" / "server" / "az-r8"
    shutil.copytree(RUN, served)
    (served / "steps.jsonl").unlink()  # as `simulate profile server` leaves a run: requests only
    p = simulate("validate", str(served), "--steps", str(tmp_path / "s.csv"))
    assert p.returncode == 0, p.stderr
    assert "not in the step table: server/az-r8" in " ".join(p.stdout.split())
    broken = tmp_path / "m" / "h100-sxm" / "vllm-0.25.1" / "broken" / "az-r8"
    shutil.copytree(RUN, broken)
    (broken / "steps.jsonl").write_text('{"n_decode": 1,\n')
    p = simulate("validate", str(broken), "--steps", str(tmp_path / "t.csv"))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "steps.jsonl" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.csv").exists()
