"""A tiny name -> implementation registry used by every pluggable axis.

Routers, trace formats and report writers register themselves with a decorator, the way Vidur's
type registries and GuideLLM's decorator registration work, so adding one is one class and one
line, and the CLI's choices come from the registry instead of a hand-kept list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from simulator.errors import InputError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise InputError(
                f"unknown {self.kind} {name!r}{suggest(name, self._items)}; "
                f"choose from {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)
