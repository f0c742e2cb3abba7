"""Streaming trace transformations, applied in this order: time window, rate scaling,
sampling, length filters, request limit. Each drop is counted (``Counts``), never silent."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from simulator.request import Request


@dataclass
class Counts:
    read: int = 0
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1

    def line(self) -> str:
        why = "; ".join(f"{n:,} {k}" for k, n in self.dropped.items())
        return f"read {self.read:,} requests, wrote {self.written:,}" + (
            f" (dropped: {why})" if why else "") + "".join(f"; {n}" for n in self.notes)


@dataclass
class Transform:
    start: float | None = None  # window [start, end) in the trace's seconds; shifted to 0
    end: float | None = None
    rate_scale: float = 1.0  # 2 = twice the load: inter-arrival times halved
    sample: float = 1.0  # keep each request with this probability
    seed: int = 0
    min_input: int | None = None
    max_input: int | None = None
    min_output: int | None = None
    max_output: int | None = None
    max_requests: int | None = None

    def apply(self, reqs: Iterator[Request], counts: Counts) -> Iterator[Request]:
        rng = random.Random(self.seed)
        origin = self.start or 0.0
        for r in reqs:
            counts.read += 1
            if self.start is not None and r.arrival < self.start:
                counts.drop("before the window")
                continue
            if self.end is not None and r.arrival >= self.end:
                counts.read -= 1
                counts.notes.append("stopped reading at the window's end")
                break  # arrivals are sorted: nothing later can be inside
            r.arrival = (r.arrival - origin) / self.rate_scale
            if self.sample < 1.0 and rng.random() >= self.sample:
                counts.drop("not sampled")
                continue
            if (self.min_input and r.input_tokens < self.min_input) or (
                    self.max_input and r.input_tokens > self.max_input):
                counts.drop("input length outside the filter")
                continue
            if (self.min_output and r.output_tokens < self.min_output) or (
                    self.max_output and r.output_tokens > self.max_output):
                counts.drop("output length outside the filter")
                continue
            if self.max_requests is not None and counts.written >= self.max_requests:
                counts.read -= 1
                counts.notes.append(f"stopped reading after --max-requests {self.max_requests:,}")
                break
            counts.written += 1
            yield r
