"""Write a synthetic day-scale trace: Poisson arrivals, lengths resampled from the Azure conv sample.

    python benchmarks/make_trace.py --requests 1000000 --rate 11.6 --out /tmp/day.jsonl

11.6 req/s is one million requests a day. Lengths are drawn (with a fixed seed) from the shipped
Azure LLM inference 2023 conversation sample, so the mix matches production conversation traffic.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "traces" / "azure-conv-2023-10min.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=11.6, help="mean arrivals per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    lengths = [(r["input_tokens"], r["output_tokens"])
               for r in map(json.loads, SAMPLE.read_text().splitlines())]
    rng = random.Random(a.seed)
    t = 0.0
    with open(a.out, "w") as f:
        for i in range(a.requests):
            t += rng.expovariate(a.rate)
            inp, out = lengths[rng.randrange(len(lengths))]
            f.write(f'{{"arrival_s": {t:.6f}, "input_tokens": {inp}, "output_tokens": {out}, '
                    f'"request_id": "r{i}"}}\n')
    print(f"wrote {a.requests:,} requests over {t:,.0f} s to {a.out}")


if __name__ == "__main__":
    main()
