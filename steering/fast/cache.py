"""The fast path's per-sequence cache: keys, values and hook-point residuals of one token sequence (a document), and
its SAE codes kept as nonzeros.

A cache is cut in two at the steering hook like the model (`model.FastModel`): the lower blocks' keys and values and
the residual at the hook point hold for any steering; the upper blocks' for the steering they were computed under
(`key`). After an edit everything from the first changed token on is dropped (`sync`), except where a continuation
moves the tokens after a short edit instead (`model.FastModel.splice`): those are *stale*, and an exact reader
(annotation) reads them again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple, Protocol

import torch

from steering.sae.codes import SparseCodes

GROW = 512
"""A cache grows in steps of this many tokens."""
ANCHOR = 8
"""Tokens in a row that find the text after an edit again (`moved_run`)."""

Encoder = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Residual rows `[n, d]` → their SAE codes' nonzeros, `(index, value)` `[n, j]` (`SAE.encode_sparse`)."""


class Layout(Protocol):
    """The sizes a cache is laid out by (`model.FastModel` has them)."""

    n_layers: int
    n_kv: int
    head_dim: int
    d_model: int
    max_positions: int
    dtype: torch.dtype
    cache_dtype: torch.dtype
    device: torch.device

    def bytes_per_token(self) -> int: ...


class Reader(Layout, Protocol):
    """A model that reads a cache's tokens through its lower blocks (`model.FastModel.lower`), or through all of
    them (`model.FastModel.read`)."""

    split: int

    def lower(self, cache: PrefixCache, limit: int | None = None, *, pause: Callable[[], bool] | None = None,
              ) -> bool: ...

    def read(self, cache: PrefixCache, limit: int) -> bool: ...


class Partial(NamedTuple):
    """A pass over the tokens `start .. stop` that stopped before block `block` (`model.FastModel.lower`'s `pause`):
    the blocks before it stored those tokens' keys and values; `x` is the residual entering it."""

    start: int
    stop: int
    block: int
    x: torch.Tensor


class PrefixCache:
    """Keys, values and hook-point residuals of one token sequence (`ids`), for the fast path.

    `low`: tokens whose lower blocks are computed; `high`: tokens whose upper blocks are computed, under the steering
    identified by `key`. Always `high <= low <= len(ids)`.
    """

    def __init__(self, fast: Layout, capacity: int = GROW) -> None:
        self.fast = fast
        self.ids: list[int] = []
        self.low = 0
        self.high = 0
        self.key: Hashable = None
        self.plan: Callable[[torch.Tensor], torch.Tensor] | None = None
        """The steering the upper blocks were computed under (`key` is its key)."""
        self.stale: int | None = None
        """The first position whose keys and values were moved after an edit rather than computed after it
        (`model.FastModel.splice`); None: every read position is exact."""
        self.splices = 0
        """Edits spliced over since the cache was last exact."""
        self.capacity = 0
        self.k = self.v = self.resid = torch.empty(0)
        self.codes: SparseCodes | None = None
        """SAE codes of the first `coded` tokens: annotation encodes only the tokens after them."""
        self.coded = 0
        self.partial: Partial | None = None
        """A lower pass that paused from `low` on: the next one goes on from its block."""
        self.block_rows = 0
        """Tokens times blocks the lower passes computed: what a timed read's cost is measured by."""
        self.reserve(min(capacity, fast.max_positions))

    @property
    def nbytes(self) -> int:
        return self.capacity * self.fast.bytes_per_token() + (self.codes.nbytes if self.codes is not None else 0)

    def codes_for(self, n: int, width: int, encode: Encoder) -> SparseCodes:
        """The SAE codes of the first `n` tokens (whose residuals are read; a copy, `n` rows), encoding with `encode`
        only the rows not kept from an earlier call."""
        return self.encode(n, width, encode).first(n)

    def encode(self, n: int, width: int, encode: Encoder) -> SparseCodes:
        """Encode the SAE codes of the first `n` tokens that are not kept yet (reading a document in pieces encodes
        each piece as it goes, so the annotation after it has only its spans to rank)."""
        if self.codes is None or self.codes.width != width:
            self.codes, self.coded = SparseCodes(width), 0
        if self.coded < n:
            index, value = encode(self.resid[self.coded:n])
            self.codes.put(self.coded, index.cpu(), value.float().cpu())
            self.coded = n
        return self.codes

    def reserve(self, tokens: int) -> None:
        """Room for at least `tokens` tokens (kept contents stay)."""
        if tokens <= self.capacity:
            return
        fast = self.fast
        if tokens > fast.max_positions:
            raise ValueError(f"{tokens} tokens exceed the model's {fast.max_positions} positions.")
        size = min(fast.max_positions, math.ceil(tokens / GROW) * GROW)
        shape = (fast.n_layers, fast.n_kv, size, fast.head_dim)
        k = torch.empty(shape, dtype=fast.cache_dtype, device=fast.device)
        v = torch.empty(shape, dtype=fast.cache_dtype, device=fast.device)
        resid = torch.empty(size, fast.d_model, dtype=fast.dtype, device=fast.device)
        keep = self.low if self.partial is None else self.partial.stop
        if keep:
            k[:, :, :keep] = self.k[:, :, :keep]
            v[:, :, :keep] = self.v[:, :, :keep]
            resid[:keep] = self.resid[:keep]
        self.k, self.v, self.resid, self.capacity = k, v, resid, size

    def sync(self, ids: list[int], *, exact: bool = True) -> int:
        """Make the cache describe `ids`: everything after the first token that differs is dropped, and with `exact`
        everything from the first stale one on too. Returns how many tokens were kept."""
        kept = matching(ids, 0, self.ids, 0)
        if exact and self.stale is not None:
            kept = min(kept, self.stale)
        if self.stale is not None and kept <= self.stale:
            self.stale, self.splices = None, 0
        self.ids = list(ids)
        if self.partial is not None and kept < self.partial.stop:
            self.partial = None
        self.low = min(self.low, kept)
        self.high = min(self.high, kept)
        self.coded = min(self.coded, kept)
        return kept

    def push(self, token: int) -> None:
        self.ids.append(token)


def moved_run(old: list[int], new: list[int], start: int, new_start: int, reach: int,
              ) -> tuple[int, int, int] | None:
    """Where the text after an edit at `old[start]` (`new[new_start]`) went: `(i, j, n)` with `old[i:i + n] ==
    new[j:j + n]`, the run of tokens from the `ANCHOR` that `old` and `new` share again nearest after the edit (the
    fewest tokens deleted and inserted, at most `reach` in either), as long as it goes on; None where there is
    none."""
    grams: dict[tuple[int, ...], int] = {}
    for j in range(min(len(new) - ANCHOR, new_start + reach), new_start - 1, -1):  # the first place of each wins
        grams[tuple(new[j:j + ANCHOR])] = j
    best: tuple[int, int] | None = None
    for i in range(start, min(len(old) - ANCHOR, start + reach) + 1):
        if best is not None and i - start >= best[0] - start + best[1] - new_start:
            break  # the edit the nearest match implies is the shortest: none further on is shorter
        j = grams.get(tuple(old[i:i + ANCHOR]), -1)
        if j != -1 and (best is None or i - start + j - new_start < best[0] - start + best[1] - new_start):
            best = i, j
    if best is None:
        return None
    i, j = best
    return i, j, ANCHOR + matching(old, i + ANCHOR, new, j + ANCHOR)


def matching(a: list[int], i: int, b: list[int], j: int) -> int:
    """How many tokens of `a` from `i` on equal those of `b` from `j` on, before the first that differs."""
    n = 0
    while i + n < len(a) and j + n < len(b) and a[i + n] == b[j + n]:
        n += 1
    return n


class SessionCaches:
    """Prefix caches by session (a document), least recently used dropped beyond `budget_bytes`."""

    def __init__(self, fast: Reader, budget_bytes: int) -> None:
        self.fast = fast
        self.budget = budget_bytes
        self._caches: OrderedDict[str, PrefixCache] = OrderedDict()
        self._exact: dict[str, PrefixCache] = {}
        """Exact copies being read of caches with stale tokens (`refresh`)."""

    def get(self, session: str | None) -> PrefixCache:
        """The session's cache (a fresh, unkept one without a session)."""
        if session is None:
            return PrefixCache(self.fast)
        cache = self._caches.pop(session, None) or PrefixCache(self.fast)
        self._caches[session] = cache
        return cache

    def trim(self) -> None:
        """Drop least recently used caches until the rest fit the budget (the most recent one always stays)."""
        while len(self._caches) > 1 and self.nbytes > self.budget:
            self._caches.popitem(last=False)

    def read(self, session: str | None, ids: list[int], limit: int | None = None, *,
             pause: Callable[[], bool] | None = None) -> tuple[PrefixCache, bool, float] | None:
        """The session's cache made to describe `ids`, with the lower blocks read for (up to `limit` more of) them
        (`pause`: see `model.FastModel.lower`), whether all are read, and how much this call read, in tokens
        through every lower block; None when `ids` exceed the model's positions."""
        if len(ids) > self.fast.max_positions:
            return None
        with torch.inference_mode():
            cache = self.get(session)
            cache.sync(ids)
            before = cache.block_rows
            done = self.fast.lower(cache, limit, pause=pause)
        self.trim()
        return cache, done, (cache.block_rows - before) / self.fast.split

    def refresh(self, session: str, limit: int) -> bool:
        """Read up to `limit` more tokens of an exact copy of the session's cache where it has stale tokens
        (`model.FastModel.splice`), from its first stale one; once the copy holds them all, it takes their place.
        True when there is nothing (more) to do. The copy follows the cache: an edit since the last call drops
        the copy's tokens from the first changed one on, as an exact reader would."""
        cache = self._caches.get(session)
        if cache is None or cache.stale is None:
            self._exact.pop(session, None)
            return True
        ids = cache.ids[:cache.high]
        exact = self._exact.get(session)
        if exact is None or exact.key != cache.key:
            exact = self._exact[session] = PrefixCache(self.fast, cache.high)
            keep = min(cache.stale, cache.high)
            exact.k[:, :, :keep] = cache.k[:, :, :keep]
            exact.v[:, :, :keep] = cache.v[:, :, :keep]
            exact.resid[:keep] = cache.resid[:keep]
            exact.ids, exact.low, exact.high = ids[:keep], keep, keep
            exact.key, exact.plan = cache.key, cache.plan
        with torch.inference_mode():
            exact.sync(ids)
            if not self.fast.read(exact, limit):
                return False
            n = len(ids)
            cache.k[:, :, :n] = exact.k[:, :, :n]
            cache.v[:, :, :n] = exact.v[:, :, :n]
            cache.resid[:n] = exact.resid[:n]
        cache.low, cache.stale, cache.splices = n, None, 0  # (lower blocks read past the upper: over stale ones)
        cache.partial = None
        del self._exact[session]
        return True

    def drop(self, session: str) -> None:
        self._caches.pop(session, None)
        self._exact.pop(session, None)

    @property
    def nbytes(self) -> int:
        """The caches' memory (the exact copies `refresh` reads, one window each while it lasts, left out: counted,
        they would push the document's own cache out)."""
        return sum(c.nbytes for c in self._caches.values())

    def __len__(self) -> int:
        return len(self._caches)
