"""``simulate plan``: the cheapest deployment that meets the SLOs at the trace's load.

A *family* is a GPU type, a TP size and a set of engine knobs; a *candidate* is a family with a
number of data-parallel replicas. The search is smarter than the full grid:

- families whose model does not fit (or whose TP the GPU cannot do) are pruned by resolving
  the config, with no simulation;
- families are visited cheapest per replica first; once a deployment meets the SLOs at $B/h,
  a family can only use as many replicas as cost at most $B/h, and is pruned when even one costs
  more;
- within a family the fewest replicas that meet the SLOs are found by bisection (latency falls
  as replicas are added);
- the highest load the chosen candidate sustains is found by doubling then bisecting the
  rate scale (to 3%).

"Meets the SLOs" is :func:`simulator.sweep.meets`: the chosen percentile (default p90) of TTFT,
TPOT and E2E each within its SLO and no request rejected.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from simulator.config import SimulationConfig
from simulator.errors import InputError
from simulator.sweep import evaluate, meets, point_config

LOAD_GROWTH_LIMIT = 64.0  # stop doubling the load beyond this multiple of the asked one
LOAD_PRECISION = 0.03


@dataclass
class Family:
    gpu: str
    tp: int
    knobs: dict
    price: float  # $ per GPU-hour
    max_replicas: int
    label: str = ""

    def config(self, replicas: int, base: dict) -> SimulationConfig:
        return point_config({"gpu": f"{self.gpu}x{self.tp * replicas}",
                             "tensor_parallel_size": self.tp, **self.knobs}, base)

    def cost(self, replicas: int) -> float:
        return self.price * self.tp * replicas


@dataclass
class Outcome:
    family: Family
    replicas: int | None = None  # fewest meeting the SLOs; None: none within the cap
    max_scale: float | None = None
    row: dict | None = None  # the chosen candidate at the asked load
    evaluations: list[dict] = field(default_factory=list)
    status: str = ""


def families(gpus: list[str], tps: list[int], knob_axes: dict[str, list], max_gpus: int,
             base: dict) -> tuple[list[Family], list[tuple[str, str]]]:
    """Feasible families, cheapest per replica first, and (label, reason) for pruned ones."""
    from simulator.deployment import resolve

    keys = list(knob_axes)
    out, pruned = [], []
    for gpu, tp, combo in itertools.product(gpus, tps, itertools.product(
            *(knob_axes[k] or [None] for k in keys))):
        knobs = {k: v for k, v in zip(keys, combo, strict=True) if v is not None}
        name = " ".join([f"{gpu} tp{tp}", *(f"{k}={v}" for k, v in knobs.items())])
        if tp > max_gpus:
            pruned.append((name, f"TP {tp} exceeds --max-gpus {max_gpus}"))
            continue
        try:
            dep = resolve(point_config({"gpu": f"{gpu}x{tp}", "tensor_parallel_size": tp,
                                        **knobs}, base))
        except InputError as e:
            pruned.append((name, e.message))
            continue
        out.append(Family(gpu, tp, knobs, dep.gpu_cost_per_hour, max_gpus // tp, name))
    out.sort(key=lambda f: (f.cost(1), f.label))
    return out, pruned


def search_family(task: tuple) -> Outcome:
    """Worker: bisect the replica count, then the load, for one family. Ctrl-C (in-process)
    ends the search with what it has, marked interrupted."""
    out = Outcome(task[0])
    try:
        return _search(task, out)
    except KeyboardInterrupt:
        out.status = "interrupted"
        out.replicas = out.max_scale = out.row = None
        return out


def _search(task: tuple, out: Outcome) -> Outcome:
    fam, base, trace, fmt, scale, slo, pct, cap, find_load = task
    seen: dict[tuple[int, float], bool] = {}

    def ok(n: int, s: float) -> bool:
        if (n, s) not in seen:
            cfg = fam.config(n, base)
            row, _ = evaluate((cfg.model_dump_json(), trace, fmt, s, fam.label, False))
            good = bool(meets(row, slo, pct))
            out.evaluations.append({"label": f"{fam.label} x{n}", "family": fam.label,
                                    "replicas": n, "gpus": n * fam.tp, "rate_scale": s,
                                    "meets": good, **row})
            seen[n, s] = good
        return seen[n, s]

    if cap < 1:
        out.status = "pruned: one replica costs more than the best found"
        return out
    if not ok(cap, scale):
        out.status = (f"misses the SLOs even with {cap} replica(s)" if cap == fam.max_replicas
                      else f"cannot meet the SLOs for less than the best found ({cap} replicas)")
        return out
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid, scale):
            hi = mid
        else:
            lo = mid + 1
    out.replicas, out.status = hi, "meets the SLOs"
    out.row = next(e for e in out.evaluations if e["replicas"] == hi and e["rate_scale"] == scale)
    if find_load:
        good, bad = scale, None
        while bad is None and good < scale * LOAD_GROWTH_LIMIT:
            if ok(hi, good * 2):
                good *= 2
            else:
                bad = good * 2
        while bad is not None and bad / good > 1 + LOAD_PRECISION:
            mid = math.sqrt(good * bad)
            if ok(hi, mid):
                good = mid
            else:
                bad = mid
        out.max_scale = good
    return out


def run_plan(fams: list[Family], base: dict, trace: str, fmt: str | None, scale: float,
             slo: dict, pct: int, jobs: int = 1, find_load: bool = True,
             progress=None) -> tuple[list[Outcome], bool]:
    """Visit families cheapest first, ``jobs`` at a time, each capped by the best cost so far.
    Returns the ranked outcomes and whether Ctrl-C cut the search short (the outcomes are then
    those finished, with every simulation already run)."""
    outcomes: list[Outcome] = []
    try:
        _visit(fams, base, trace, fmt, scale, slo, pct, jobs, find_load, progress, outcomes)
    except KeyboardInterrupt:
        return ranked(outcomes), True
    return ranked(outcomes), any(o.status == "interrupted" for o in outcomes)


def _visit(fams, base, trace, fmt, scale, slo, pct, jobs, find_load, progress,
           outcomes: list[Outcome]) -> None:
    from simulator.parallel import run_tasks

    best = math.inf
    for start in range(0, len(fams), max(jobs, 1)):
        batch = fams[start:start + max(jobs, 1)]
        tasks = []
        for f in batch:
            cap = f.max_replicas if best == math.inf else min(
                f.max_replicas, int(best / f.cost(1) + 1e-9))
            tasks.append((f, base, trace, fmt, scale, slo, pct, cap, find_load))
        for _, o in run_tasks(search_family, tasks, jobs):
            outcomes.append(o)
            if o.replicas is not None:
                best = min(best, o.family.cost(o.replicas))
            if progress:
                progress(len(outcomes), len(fams))
            if o.status == "interrupted":
                raise KeyboardInterrupt


def ranked(outcomes: list[Outcome]) -> list[Outcome]:
    """Meeting candidates by cost, then p90 TTFT; the rest after, cheapest first."""
    def key(o: Outcome):
        if o.row is None:
            return (1, o.family.cost(1), 0.0, o.family.label)
        return (0, o.family.cost(o.replicas), o.row.get("ttft_s.p90") or 0.0, o.family.label)
    return sorted(outcomes, key=key)
