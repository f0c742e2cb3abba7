"""Routers: which data-parallel replica an arriving request goes to.

Registered by name; ``--router`` takes any registered name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from simulator.registry import Registry
from simulator.request import Request


class Routable(Protocol):
    def load(self) -> int: ...

    def prefix_match(self, req: Request) -> int: ...


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
class PrefixAffinity(LeastLoaded):
    """Cache-aware routing (as SGLang's router and vLLM's production-stack prefix router do):
    among the replicas no more than ``SPILL`` requests busier than the least-loaded one, the
    one whose prefix cache holds the longest start of the request's hash_ids; on a tie, or
    when nothing matches, the least-loaded one. Live, like least-loaded."""

    SPILL = 16

    def pick(self, req: Request) -> int:
        loads = [r.load() for r in self.replicas]
        low = min(loads)
        best, key = 0, None
        for i, rep in enumerate(self.replicas):
            if loads[i] > low + self.SPILL:
                continue
            k = (rep.prefix_match(req) if req.hash_ids else 0, -loads[i])
            if key is None or k > key:
                best, key = i, k
        return best
