"""How far real vLLM differs from itself: one run (GPU, model, engine arguments, replayed
requests) measured on several hosts, and the accuracy floor that spread sets for any simulator.

One simulated number ``p`` is within ``tol`` of two measurements ``lo <= hi`` only if
``hi / lo <= (1 + tol) / (1 - tol)``. The best single prediction, ``p = 2 lo hi / (lo + hi)``,
misses both by ``(hi - lo) / (hi + lo)``: the group's **floor**. Where the floor exceeds a
target, no profile meets it on every host, whatever the simulator does; where a group's
simulated error is near its floor, the simulator is as close as one profile can be. The
simulator replays the same requests for every run of a group, so its numbers are the same for
each and its worst error over the group is at least the floor.

A group spans hosts where its runs came from different GPUs (``meta.json``'s ``host.gpu_uuid``;
a run that does not record it counts as a host of its own). Runs repeated on one host are also
a group of their own: the spread of one machine from one run to the next.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from simulator.errors import InputError
from simulator.report.data import profiler_summary

KEYS = tuple(f"{m}.{p}" for m in ("ttft_s", "tpot_s") for p in ("p50", "p90", "p99"))
# What makes two measured runs the same experiment: the engine, its build, what the profiler did
# around it. Not the host, the date or the seed of the random weights.
SAME = ("gpu", "vllm", "torch", "model", "speculative_config", "enable_prefix_caching",
        "hash_block", "async_scheduling", "warmup", "gc_freeze")


@dataclass(frozen=True)
class Group:
    """Runs of one experiment on several hosts: each run's measured metrics and the floors."""

    runs: tuple[str, ...]
    hosts: int  # distinct hosts among the runs
    measured: dict[str, tuple[float, ...]]  # metric -> one value per run, in ``runs`` order

    @property
    def floor(self) -> dict[str, float]:
        return {k: floor(v) for k, v in self.measured.items()}


def floor(values: tuple[float, ...] | list[float]) -> float:
    """The smallest worst-case relative error one number can have against all ``values``."""
    lo, hi = min(values), max(values)
    return (hi - lo) / (hi + lo) if hi > 0 else 0.0


def _read(run_dir: Path) -> tuple[dict, list[dict]]:
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
        recs = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines() if x]
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"not a measured run folder: {e}", file=str(run_dir)) from None
    return meta, recs


def fingerprint(meta: dict, recs: list[dict]) -> str:
    """Equal for runs of the same experiment: engine and profiler settings, replayed requests."""
    engine = {k: v for k, v in (meta.get("engine_args") or {}).items() if k != "seed"}
    requests = [(r["arrival_s"], r["input_tokens"], r["output_tokens"]) for r in recs]
    doc = json.dumps([{k: meta.get(k) for k in SAME}, engine, requests], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def groups(run_dirs: list[Path]) -> list[Group]:
    """The experiments measured more than once among ``run_dirs`` (all their runs, then the runs
    of each host that ran it more than once), in run-name order."""
    by: dict[str, list[tuple[str, str, dict]]] = {}
    for d in run_dirs:
        meta, recs = _read(d)
        name = f"{d.parent.name}/{d.name}"
        host = (meta.get("host") or {}).get("gpu_uuid") or name
        by.setdefault(fingerprint(meta, recs), []).append((name, host, profiler_summary(recs)[0]))
    out = []
    for members in by.values():
        members.sort(key=lambda m: tuple(m[0].split("/")))  # llama8b-bf16 before llama8b-bf16-x
        hosts = {h for _, h, _ in members}
        subsets = [members] + [[m for m in members if m[1] == h] for h in sorted(hosts)
                               if len(hosts) > 1]
        for sub in subsets:
            if len(sub) > 1:
                out.append(Group(tuple(n for n, _, _ in sub), len({h for _, h, _ in sub}), {
                    k: tuple(s[k.split(".")[0]][k.split(".")[1]] for _, _, s in sub)
                    for k in KEYS}))
    return sorted(out, key=lambda g: (tuple(g.runs[0].split("/")), -g.hosts))


def write_table(found: list[Group], path: Path) -> None:
    """One row per group: its runs (space-separated), hosts, and each metric's floor (read back
    with :func:`simulator.accuracy.read_table`, the error table's reader)."""
    lines = [",".join(("runs", "hosts", *KEYS))]
    for g in found:
        fl = g.floor
        lines.append(",".join((" ".join(g.runs), str(g.hosts), *(f"{fl[k]:.4f}" for k in KEYS))))
    path.write_text("\n".join(lines) + "\n")


def beyond_floor(found: list[Group], targets: dict[str, float]) -> set[tuple[str, str]]:
    """(run, metric) pairs no single simulated number can bring within ``targets`` on every
    run of an experiment: those of groups whose floor for the metric exceeds its target."""
    out = set()
    for g in found:
        fl = g.floor  # derived on each access: once per group
        out |= {(r, k) for k, tol in targets.items() if fl[k] > tol for r in g.runs}
    return out
