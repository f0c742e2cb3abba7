"""vLLM's automatic prefix caching, at the granularity of a trace's ``hash_ids``.

A trace's ``hash_ids`` name the prompt's consecutive ``hash_block``-token blocks (Mooncake's
convention, 512 tokens): two requests whose lists start alike share those prefix tokens. Each
id is a *group* of ``hash_block / block_size`` KV blocks. A group a running request holds is
charged to the KV cache once, however many requests share it (a reference count). When the last
holder finishes or is preempted, the group stays cached but free: it is evictable, least
recently freed first, and is evicted only when an allocation needs its blocks (vLLM keeps
freed blocks' contents until it reuses them). A request admitted with its first ``h`` ids
cached skips their prefill (vLLM computes at least the prompt's last token); when its prefill
completes, its own full groups become cached for later requests.

A preempted request's own computed blocks stay cached too (vLLM hashes every full block and
frees a preempted request's blocks like a finished one's), so when it is admitted again it skips
what is left of them: they join the evictable ones as one entry, and eviction trims that entry
from its tail, as vLLM frees a request's blocks in reverse order so that its tail goes first
(vLLM's prefix-caching design doc). Measured: Mooncake past saturation on the H200
(``llama8b-bf16-long/mc-x1``), a preempted request's recompute took 2,144 of its 4,592 tokens.

Simplification, stated: vLLM hashes every full 16-token block and evicts free blocks in LRU
order whether or not another request could ever hit them; here only the trace's groups are
cached, and a cached group is evicted only once the never-shared free blocks run out.
"""

from __future__ import annotations

from collections import OrderedDict

from simulator.request import Request


class PrefixCache:
    def __init__(self, hash_block: int, block_size: int) -> None:
        if hash_block % block_size:
            raise ValueError(f"hash block {hash_block} is not a multiple of the KV block "
                             f"size {block_size}")
        self.hash_block = hash_block
        self.bpg = hash_block // block_size  # KV blocks per group
        self.refs: dict[int, int] = {}  # cached group -> running requests holding it
        # Cached and held by nobody, least recently freed first: a group id -> its blocks, or a
        # preempted request's stash key (its id, the block the stash starts at) -> its own
        # blocks still cached.
        self.free_lru: OrderedDict[int | tuple[int, int], int] = OrderedDict()
        self.evictable = 0  # blocks in free_lru
        self.query_tokens = 0
        self.hit_tokens = 0

    @property
    def evictable_blocks(self) -> int:
        return self.evictable

    def match(self, r: Request) -> int:
        """Cached groups at the start of r's prompt (keeping at least one token to compute)."""
        ids = r.hash_ids
        if not ids:
            return 0
        most = (r.prompt_len - 1) // self.hash_block
        h = 0
        refs, lru = self.refs, self.free_lru
        while h < most and h < len(ids) and (ids[h] in refs or ids[h] in lru):
            h += 1
        return h

    def own_hit(self, r: Request, h: int) -> int:
        """Blocks of r's own stash still cached, if they continue its first h groups."""
        key = r.stash
        if key is None or key[1] != h * self.bpg:
            return 0
        return self.free_lru.get(key, 0)

    def stash(self, r: Request, start: int, blocks: int) -> None:
        """r was preempted holding ``blocks`` full blocks of its own after block ``start``:
        they stay cached, evictable, most recently freed."""
        if blocks <= 0:
            return
        key = r.stash = (id(r), start)
        self.free_lru[key] = blocks
        self.evictable += blocks

    def unstash(self, r: Request) -> None:
        """r is admitted again: its stash, hit or not, is no longer a cache entry."""
        key, r.stash = r.stash, None
        if key is not None:
            self.evictable -= self.free_lru.pop(key, 0)

    def acquire(self, r: Request, h: int, own_tokens: int = 0) -> int:
        """r takes its first h (cached) groups and ``own_tokens`` of its stash; returns blocks
        newly charged to the cache."""
        self.query_tokens += r.prompt_len
        self.hit_tokens += h * self.hash_block + own_tokens
        self.unstash(r)
        charged = 0
        held = []
        for gid in (r.hash_ids or ())[:h]:
            if gid in self.free_lru:
                self.evictable -= self.free_lru.pop(gid)
                self.refs[gid] = 1
                charged += self.bpg
            else:
                self.refs[gid] += 1
            held.append(gid)
        r.groups = held
        return charged

    def publish(self, r: Request) -> int:
        """r's prefill is done: its own full groups become cached, held by r. Returns the
        blocks moved from r's own charge to the cache's (they are the same blocks)."""
        ids = r.hash_ids
        if not ids:
            return 0
        full = min(len(ids), r.input_tokens // self.hash_block)
        moved = 0
        held = r.groups if r.groups is not None else []
        for gid in ids[len(held):full]:
            if gid in self.refs or gid in self.free_lru:
                break  # computed concurrently by another request: r keeps its own copy
            self.refs[gid] = 1
            held.append(gid)
            moved += self.bpg
        r.groups = held
        return moved

    def release(self, r: Request) -> int:
        """r stops running: its groups lose a holder. Returns the blocks freed (now evictable)."""
        freed = 0
        for gid in r.groups or ():
            n = self.refs[gid] - 1
            if n:
                self.refs[gid] = n
            else:
                del self.refs[gid]
                self.free_lru[gid] = self.bpg
                self.evictable += self.bpg
                freed += self.bpg
        r.groups = None
        return freed

    def shrink(self, room: int) -> None:
        """Evict least recently freed entries until the evictable blocks fit in ``room``; a
        stash loses only the blocks needed, from its tail."""
        lru = self.free_lru
        while lru and self.evictable > room:
            key, blocks = next(iter(lru.items()))
            over = self.evictable - room
            if isinstance(key, tuple) and blocks > over:
                lru[key] = blocks - over
                self.evictable -= over
                return
            del lru[key]
            self.evictable -= blocks
