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


def write(name: str, rows: list[dict]) -> None:
    (HERE / "traces" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


lengths = [(r["input_tokens"], r["output_tokens"])
           for r in map(json.loads, SAMPLE.read_text().splitlines())]
for seed, (name, rate, span) in enumerate(RUNS):
    rng = random.Random(seed)
    t, rows = 0.0, []
    while (t := t + rng.expovariate(rate)) <= span:
        inp, out = lengths[rng.randrange(len(lengths))]
        rows.append({"arrival_s": round(t, 6), "input_tokens": min(inp, 8000),
                     "output_tokens": out, "request_id": f"{name}-{len(rows)}"})
    write(name, rows)
    print(name, len(rows))

SWEEP = [16, 32, 64, 96, 128, 136, 192, 256, 384, 448, 496, 512, 528, 600, 768, 1024, 1536, 2048,
         3072, 4096, 6144, 8192]
sizes = SWEEP * 3
random.Random(7).shuffle(sizes)
rows = [{"arrival_s": round(0.4 * (i + 1), 6), "input_tokens": n, "output_tokens": 2,
         "request_id": f"sweep-{i}"} for i, n in enumerate(sizes)]
write("prefill-sweep", rows)
print("prefill-sweep", len(rows))

# Long contexts (2026-12-03): `long-sweep`, isolated prompts of 12,288..122,880 tokens (2 of
# each, shuffled, 8 output tokens: chunked prefill steps whose attention spans up to 115k
# cached tokens, then decode steps at that context), each arriving once the one before should
# be done (GEMMs at 0.74 and attention at 0.5 of the H200's bf16 peak, plus 0.5 s); and `mc-x1`,
# `mc-x4`: the first 40 s of the shipped Mooncake sample (119 requests, mean prompt 14k tokens,
# hash_ids kept, so prefix caching hits as in Mooncake), at its own rate and stretched 4x.
LONG = [12288, 16384, 24576, 32768, 49152, 65536, 98304, 122880]
sizes = LONG * 2
random.Random(8).shuffle(sizes)
t, rows = 0.5, []
for i, n in enumerate(sizes):
    rows.append({"arrival_s": round(t, 3), "input_tokens": n, "output_tokens": 8,
                 "request_id": f"long-{i}"})
    t += 2 * 8.0e9 * n / (989e12 * 0.74) + 2 * n * n * 4096 * 32 / (989e12 * 0.5) + 0.5
write("long-sweep", rows)
print("long-sweep", len(rows), f"{t:.0f} s")
MOONCAKE = SAMPLE.parent / "mooncake-conversation-sample.jsonl"
for name, stretch in (("mc-x1", 1), ("mc-x4", 4)):
    rows = [dict(r, arrival_s=round(r["arrival_s"] * stretch, 6))
            for r in map(json.loads, MOONCAKE.read_text().splitlines()) if r["arrival_s"] < 40]
    write(name, rows)
    print(name, len(rows))
