"""Routers: which data-parallel replica an arriving request goes to.

Registered by name; ``--router`` takes any registered name.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol

from simulator.registry import Registry
from simulator.request import Request


class Routable(Protocol):
    def load(self) -> int: ...


class Router(Protocol):
    def __init__(self, replicas: Sequence[Routable]) -> None: ...

    @classmethod
    def assign(cls, requests: Sequence[Request], n_replicas: int) -> list[int] | None:
        """Replica of every request up front, for routers that ignore load; else None."""

    def pick(self, req: Request) -> int:
        """Replica for one request at its arrival, seeing the replicas' current state."""


ROUTERS: Registry[type] = Registry("router")


@ROUTERS.register("round-robin")
class RoundRobin:
    """Replica i, i+1, ... in turn, as a plain load balancer does."""

    def __init__(self, replicas: Sequence[Routable]) -> None:
        self.n = len(replicas)
        self.i = -1

    @classmethod
    def assign(cls, requests: Sequence[Request], n_replicas: int) -> list[int]:
        return [i % n_replicas for i in range(len(requests))]

    def pick(self, req: Request) -> int:
        self.i = (self.i + 1) % self.n
        return self.i


@ROUTERS.register("least-loaded")
class LeastLoaded:
    """The replica with the fewest queued + running requests (lowest index on ties)."""

    def __init__(self, replicas: Sequence[Routable]) -> None:
        self.replicas = replicas

    @classmethod
    def assign(cls, requests: Sequence[Request], n_replicas: int) -> None:
        return None

    def pick(self, req: Request) -> int:
        best, best_load = 0, None
        for i, r in enumerate(self.replicas):
            load = r.load()
            if best_load is None or load < best_load:
                best, best_load = i, load
        return best


@ROUTERS.register("prefix-affinity")
class PrefixAffinity:
    """Requests that share a prefix go to the same replica, so its prefix cache hits: the
    replica is chosen by the request's first hash id (its system prompt or conversation), or
    its session id; requests with neither go to the least-loaded replica. A replica more than
    ``SPILL`` requests busier than the least-loaded one is skipped for the least-loaded one
    (vLLM's production stack and SGLang's router bound affinity by load the same way)."""

    SPILL = 32

    def __init__(self, replicas: Sequence[Routable]) -> None:
        self.replicas = replicas
        self.least = LeastLoaded(replicas)

    @classmethod
    def assign(cls, requests: Sequence[Request], n_replicas: int) -> None:
        return None

    def pick(self, req: Request) -> int:
        key = req.hash_ids[0] if req.hash_ids else req.session_id
        if key is None:
            return self.least.pick(req)
        i = zlib.crc32(str(key).encode()) % len(self.replicas)
        low = self.least.pick(req)
        if self.replicas[i].load() - self.replicas[low].load() > self.SPILL:
            return low
        return i
