"""Which engine launches waited for the GPU, and what happened inside them: a table from the
diagnostic runs (``vllm_replay --diagnose``) archived here.

    cd profiles/calibration/diagnostics && python launch_syncs.py h200-vllm-0.25.1/*.tgz

A launch *synced* when it ended (``launched_s``) within 3 ms of its own batch's end on the GPU
(``gpu_end_s``): the engine thread waited for the device inside it. A step is a *new maximum*
when it scheduled more sequences than any earlier step of the replay.
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tarfile


def rows(tf: tarfile.TarFile, name: str) -> list[dict]:
    return [json.loads(x) for x in io.TextIOWrapper(tf.extractfile(name)) if x.strip()]


def summary(steps: list[dict], reqs: list[dict]) -> dict:
    ms = [s for s in steps if s.get("gpu_s")]
    top = synced = at_top = top_n = 0
    gc_s = gc_full = dev = pinned = pinned_synced = 0
    for s in ms[1:]:
        seqs = s["n_decode"] + len(s["prefill"])
        new = seqs > top
        top = max(top, seqs)
        sync = abs(s["launched_s"] - s["gpu_end_s"]) < 0.003
        host = (s.get("host_alloc") or {}).get("num_host_alloc", 0)
        synced += sync
        at_top += sync and new
        top_n += new
        gc_s += s.get("gc_s", 0.0)
        gc_full += s.get("gc_full", 0)
        dev += sync and any((s.get("alloc") or {}).values())
        pinned += bool(host)
        pinned_synced += sync and bool(host)
    ttft = statistics.median(r["first_token_s"] - r["arrival_s"] for r in reqs)
    return {"steps": len(ms), "synced": synced, "synced_at_new_max": at_top, "new_max": top_n,
            "gc_in_launches_s": round(gc_s, 3), "full_gcs": gc_full,
            "synced_with_device_alloc": dev, "pinned_allocs": pinned,
            "synced_with_pinned_alloc": pinned_synced, "ttft_p50_s": round(ttft, 3)}


def main(paths: list[str]) -> int:
    cols = None
    for path in paths:
        with tarfile.open(path) as tf:
            for name in sorted(n for n in tf.getnames() if n.endswith("/steps.jsonl")):
                run = name.removeprefix("./").removesuffix("/steps.jsonl")
                row = summary(rows(tf, name), rows(tf, name.replace("steps.jsonl", "requests.jsonl")))
                meta = json.load(tf.extractfile(name.replace("steps.jsonl", "meta.json")))
                row["gc_freeze"] = meta.get("gc_freeze", False)
                if cols is None:
                    cols = list(row)
                    print("| run | " + " | ".join(cols) + " |")
                    print("|---" * (len(cols) + 1) + "|")
                print(f"| {run} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
