"""The engine thread's call-to-call variation (simulator.jitter): measured from timelines whose
spread is known, and simulated with the mean kept and the spread shown in first tokens."""

from __future__ import annotations

import math
import random
import statistics
from statistics import NormalDist

import pytest

from simulator.config import SimulationConfig
from simulator.cost.calibration import load_profile
from simulator.deployment import resolve, with_calibration
from simulator.engine_thread import RunShape, measure
from simulator.jitter import LaunchJitter
from simulator.measured_steps import MeasuredStep
from simulator.paths import profiles_dir
from simulator.request import Request
from simulator.run import run_simulation

H200 = profiles_dir() / "calibration" / "h200" / "vllm-0.25.1.toml"


def test_factors_keep_the_mean_and_follow_the_lognormal():
    j = LaunchJitter(0.2)
    xs = [j.next() for _ in range(5000)]
    assert statistics.fmean(xs) == pytest.approx(1.0, abs=0.002)
    q = statistics.quantiles(xs, n=20)  # 5% ... 95%
    mean = math.exp(0.2 ** 2 / 2)  # a lognormal's mean over its median
    for p, got in ((0.05, q[0]), (0.5, q[9]), (0.95, q[18])):
        assert got == pytest.approx(math.exp(0.2 * NormalDist().inv_cdf(p)) / mean, rel=0.01)
    # Deterministic, and evenly spread over any stretch: 20 calls already span p5..p95.
    again = LaunchJitter(0.2)
    assert [again.next() for _ in range(3)] == xs[:3]
    short = sorted(xs[:20])
    assert short[0] < q[1] and short[-1] > q[17]


def _run(sigma: float, seed: int, layers: int = 32) -> RunShape:
    """Piecewise (300-token) and eager (1,000-token) prefill calls whose whole preparation and
    launch is the mean times a lognormal factor of log-sd ``sigma``; none in flight."""
    rng = random.Random(seed)
    steps, t = [], 0.0
    for i in range(300):
        tokens, per_layer = ((300, 0.00025), (1000, 0.0007))[i % 2]
        seqs = 1 + i % 5
        mean = 0.0025 + 2e-5 * seqs + layers * per_layer
        launch = mean * math.exp(rng.gauss(0.0, sigma))
        steps.append(MeasuredStep(seqs - 1, 500.0, [(tokens, 0)], 0.005, t, t + launch + 0.01,
                                  t - 1.0, t + 0.001, False, 0, t + launch, 0))
        t += 1.0
    return RunShape(steps, layers, 0, 512, False)


@pytest.mark.parametrize("sigma", [0.1, 0.25])
def test_the_spread_is_measured_against_each_runs_own_calls(sigma):
    """Two runs on hosts 1.5x apart: the spread is each call's against its own run, so the
    hosts' difference does not widen it."""
    fast, slow = _run(sigma, 1), _run(sigma, 2)
    slow = RunShape([MeasuredStep(s.n_decode, s.decode_ctx, s.prefill, s.gpu_s, s.call_start,
                                  s.call_end, s.gpu_free, s.gpu_start, s.in_flight, s.prev_seqs,
                                  s.call_start + 1.5 * (s.launched - s.call_start), 0)
                     for s in slow.steps], 32, 0, 512, False)
    # measure() needs decode calls for the preparation; a few, at the same spread.
    got, calls = measure([fast, slow, _decode_run()])["launch_jitter"]
    assert calls == 600
    assert got == pytest.approx(sigma, rel=0.12)


def _decode_run() -> RunShape:
    steps = [MeasuredStep(4, 500.0, [], 0.005, t, t + 0.01, t - 1.0, t + 0.001, False, 0,
                          t + 0.0025 + 8e-5, 0) for t in range(60)]
    return RunShape(steps, 32, 0, 512, False)


def _alone(cal_jitter: float) -> list[float]:
    """TTFTs of 200 short prompts, each reaching an idle H200 engine alone."""
    cfg = SimulationConfig(gpu="h200", model="llama-3.1-8b")
    dep = resolve(cfg)
    dep = with_calibration(dep, dep.calibration.model_copy(update={
        "overhead": dep.calibration.overhead.model_copy(update={"launch_jitter": cal_jitter})}))
    reqs = [Request(f"r{i}", 0.5 * i, 64, 2) for i in range(200)]
    return [r.ttft for r in run_simulation(cfg, reqs, deployment=dep).requests]


def test_an_idle_engines_first_tokens_spread_as_its_launches_do():
    """A short prompt at an idle engine waits for its call's preparation and piecewise launch:
    without jitter every one takes the same time; with it their mean stays and their spread is
    that CPU time's (p90 - p10 of the factor times it)."""
    sigma = load_profile(H200).overhead.launch_jitter
    assert 0.1 < sigma < 0.3  # measured on the H200 timelines
    flat, spread = _alone(0.0), _alone(sigma)
    assert max(flat) - min(flat) < 1e-9
    assert statistics.fmean(spread) == pytest.approx(flat[0], rel=0.01)
    rf = resolve(SimulationConfig(gpu="h200", model="llama-3.1-8b")).roofline
    cpu = rf.cpu_prepare(1) + rf.launch_time(64, True)
    j = LaunchJitter(sigma)
    q = statistics.quantiles([j.next() for _ in range(5000)], n=10)
    d = statistics.quantiles(spread, n=10)
    assert d[8] - d[0] == pytest.approx((q[8] - q[0]) * cpu, rel=0.1)
