"""Make the traces replayed on real GPUs: Poisson arrivals at fixed rates, lengths resampled
from the shipped Azure conv 2023 sample (inputs capped at 8,000 tokens). Deterministic.

    python profiles/calibration/measurements/make_traces.py
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent.parent / "traces" / "azure-conv-2023-10min.jsonl"
RUNS = [("az-r2", 2, 45), ("az-r8", 8, 40), ("az-r20", 20, 30), ("az-r40", 40, 20)]

lengths = [(r["input_tokens"], r["output_tokens"])
           for r in map(json.loads, SAMPLE.read_text().splitlines())]
for seed, (name, rate, span) in enumerate(RUNS):
    rng = random.Random(seed)
    t, rows = 0.0, []
    while (t := t + rng.expovariate(rate)) <= span:
        inp, out = lengths[rng.randrange(len(lengths))]
        rows.append({"arrival_s": round(t, 6), "input_tokens": min(inp, 8000),
                     "output_tokens": out, "request_id": f"{name}-{len(rows)}"})
    (HERE / "traces" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(name, len(rows))
