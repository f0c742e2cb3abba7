"""Line a measured run's steps up with a GPU clock log, to see whether the GPU slowed under load.

    python -m simulator.profiler.clocks RUN_DIR GPU_LOG.csv

Why: the simulator takes one compute rate per GPU, but a GPU at its power limit lowers its SM
clock, so a step's device time can depend on how hard the GPU worked before it. On the H200 the
large prefill steps of the loaded runs came out 2% faster in simulation (0.977-0.982 of the
measured device time for Llama-3.1-8B, Qwen2.5-14B and Qwen2.5-32B bf16), while isolated prompts
of the same sizes came out 1-6% slower. Past saturation 2% of GPU time moves TTFT p50 by 7-12%
(``simulate validate --sensitivity``), so this matters.

The log is what ``profile_gpu.sh`` records next to each group when ``nvidia-smi`` exists::

    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu[,\
        clocks_event_reasons.active] --format=csv,nounits -lms 100

(the last field where the driver knows it: a bit mask of why the clock is held down, whose bit
0x4 is the software power cap and 0x8, 0x20, 0x40, 0x80 the hardware and thermal slowdowns).

Each sample is matched to the step running at its time (``meta.json``'s ``t0_unix`` places the
replay clock), and the report gives, per step class, the samples' median SM clock and power.
Measured with it (2026-12-03, measurements README): the loaded runs' large prefill steps ran at
1,455-1,500 MHz with the power cap active in 99-100% of samples, the prefill sweep's at 1,980 MHz;
hence the cost model's power-cap slowdown (:mod:`simulator.cost.power`).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

from simulator.errors import InputError
from simulator.measured_steps import read_records, step_class


def read_log(path: Path) -> list[dict]:
    """The samples of an ``nvidia-smi --format=csv,nounits`` log: Unix time, SM and memory clock
    (MHz), power (W), temperature (C) and, where logged, the clock-event bit mask; lines that are
    not samples (a header, an error) skip."""
    out = []
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as e:
        raise InputError(f"cannot read the GPU log: {e}", file=str(path)) from None
    for row in rows:
        cells = [c.strip() for c in row]
        if len(cells) < 5:
            continue
        try:
            t = datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            sm, mem, power, temp = (float(c) for c in cells[1:5])
        except ValueError:
            continue  # the header, or a field the driver reports as [N/A]
        x = {"t": t, "sm_mhz": sm, "mem_mhz": mem, "power_w": power, "temp_c": temp}
        if len(cells) > 5:
            with contextlib.suppress(ValueError):  # [N/A] or [Not Supported]: no mask
                x["reasons"] = int(cells[5], 16)
        out.append(x)
    if not out:
        raise InputError("no samples (expected nvidia-smi --format=csv,nounits lines)",
                         file=str(path))
    return out


def _class(step: dict, graph_top: int) -> str:
    """A raw record's step class (:func:`simulator.measured_steps.step_class`)."""
    pre = sum(n for n, _ in step["prefill"])
    return step_class(pre, pre + step["n_decode"], graph_top)


def match(run_dir: Path, samples: list[dict]) -> dict[str, list[dict]]:
    """The samples taken while each class of step ran on the GPU, keyed by class."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder: {e}", file=str(run_dir)) from None
    steps = read_records(run_dir)
    t0 = meta.get("t0_unix")
    if t0 is None:
        raise InputError("no t0_unix (profiled before 2026-12-03): cannot place the log",
                         file=str(run_dir / "meta.json"), field="t0_unix")
    top = meta.get("cuda_graph_top") or 512
    spans = sorted((t0 + s["gpu_start_s"], t0 + s["gpu_end_s"], _class(s, top))
                   for s in steps if s.get("gpu_start_s") is not None and s.get("gpu_end_s"))
    starts = [a for a, _, _ in spans]
    out: dict[str, list[dict]] = {}
    for x in samples:
        i = bisect.bisect_right(starts, x["t"]) - 1
        if i >= 0 and x["t"] <= spans[i][1]:
            out.setdefault(spans[i][2], []).append(x)
    return out


POWER_CAP = 0x4  # nvidia-smi's clocks_event_reasons: software power cap
SLOWDOWN = 0x8 | 0x20 | 0x40 | 0x80  # hardware, thermal and power-brake slowdowns


def report(by_class: dict[str, list[dict]]) -> list[str]:
    """Per step class: samples, median SM clock, power, temperature, and where the log has the
    clock-event mask, the share of samples held down by the power cap or by a slowdown."""
    masks = any("reasons" in x for v in by_class.values() for x in v)
    head = f"{'steps':24s} {'samples':>7s} {'SM MHz':>7s} {'power W':>8s} {'temp C':>6s}"
    lines = [head + (f" {'capped %':>8s} {'slowed %':>8s}" if masks else "")]
    for k in sorted(by_class):
        v = by_class[k]
        row = (f"{k:24s} {len(v):7d} {statistics.median(x['sm_mhz'] for x in v):7.0f} "
               f"{statistics.median(x['power_w'] for x in v):8.0f} "
               f"{statistics.median(x['temp_c'] for x in v):6.0f}")
        if masks:
            r = [x["reasons"] for x in v if "reasons" in x]
            row += "".join(f" {100 * sum(1 for m in r if m & b) / len(r):8.0f}" if r
                           else f" {'-':>8s}" for b in (POWER_CAP, SLOWDOWN))
        lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a measured run folder (meta.json, steps.jsonl)")
    ap.add_argument("log", type=Path, help="the nvidia-smi log recorded during it")
    a = ap.parse_args(argv)
    try:
        lines = report(match(a.run, read_log(a.log)))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
