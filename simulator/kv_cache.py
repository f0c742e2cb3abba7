"""Paged KV-cache accounting for a replica, with O(block_size) cost per event.

vLLM gives each sequence blocks of ``block_size`` tokens; a decoding sequence needs a new block
on the step where its token count crosses a block boundary. Instead of walking every sequence,
decoding sequences are counted in ``block_size`` buckets keyed by ``(tokens - step) mod
block_size``, a key that does not change as they decode: the number of new blocks any run of
steps needs is then a sum over at most ``block_size`` buckets.

With speculative decoding a sequence gains E tokens a step on average, so it fills a block every
``steps_per_block = round(block_size / E)`` steps: decoders are then bucketed in step units
(a sequence's offset into its current block, scaled to steps), and a decoder holds
``blocks_for(prompt) + (block boundaries crossed in step units)``, which :meth:`held` gives and
allocation and release both use, so the count never drifts.
"""

from __future__ import annotations


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class KVCache:
    def __init__(self, num_blocks: int, block_size: int, steps_per_block: int | None = None) -> None:
        self.total = num_blocks
        self.bs = block_size
        self.spb = steps_per_block or block_size  # decode steps that fill one block
        self.used = 0
        self.buckets = [0] * self.spb
        self.decoding = 0

    @property
    def free(self) -> int:
        return self.total - self.used

    def offset(self, tokens: int) -> int:
        """A decoder's position in its current block, in step units."""
        return (tokens % self.bs) * self.spb // self.bs

    def key(self, v0: int, step: int) -> int:
        return (v0 - step) % self.spb

    def held(self, prompt_tokens: int, v0: int, steps: int) -> int:
        """Blocks a decoder holds after ``steps`` decode steps (what the buckets allocated)."""
        s = self.spb
        return blocks_for(prompt_tokens, self.bs) + blocks_for(v0 + steps, s) - blocks_for(v0, s)

    def add_decoder(self, key: int) -> None:
        self.buckets[key] += 1
        self.decoding += 1

    def remove_decoder(self, key: int) -> None:
        self.buckets[key] -= 1
        self.decoding -= 1

    def new_blocks(self, step: int, m: int) -> int:
        """Blocks the decoding sequences allocate over steps ``step .. step+m-1``."""
        bs, b = self.spb, self.buckets
        if m == 1:
            return b[-step % bs]
        full, rest = divmod(m, bs)
        n = full * self.decoding
        if rest:
            # Buckets o, o-1, ..., o-rest+1 (mod bs), o = -step mod bs: one or two slices.
            o = -step % bs
            lo = o - rest + 1
            n += sum(b[lo:o + 1]) if lo >= 0 else sum(b[:o + 1]) + sum(b[bs + lo:])
        return n

    def steps_that_fit(self, step: int, m_max: int) -> int:
        """Most decode steps (<= m_max) whose block allocations fit in the free blocks."""
        if self.decoding == 0:
            return m_max
        bs, b, free = self.spb, self.buckets, self.free
        cycles = free // self.decoding  # each bs steps allocate one block per sequence
        m = cycles * bs
        if m >= m_max:
            return m_max
        left = free - cycles * self.decoding
        j = 0
        while j < bs and m + j < m_max:
            need = b[(-(step + m + j)) % bs]
            if need > left:
                break
            left -= need
            j += 1
        return m + j
