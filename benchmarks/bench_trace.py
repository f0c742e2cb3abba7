"""Peak memory and time of the trace tools on 1M and 10M requests: bounded memory means the
converter's peak RSS does not grow with the trace.

    python benchmarks/bench_trace.py [--sizes 1000000 10000000] [--keep DIR]

For each size it writes a Mooncake-format JSONL (timestamps in ms, lengths, 2-4 hash ids) and
times, each as its own process with its peak RSS:

- ``simulate trace convert`` (streaming) to native JSONL, with a window, rate scaling and a
  length filter on the way;
- ``simulate trace stats`` (three numeric arrays, 20 bytes a request).

Trace files are large (about 80 bytes a request): 10M requests need ~2 GB of free disk twice.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_mooncake(path: Path, n: int) -> None:
    rng = random.Random(0)
    t = 0.0
    with open(path, "w") as f:
        buf = []
        for _ in range(n):
            t += rng.expovariate(0.1157)  # 10M over a day
            k = rng.randint(2, 4)
            h = ", ".join(str(rng.randint(0, 50_000)) for _ in range(k))
            buf.append(f'{{"timestamp": {int(t)}, "input_length": {rng.randint(1, 4000)}, '
                       f'"output_length": {rng.randint(1, 800)}, "hash_ids": [{h}]}}\n')
            if len(buf) >= 100_000:
                f.writelines(buf)
                buf.clear()
        f.writelines(buf)


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command (its rusage, read by a wrapper)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/env", "python3", "-c",
                        "import resource, subprocess, sys; "
                        "rc = subprocess.call(sys.argv[1:]); "
                        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                        "sys.exit(rc)", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return wall, int(p.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--keep", type=Path, help="write the traces here instead of a temp dir")
    a = ap.parse_args()
    base = a.keep or Path(tempfile.mkdtemp(prefix="bench-trace-"))
    base.mkdir(parents=True, exist_ok=True)
    sim = [sys.executable, "-m", "simulator"]
    print(f"{'requests':>12} {'step':<10} {'wall s':>8} {'req/s':>10} {'peak RSS MiB':>13}")
    for n in a.sizes:
        src = base / f"mooncake-{n}.jsonl"
        t0 = time.perf_counter()
        write_mooncake(src, n)
        print(f"{n:>12,} {'generate':<10} {time.perf_counter() - t0:8.1f}")
        out = base / f"native-{n}.jsonl"
        wall, rss = timed([*sim, "trace", "convert", str(src), "-o", str(out), "--start", "60",
                           "--rate-scale", "1.5", "--max-input", "3900"])
        print(f"{n:>12,} {'convert':<10} {wall:8.1f} {n / wall:10,.0f} {rss:13,.0f}")
        wall, rss = timed([*sim, "trace", "stats", str(out)])
        print(f"{n:>12,} {'stats':<10} {wall:8.1f} {n / wall:10,.0f} {rss:13,.0f}")
        if a.keep is None:
            src.unlink()
            out.unlink()


if __name__ == "__main__":
    main()
