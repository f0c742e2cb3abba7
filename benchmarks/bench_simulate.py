"""Time `simulate` on a day of traffic: 1M requests on h100x8 (Llama-3.1-8B, 8 TP1 replicas).

    python benchmarks/bench_simulate.py [--requests 1000000] [--gpu h100x8] [--router round-robin]

Prints the wall time of each phase (load+validate, simulate, write outputs), the end-to-end time
of the `simulate` command, simulator events per second, and peak RSS. Target: <= 60 s end to end
for 1M requests on one core. Machines here are noisy: the script also times a bare simpy loop of
300k timeouts so runs on different machines can be compared as ratios.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import simpy

HERE = Path(__file__).resolve().parent


def bare_simpy(n: int = 300_000) -> float:
    env = simpy.Environment()

    def proc(env):
        for _ in range(n):
            yield env.timeout(0.001)

    env.process(proc(env))
    t = time.perf_counter()
    env.run()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--gpu", default="h100x8")
    ap.add_argument("--router", default="round-robin")
    ap.add_argument("--trace", type=Path, help="reuse a trace instead of generating one")
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from simulator import SimulationConfig, load_trace, run_simulation
    from simulator.output import write_outputs

    tmp = Path(tempfile.mkdtemp())
    trace = a.trace or tmp / "day.jsonl"
    if not a.trace:
        subprocess.run([sys.executable, str(HERE / "make_trace.py"), "--requests",
                        str(a.requests), "--out", str(trace)], check=True)
    base = bare_simpy()
    t0 = time.perf_counter()
    reqs = load_trace(trace)
    t1 = time.perf_counter()
    res = run_simulation(SimulationConfig(gpu=a.gpu, router=a.router), reqs)
    t2 = time.perf_counter()
    write_outputs(res, tmp / "out")
    t3 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = res.summary
    print(f"requests            {len(reqs):,} on {a.gpu} ({s['config']['data_parallel_replicas']}"
          f" replicas, router {a.router})")
    print(f"engine steps        {s['engine_steps']:,} simulated "
          f"({s['duration_s']:,.0f} s of traffic)")
    print(f"load + validate     {t1 - t0:6.1f} s")
    print(f"simulate            {t2 - t1:6.1f} s  ({len(reqs) / (t2 - t1):,.0f} requests/s, "
          f"{s['engine_steps'] / (t2 - t1):,.0f} engine steps/s)")
    print(f"write outputs       {t3 - t2:6.1f} s")
    print(f"end to end          {t3 - t0:6.1f} s   (target <= 60 s for 1M requests)")
    print(f"peak RSS            {rss:,.0f} MiB")
    print(f"bare simpy 300k     {base:6.3f} s  (simulate / bare = {(t2 - t1) / base:.0f}x)")
    print(f"TTFT p50 {s['ttft_s']['p50'] * 1e3:.1f} ms, TPOT p50 {s['tpot_s']['p50'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
