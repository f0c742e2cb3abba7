"""Make the traces replayed on real GPUs: Poisson arrivals at fixed rates, lengths resampled
from the shipped Azure conv 2023 sample (inputs capped at 8,000 tokens); and `prefill-sweep`,
isolated prompts of 16..8,192 tokens (3 of each size, shuffled, 0.4 s apart, 2 output tokens),
which time single prefill steps on both sides of the CUDA-graph capture size. Deterministic.

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

SWEEP = [16, 32, 64, 96, 128, 136, 192, 256, 384, 448, 496, 512, 528, 600, 768, 1024, 1536, 2048,
         3072, 4096, 6144, 8192]
sizes = SWEEP * 3
random.Random(7).shuffle(sizes)
rows = [{"arrival_s": round(0.4 * (i + 1), 6), "input_tokens": n, "output_tokens": 2,
         "request_id": f"sweep-{i}"} for i, n in enumerate(sizes)]
(HERE / "traces" / "prefill-sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
print("prefill-sweep", len(rows))
