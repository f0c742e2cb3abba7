"""Assemble and run one simulation: deployment, replicas, router, arrivals; then the summary."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import simpy

from simulator.config import SimulationConfig
from simulator.deployment import Deployment, context_range_warning, resolve
from simulator.metrics import LogHistogram, distribution
from simulator.prefix_cache import PrefixCache
from simulator.replica import Replica
from simulator.request import REJECTED, Request, fresh
from simulator.route import ROUTERS

Progress = Callable[[int, int], None]


@dataclass
class SimulationResult:
    deployment: Deployment
    requests: list[Request]
    summary: dict
    # (t, replica, queued, running, kv utilisation, preemptions so far)
    timeseries: list[tuple[float, int, int, int, float, int]]


def _reject(r: Request, max_len: int) -> bool:
    """vLLM refuses a request whose prompt plus output exceeds max-model-len."""
    if r.input_tokens + r.output_tokens <= max_len:
        return False
    r.rejected = (f"input+output tokens exceed max-model-len "
                  f"({r.input_tokens + r.output_tokens} > {max_len})")
    r.state = REJECTED
    return True


def _arrivals(env: simpy.Environment, reqs: list[Request], replicas: list[Replica], router,
              progress: Progress | None):
    """Live routing: each request is routed at its arrival, seeing the replicas' state."""
    n = len(reqs)
    every = max(n // 200, 1)
    for i, r in enumerate(reqs):
        dt = r.arrival - env.now
        if dt > 0:
            yield env.timeout(dt)
        replicas[router.pick(r)].enqueue(r)
        if progress and i % every == 0:
            progress(i, n)


class OwnClock:
    """A pre-routed replica's own clock, in place of a simpy environment. Nothing outside such
    a replica reads or changes its state (its requests are assigned before the run), and the
    only events its process waits on are its own timeouts: each replica can run to the end on
    its own, one after another, with the timeouts as plain additions (as simpy adds them) and
    none of the event loop's cost."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: float = 0  # as simpy's clock starts

    def timeout(self, delay: float) -> float:
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        return delay

    def process(self, gen):
        return gen

    def run(self, gen, tick=None, every: float = math.inf) -> None:
        """Run ``gen`` to its end; call ``tick(now)`` each time ``every`` more seconds pass."""
        nxt = every if tick else math.inf
        for delay in gen:
            self.now += delay
            if self.now >= nxt:
                tick(self.now)
                nxt = (self.now // every + 1) * every
        if tick:
            tick(self.now)


def run_simulation(cfg: SimulationConfig, requests: list[Request],
                   progress: Progress | None = None,
                   deployment: Deployment | None = None) -> SimulationResult:
    """Replay ``requests`` (sorted by arrival) through the deployment ``cfg`` describes
    (``deployment``, when given, is ``resolve(cfg)`` already done)."""
    dep = deployment or resolve(cfg)
    env = simpy.Environment()
    itl = LogHistogram()
    done: list[Request] = []
    rejected = [r for r in requests if _reject(r, dep.max_model_len)]
    accepted = [r for r in requests if r.rejected is None] if rejected else requests
    span = max(requests[-1].arrival, 1.0)
    sample_every = span / cfg.timeseries_points
    router_cls = ROUTERS.get(cfg.router)
    if dep.prefill_replicas:
        return _run_disaggregated(cfg, dep, env, requests, accepted, rejected, itl, done,
                                  sample_every, router_cls, progress)
    # A pipeline-parallel replica keeps pp batches in flight, each crossing every stage: it runs
    # as pp engines sharing its KV cache and batch limits, each step costing the whole model.
    n = dep.replicas * dep.pp
    plan = router_cls.assign(accepted, n)
    if plan is None:
        replicas = [_replica(env, dep, i, itl, done, sample_every) for i in range(n)]
        router = router_cls(replicas)
        env.process(_arrivals(env, accepted, replicas, router, progress))
        env.run()
    else:
        per_replica: list[list[Request]] = [[] for _ in range(n)]
        for r, i in zip(accepted, plan, strict=True):
            per_replica[i].append(r)
        replicas = [_replica(OwnClock(), dep, i, itl, done, sample_every, per_replica[i])
                    for i in range(n)]
        total = len(requests)
        for k, rep in enumerate(replicas):
            # Progress: replicas done, plus this one's simulated time as a share of the span.
            tick = None if not progress else (
                lambda t, k=k: progress(min(int(total * (k + min(t / span, 1.0)) / n), total),
                                        total))
            rep.env.run(rep.proc, tick, span / 100)
    return _finish(cfg, dep, requests, done, rejected, replicas, itl, progress)


def _replica(env: simpy.Environment | OwnClock, dep: Deployment, i: int, itl: LogHistogram, sink: list,
             sample_every: float, incoming: list[Request] | None = None) -> Replica:
    """One engine of the deployment (one of a pipeline-parallel replica's ``pp``)."""
    return Replica(env, i, dep.roofline, dep.num_kv_blocks // dep.pp, dep.block_size,
                   max(dep.max_num_seqs // dep.pp, 1), dep.max_num_batched_tokens, itl, sink,
                   sample_every, incoming, dep.async_scheduling,
                   PrefixCache(dep.hash_block_size, dep.block_size) if dep.prefix_caching
                   else None)


def _finish(cfg, dep, requests, done, rejected, replicas, itl, progress,
            extra: dict | None = None) -> SimulationResult:
    if progress:
        progress(len(requests), len(requests))
    # Front-end latency (request admission, output processing and streaming): it delays what a
    # client sees, not the engine, so it shifts every token time and nothing else.
    lat = dep.calibration.overhead.request_latency_s
    if lat:
        for r in done:
            r.first_token_t += lat
            r.finish_t += lat
    end = max((r.finish_t for r in done), default=requests[-1].arrival)
    for rep in replicas:  # final state of each replica in the time series
        rep._sample(end)
    summary = summarize(cfg, dep, requests, done, rejected, replicas, itl, end)
    if extra:
        summary.update(extra)
    series = [(t, rep.index, q, run, kv, pre) for rep in replicas
              for (t, q, run, kv, pre) in rep.stats.samples]
    series.sort()
    return SimulationResult(dep, requests, summary, series)


def _run_disaggregated(cfg, dep, env, requests, accepted, rejected, itl, done, sample_every,
                       router_cls, progress) -> SimulationResult:
    """P prefill replicas hand each request's KV to one of D decode replicas (live routing)."""
    from simulator.disaggregate import Handoff, shadow_of, transfer_summary
    from simulator.route import LeastLoaded

    p = dep.prefill_replicas
    times: list[float] = []
    shadows = [shadow_of(r) for r in accepted]
    real = {id(s): r for s, r in zip(shadows, accepted, strict=True)}
    decode: list[Replica] = []
    to_decode = LeastLoaded(decode)
    handoff = Handoff(env, dep, lambda r: decode[to_decode.pick(r)].enqueue(r), real, times)
    prefill = [_replica(env, dep, i, itl, handoff, sample_every) for i in range(p)]
    decode += [_replica(env, dep, i, itl, done, sample_every) for i in range(p, dep.replicas)]
    env.process(_arrivals(env, shadows, prefill, router_cls(prefill), progress))
    env.run()
    return _finish(cfg, dep, requests, done, rejected, prefill + decode, itl, progress,
                   {"disaggregation": transfer_summary(times, dep)})


def speculative_summary(cfg: SimulationConfig, dep: Deployment, requests: list[Request],
                        summary: dict) -> dict | None:
    """With speculative decoding: the mean accepted length, and the speed-up against the same
    deployment and trace without it (a second simulation)."""
    sp = dep.roofline.spec
    if sp is None:
        return None
    base_cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(
        update={"speculative_config": None})})
    base = run_simulation(base_cfg, fresh(requests)).summary
    out = {"method": sp.method, "num_speculative_tokens": sp.k,
           "mean_accepted_length": sp.tokens_per_step(),
           "per_request_rates": sum(r.accept is not None for r in requests)}
    for key in ("tpot_s", "e2e_s", "ttft_s"):
        b, s = base[key]["p50"], summary[key]["p50"]
        out[f"baseline_{key}_p50"] = b
        out[f"speedup_{key}_p50"] = b / s if b and s else None
    out["speedup_output_throughput"] = (summary["output_throughput"] / base["output_throughput"]
                                        if base["output_throughput"] else None)
    return out


def summarize(cfg: SimulationConfig, dep: Deployment, requests: list[Request],
              done: list[Request], rejected: list[Request], replicas: list[Replica],
              itl: LogHistogram, end: float) -> dict:
    start = requests[0].arrival
    duration = max(end - start, 1e-9)
    ttft = [r.first_token_t - r.arrival for r in done]
    e2e = [r.finish_t - r.arrival for r in done]
    tpot = [t for r in done if (t := r.tpot) is not None]
    out_tok = sum(r.output_tokens for r in done)
    in_tok = sum(r.input_tokens for r in done)
    slos = {"ttft": cfg.slo_ttft, "tpot": cfg.slo_tpot, "e2e": cfg.slo_e2e}
    goodput = attainment = None
    if any(v is not None for v in slos.values()):
        good = sum(
            1 for r in done
            if (cfg.slo_ttft is None or r.ttft <= cfg.slo_ttft)
            and (cfg.slo_tpot is None or (r.tpot or 0.0) <= cfg.slo_tpot)
            and (cfg.slo_e2e is None or r.e2e <= cfg.slo_e2e)
        )
        goodput = good / duration
        attainment = good / len(done) if done else None
    stats = [rep.stats for rep in replicas]
    steps = sum(s.steps for s in stats)
    gpus = dep.replicas * dep.tp
    peak_flops = dep.gpu.peak_flops(dep.precision.gemm_dtype) * gpus
    # Each replica's FLOPs and bytes are per GPU of its TP group; scale by tp for the group.
    flops = sum(s.flops for s in stats) * dep.tp
    hbm = sum(s.hbm_bytes for s in stats) * dep.tp
    gpu_hours = dep.num_gpus * duration / 3600
    cost = gpu_hours * dep.gpu_cost_per_hour
    return {
        "ttft_s": distribution(ttft),
        "tpot_s": distribution(tpot),
        "itl_s": itl.summary(),
        "itl_gaps": round(itl.weight),  # token gaps counted: sum of (output tokens - 1)
        "e2e_s": distribution(e2e),
        "completed": len(done),
        "rejected": len(rejected),
        "rejected_reasons": _count_reasons(rejected),
        "preemptions": sum(rep.sched.preemptions for rep in replicas),
        "duration_s": duration,
        "request_throughput": len(done) / duration,
        "output_throughput": out_tok / duration,
        "total_token_throughput": (in_tok + out_tok) / duration,
        "total_input_tokens": in_tok,
        "total_output_tokens": out_tok,
        "goodput": goodput,
        "slo_attainment": attainment,  # share of completed requests within every SLO
        "slo": slos,
        "kv_cache_utilization": {
            "mean": sum(s.kv_integral for s in stats) / (duration * len(stats)),
            "peak": max(s.kv_peak_blocks for s in stats) / replicas[0].sched.kv.total,
        },
        "mean_batch_size": sum(s.seq_steps for s in stats) / steps if steps else 0.0,
        "prefix_cache": _prefix_summary(dep, replicas),
        # Time-average requests waiting, running or in the front end, all replicas (Little's L;
        # each completed request spends request_latency_s outside the engine).
        "mean_requests_in_system": (sum(s.occupancy_integral for s in stats)
                                    + dep.calibration.overhead.request_latency_s * len(done))
                                   / duration,
        "busy_fraction": sum(s.busy_s for s in stats) / (duration * len(stats)),
        "engine_steps": steps,
        "prefill_tokens": sum(s.prefill_tokens for s in stats),
        "mfu": flops / (peak_flops * duration),
        "mbu": hbm / (dep.gpu.memory_bandwidth * gpus * duration),
        "power_cap": _power_summary(dep, stats),
        "gpu_hours": gpu_hours,
        "cost_usd": cost,
        "cost_per_hour_usd": dep.num_gpus * dep.gpu_cost_per_hour,
        "cost_per_million_output_tokens": cost / out_tok * 1e6 if out_tok else None,
        "calibrated": dep.calibration.calibrated,
        "error_band": dep.error_band,  # calibrated profiles state theirs too (validation.csv)
        # ... and how far they were from real vLLM on runs measured like this one
        "measured_error": dep.measured_error,
        "warnings": dep.warnings + context_range_warning(
            dep.calibration, max((r.input_tokens + r.output_tokens for r in done), default=0)),
        "config": {**dep.describe(), "engine_args": cfg.engine.model_dump(),
                   "slo": slos},
    }


def _power_summary(dep: Deployment, stats: list) -> dict:
    """The power cap's slowdown (simulator.cost.power): its factor, and how much GPU time it
    added to the steps holding prefill (their share, None without such steps)."""
    pre = sum(s.prefill_gpu_s for s in stats)
    added = sum(s.power_added_s for s in stats)
    return {"slowdown": dep.roofline.power_k, "added_gpu_s": added,
            "prefill_share": added / (pre - added) if pre > added else None}


def _prefix_summary(dep: Deployment, replicas: list[Replica]) -> dict:
    caches = [rep.sched.prefix for rep in replicas if rep.sched.prefix is not None]
    q = sum(c.query_tokens for c in caches)
    hit = sum(c.hit_tokens for c in caches)
    return {"enabled": dep.prefix_caching, "hash_block_size": dep.hash_block_size,
            "query_tokens": q, "hit_tokens": hit, "hit_rate": hit / q if q else None}


def _count_reasons(rejected: list[Request]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejected:
        key = (r.rejected or "").split(" (")[0]
        out[key] = out.get(key, 0) + 1
    return out
