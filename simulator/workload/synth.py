"""Synthetic traces: an arrival process, length distributions, prefix sharing.

Arrivals use time rescaling: a unit-rate renewal process (exponential gaps for Poisson, gamma
gaps with a chosen coefficient of variation for bursty traffic) in "operational time" u is
mapped to wall time by t = Lambda^-1(u), where Lambda(t) is the integral of the rate pattern
(constant, diurnal, step or spike). The result is a Poisson or gamma process whose rate follows
the pattern, generated in one pass and streamed.

Lengths come from named distributions (``fixed:512``, ``uniform:min=100,max=2000``,
``lognormal:median=800,sigma=1.0``, ``normal:mean=500,std=100``, ``exponential:mean=300``) or
are resampled jointly (input with its output) from a real trace.

Prefix sharing is written as ``hash_ids`` (one id per ``hash_block`` tokens, Mooncake's
convention): ``system_prompts`` shared prompts of ``system_prompt_tokens`` tokens prepended to
the sampled input; ``session_turns`` > 1 makes multi-turn sessions whose turn k carries the
whole previous conversation as its prefix, ``think_time`` seconds (mean, exponential) after
the previous turn.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from simulator.errors import InputError
from simulator.request import Request

PATTERNS = ("constant", "diurnal", "step", "spike")


@dataclass
class RatePattern:
    """Requests per second over time: ``rate x m(t)``."""

    rate: float
    pattern: str = "constant"
    period: float = 86_400.0  # diurnal
    amplitude: float = 0.5  # diurnal: m swings between 1-a and 1+a, lowest at t=0
    at: float = 0.0  # step / spike start
    width: float = 60.0  # spike length
    factor: float = 2.0  # step / spike multiplier

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise InputError(f"unknown pattern {self.pattern!r}; choose from "
                             f"{', '.join(PATTERNS)}", field="pattern")
        if not self.rate > 0 or not math.isfinite(self.rate):
            raise InputError(f"must be > 0, got {self.rate}", field="rate")
        if not 0 <= self.amplitude <= 1:
            raise InputError(f"must be within [0, 1], got {self.amplitude}", field="amplitude")
        if self.factor < 0 or self.period <= 0 or self.width <= 0:
            raise InputError("factor must be >= 0, period and width > 0", field="factor")

    def at_time(self, t: float) -> float:
        m = 1.0
        if self.pattern == "diurnal":
            m = 1 - self.amplitude * math.cos(2 * math.pi * t / self.period)
        elif self.pattern == "step":
            m = self.factor if t >= self.at else 1.0
        elif self.pattern == "spike":
            m = self.factor if self.at <= t < self.at + self.width else 1.0
        return self.rate * m

    def grid_step(self) -> float:
        """Integration step: fine enough for the pattern's features."""
        dt = 1.0
        if self.pattern == "diurnal":
            dt = min(dt, self.period / 2000)
        if self.pattern == "spike":
            dt = min(dt, self.width / 50)
        return max(dt, 1e-3)

    def arrivals(self, rng: random.Random, cv: float = 1.0) -> Iterator[float]:
        """Arrival times: a renewal process with gap CV ``cv`` (1 = Poisson), rate-modulated."""
        if cv <= 0 or not math.isfinite(cv):
            raise InputError(f"must be > 0, got {cv}", field="cv")
        shape = 1 / cv**2
        gap: Callable[[], float] = (lambda: rng.expovariate(1.0)) if cv == 1.0 else (
            lambda: rng.gammavariate(shape, 1 / shape))
        dt = self.grid_step()
        t, lam = 0.0, 0.0  # grid point and Lambda(t)
        u = gap()
        while True:
            # Advance the grid until Lambda passes u; the rate is constant on a grid cell
            # (midpoint), so inside it Lambda is linear and inverts exactly.
            r = self.at_time(t + dt / 2)
            if lam + r * dt >= u and r > 0:
                yield t + (u - lam) / r
                u += gap()
                continue
            lam += r * dt
            t += dt
            if r == 0 and t > self.at + self.width + 10 * self.period:
                return  # a zero rate forever: nothing more will arrive


def parse_dist(spec: str, field: str) -> Callable[[random.Random], int]:
    """``name:params`` -> a sampler of token counts >= 1."""
    name, _, args = spec.partition(":")
    kw: dict[str, float] = {}
    try:
        if args and "=" not in args:
            kw["value"] = float(args)
        else:
            for part in filter(None, args.split(",")):
                k, _, v = part.partition("=")
                kw[k.strip()] = float(v)
    except ValueError:
        raise InputError(f"bad parameters in {spec!r}", field=field) from None
    need = {"fixed": ("value",), "uniform": ("min", "max"), "lognormal": ("median", "sigma"),
            "normal": ("mean", "std"), "exponential": ("mean",)}
    if name not in need:
        raise InputError(f"unknown distribution {name!r}; choose from {', '.join(need)}",
                         field=field)
    if set(kw) != set(need[name]):
        raise InputError(f"{name} takes {', '.join(need[name])}, got {spec!r}", field=field)
    if any(v < 0 for v in kw.values()):
        raise InputError(f"parameters must be >= 0 in {spec!r}", field=field)

    def clip(x: float) -> int:
        return max(1, round(x))

    if name == "fixed":
        return lambda rng: clip(kw["value"])
    if name == "uniform":
        lo, hi = sorted((kw["min"], kw["max"]))
        return lambda rng: clip(rng.uniform(lo, hi))
    if name == "lognormal":
        mu = math.log(max(kw["median"], 1e-9))
        return lambda rng: clip(rng.lognormvariate(mu, kw["sigma"]))
    if name == "normal":
        return lambda rng: clip(rng.gauss(kw["mean"], kw["std"]))
    return lambda rng: clip(rng.expovariate(1 / max(kw["mean"], 1e-9)))


@dataclass
class Synth:
    pattern: RatePattern
    input_len: Callable[[random.Random], int]
    output_len: Callable[[random.Random], int]
    duration: float | None = None
    requests: int | None = None
    cv: float = 1.0
    resample: list[tuple[int, int]] | None = None  # (input, output) pairs from a real trace
    system_prompts: int = 0
    system_prompt_tokens: int = 0
    session_turns: int = 1
    think_time: float = 30.0
    hash_block: int = 512
    seed: int = 0

    def generate(self) -> Iterator[Request]:
        """The trace, in arrival order, streamed."""
        if self.duration is None and self.requests is None:
            raise InputError("give --duration or --requests", field="duration")
        rng = random.Random(self.seed)
        self._ids = itertools.count()
        self._prompts = [[next(self._ids) for _ in range(self.system_prompt_tokens
                                                           // self.hash_block)]
                         for _ in range(self.system_prompts)]
        firsts = (self._first_turn(rng, t, k) for k, t in enumerate(
            itertools.takewhile(lambda t: self.duration is None or t < self.duration,
                                self.pattern.arrivals(rng, self.cv)), 1))
        out = self._sessions(rng, firsts) if self.session_turns > 1 else firsts
        return itertools.islice(out, self.requests)

    def _lengths(self, rng: random.Random) -> tuple[int, int]:
        if self.resample:
            return self.resample[rng.randrange(len(self.resample))]
        return self.input_len(rng), self.output_len(rng)

    def _blocks(self, n_tokens: int, prefix: list[int]) -> list[int]:
        """Hash ids of a prompt of n_tokens whose first blocks are ``prefix``'s."""
        total = n_tokens // self.hash_block
        head = prefix[:total]
        return head + [next(self._ids) for _ in range(total - len(head))]

    def _first_turn(self, rng: random.Random, t: float, k: int) -> Request:
        inp, out = self._lengths(rng)
        prefix: list[int] = []
        if self._prompts:
            prefix = self._prompts[rng.randrange(len(self._prompts))]
            inp += self.system_prompt_tokens
        multi = self.session_turns > 1
        hashes = self._blocks(inp, prefix) if (self._prompts or multi) else None
        return Request(f"r{k}-1" if multi else f"r{k}", t, inp, out, 0,
                       f"s{k}" if multi else None, hashes)

    def _next_turn(self, rng: random.Random, prev: Request, turn: int) -> Request:
        inp, out = self._lengths(rng)
        t = prev.arrival + rng.expovariate(1 / self.think_time)
        ctx = prev.input_tokens + prev.output_tokens + inp
        # The previous prompt and its answer are the new prompt's prefix.
        prefix = self._blocks(prev.input_tokens + prev.output_tokens, prev.hash_ids or [])
        return Request(f"{prev.rid.rsplit('-', 1)[0]}-{turn}", t, ctx, out, 0, prev.session_id,
                       self._blocks(ctx, prefix))

    def _sessions(self, rng: random.Random, firsts: Iterator[Request]) -> Iterator[Request]:
        """Interleave each session's later turns with new sessions, in arrival order; only
        the open sessions are held in memory."""
        heap: list[tuple[float, int, Request, int]] = []
        seq = itertools.count()

        def pop() -> Iterator[Request]:
            _, _, req, turn = heapq.heappop(heap)
            if self.duration is not None and req.arrival >= self.duration:
                return
            if turn < self.session_turns:
                nxt = self._next_turn(rng, req, turn + 1)
                heapq.heappush(heap, (nxt.arrival, next(seq), nxt, turn + 1))
            yield req

        for req in firsts:
            while heap and heap[0][0] <= req.arrival:
                yield from pop()
            heapq.heappush(heap, (req.arrival, next(seq), req, 1))
        while heap:
            yield from pop()
