"""Many steered continuations decoded together on the fast path: one forward pass per step for every running
request, each row under its own steering, requests joining and leaving between steps (continuous batching).

A request's prompt is read alone (through its document's `PrefixCache` when it has one, so an open document costs
only its new tokens), then its keys and values are copied into a row of the batch's cache and it decodes with the
others, through the fast model's one block function (`model.FastModel.block`, over a `BatchView`). Each row's
steering is its plan, stacked with the others' (`runtime.interventions.RowPlans`: vectors `[rows, d]`, the SAE's
clamps as a mask and targets `[rows, d_sae]`), so rows with different steering share the same operations. A step's
shapes depend only on the number of rows and the cache's capacity: on a GPU the step is captured once in a CUDA
graph (`GraphStep`) and replayed, steering changes being buffer writes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from steering.config import SamplingConfig
from steering.runtime.decode import CancelToken, TextStream, penalise_repeats, pick_token, sampling_generator
from steering.runtime.guidance import Guided, Joins, guided, joining
from steering.runtime.interventions import Plan, RowPlans
from steering.sae.autoencoder import SAE

from .cache import GROW, PrefixCache
from .decode import phase_plan
from .model import FastModel


@dataclass(eq=False)
class Request:
    """One continuation: prompt token ids, how to sample, its steering, and what it produced so far."""

    ids: list[int]
    sampling: SamplingConfig
    plan: Plan | None = None
    """Its steering (`Engine.plan`)."""
    cache: PrefixCache | None = None
    """The document's cache to read the prompt through (a fresh one when None)."""
    cancel: CancelToken | None = None
    on_piece: Callable[[str], None] | None = None
    """Called with each piece of text as it is decoded."""
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    _stream: TextStream | None = None
    _generator: torch.Generator | None = None
    _guide: Guided | None = None
    _pending: torch.Tensor | None = None
    """The residual at the hook point of the token taken last, when guidance computed its lower blocks already."""

    def steered(self, phase: str = "generated") -> Plan | None:
        """The steering of the `prompt` or `generated` positions (None where `steer_positions` leaves them
        unsteered)."""
        return phase_plan(self.plan, self.sampling.steer_positions, phase)


class BatchCache:
    """Keys and values of `rows` sequences `[layers, rows, kv_heads, capacity, head_dim]` and each row's length."""

    def __init__(self, fast: FastModel, rows: int, capacity: int) -> None:
        self.fast = fast
        shape = (fast.n_layers, rows, fast.n_kv, capacity, fast.head_dim)
        self.k = torch.zeros(shape, dtype=fast.cache_dtype, device=fast.device)
        self.v = torch.zeros(shape, dtype=fast.cache_dtype, device=fast.device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=fast.device)

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def load(self, row: int, cache: PrefixCache) -> None:
        """Copy a prompt's keys and values (every block computed) into `row`."""
        n = len(cache.ids)
        self.k[:, row, :, :n] = cache.k[:, :, :n]
        self.v[:, row, :, :n] = cache.v[:, :, :n]
        self.lengths[row] = n

    def move(self, src: list[int], dst: list[int]) -> None:
        """Rows `src` become rows `dst` (in one go: a row may move where another one was), with one position more
        than their length (a token's keys and values that guidance wrote ahead)."""
        n = min(self.capacity, int(self.lengths[src].max()) + 1)
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = self.lengths[src]

    def resized(self, rows: int, capacity: int) -> BatchCache:
        """A copy with `rows` rows of `capacity` tokens (the first rows and positions kept)."""
        out = BatchCache(self.fast, rows, capacity)
        r, c = min(rows, self.rows), min(capacity, self.capacity)
        out.k[:, :r, :, :c] = self.k[:, :r, :, :c]
        out.v[:, :r, :, :c] = self.v[:, :r, :, :c]
        out.lengths[:r] = self.lengths[:r]
        return out


class BatchView:
    """One decode step of rows `first` .. `first + rows` of a `BatchCache` (`model.View`): each row's new token at
    its own position, attending to the first `span` positions (all of them by default: a fixed shape, as a CUDA
    graph needs)."""

    def __init__(self, fast: FastModel, cache: BatchCache, rows: int, span: int | None = None, first: int = 0) -> None:
        self.cache, self.rows, self.tokens, self.causal, self.first = cache, rows, 1, False, first
        self.span = cache.capacity if span is None else span
        self.positions = cache.lengths[first:first + rows]
        cos, sin = fast.rope(cache.capacity)
        self.cos, self.sin = cos[self.positions][:, None, None], sin[self.positions][:, None, None]
        self.visible: torch.Tensor | None = (
            torch.arange(self.span, device=cache.k.device)[None] <= self.positions[:, None])[:, None]
        self.slot: int | None = None
        """One row on a CPU (the writer's one continuation, the usual case): its position, so that keys and values
        are stored by a slice (an indexed store costs 55 µs a block there) and, when the row sees every position,
        attention runs through the fused kernel (`model.attend`) as a single sequence's does."""
        self.single: tuple[torch.Tensor, torch.Tensor, int] | None = None
        if rows == 1 and cache.k.device.type == "cpu":
            self.slot = int(self.positions[0])
            if self.slot + 1 == self.span:
                self.visible = None
                self.single = cache.k[:, first], cache.v[:, first], self.slot
        self.every = torch.arange(first, first + rows, device=cache.k.device)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, end = self.cache, self.first + self.rows
        if self.slot is not None:
            cache.k[layer, self.first, :, self.slot] = k[0, :, 0]
            cache.v[layer, self.first, :, self.slot] = v[0, :, 0]
        else:
            cache.k[layer, self.every, :, self.positions] = k[:, :, 0].to(cache.k.dtype)
            cache.v[layer, self.every, :, self.positions] = v[:, :, 0].to(cache.v.dtype)
        return cache.k[layer, self.first:end, :, :self.span], cache.v[layer, self.first:end, :, :self.span]


class CandidateView:
    """Candidate next tokens of rows `first` .. `first + rows`, `count` per row, all at the row's next position,
    each attending to its row's sequence and to itself alone (`model.View`): their keys and values go to the slots
    after the row's sequence, and the one taken moves into the first (`Batcher._guide`)."""

    def __init__(self, fast: FastModel, cache: BatchCache, rows: int, count: int, first: int = 0) -> None:
        self.cache, self.rows, self.tokens, self.causal, self.first = cache, rows, count, False, first
        device = cache.k.device
        self.positions = cache.lengths[first:first + rows]
        self.slots = self.positions[:, None] + torch.arange(count, device=device)[None]
        self.span = int(self.positions.max()) + count
        cos, sin = fast.rope(cache.capacity)
        self.cos = cos[self.positions][:, None, None].expand(rows, 1, count, -1)
        self.sin = sin[self.positions][:, None, None].expand(rows, 1, count, -1)
        span = torch.arange(self.span, device=device)[None, None]
        self.visible: torch.Tensor | None = (span < self.positions[:, None, None]) | (span == self.slots[:, :, None])
        self.single: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.every = torch.arange(first, first + rows, device=device)[:, None]

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache, end = self.cache, self.first + self.rows
        cache.k[layer, self.every, :, self.slots] = k.transpose(1, 2).to(cache.k.dtype)
        cache.v[layer, self.every, :, self.slots] = v.transpose(1, 2).to(cache.v.dtype)
        return cache.k[layer, self.first:end, :, :self.span], cache.v[layer, self.first:end, :, :self.span]


def batch_step(fast: FastModel, cache: BatchCache, tokens: torch.Tensor, steering: RowPlans, *,
               span: int | None = None, clamps: bool = False, scaled: bool = False) -> torch.Tensor:
    """One decode step for the first `len(tokens)` rows: `tokens` at positions `cache.lengths`, attending to the
    first `span` positions of the cache (all of it by default); logits `[rows, vocab]` (float32). Their lengths grow
    by one. `clamps` / `scaled`: compute those parts of the rows' steering."""
    view = BatchView(fast, cache, tokens.shape[0], span)
    x = fast.blocks(fast.embedding(tokens), view, 0, fast.split)
    x = steering(x, clamps=clamps, scaled=scaled)
    x = fast.blocks(x, view, fast.split, fast.n_layers)
    view.positions += 1
    return fast.logits(x)


class GraphStep:
    """`batch_step` over the whole cache, captured in a CUDA graph per kind of steering (with clamps or not, with
    scaled vectors or not) and replayed: inputs and
    steering are written into the captured buffers, never re-captured. Only on a CUDA device."""

    def __init__(self, fast: FastModel, cache: BatchCache, steering: RowPlans) -> None:
        if fast.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device.")
        self.fast, self.cache, self.steering = fast, cache, steering
        self.tokens = torch.zeros(cache.rows, dtype=torch.long, device=fast.device)
        self._graphs: dict[tuple[bool, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _capture(self, clamps: bool, scaled: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        lengths = self.cache.lengths.clone()
        k, v = self.cache.k.clone(), self.cache.v.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up runs (allocator, kernels' workspaces) outside the graph
            for _ in range(2):
                self.cache.lengths.copy_(lengths)
                batch_step(self.fast, self.cache, self.tokens, self.steering, clamps=clamps, scaled=scaled)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.cache.lengths.copy_(lengths)
        with torch.cuda.graph(graph):
            logits = batch_step(self.fast, self.cache, self.tokens, self.steering, clamps=clamps, scaled=scaled)
        self.cache.k.copy_(k)  # the capture wrote nothing real (it only recorded), but the warm-up did
        self.cache.v.copy_(v)
        self.cache.lengths.copy_(lengths)
        return graph, logits

    def __call__(self, tokens: torch.Tensor, clamps: bool, scaled: bool) -> torch.Tensor:
        if (clamps, scaled) not in self._graphs:
            self._graphs[clamps, scaled] = self._capture(clamps, scaled)
        graph, logits = self._graphs[clamps, scaled]
        self.tokens.copy_(tokens)
        graph.replay()
        return logits


class Batcher:
    """Decodes requests together, up to `rows` at a time; requests join when a row frees (continuous batching).

    The cache holds only the rows and positions the running requests need: it grows as requests join (rows
    doubling up to `rows`, positions in steps of `GROW`) and goes back to one small row when the batch runs dry, so a
    burst of long prompts leaves no memory behind. `graphs`: replay each step from a CUDA graph (the default on a
    CUDA device; captured again after the cache changes shape)."""

    def __init__(self, fast: FastModel, sae: SAE | None, eos_ids: set[int], tokenizer: Any, *, rows: int = 8,
                 graphs: bool | None = None, joins: Joins | None = None) -> None:
        if rows < 1:
            raise ValueError("A batch needs at least one row.")
        self.fast, self.sae, self.eos_ids, self.tokenizer = fast, sae, eos_ids, tokenizer
        self.joins = joins or joining(tokenizer)
        self.rows = rows
        self.graphs = fast.device.type == "cuda" if graphs is None else graphs
        self.cache = BatchCache(fast, 1, GROW)
        self.steering = RowPlans(rows, fast.d_model, sae, fast.device)
        self.slots: list[Request | None] = [None] * rows
        self.next_tokens = torch.zeros(rows, dtype=torch.long, device=fast.device)
        self.pending: deque[Request] = deque()
        self._graph: GraphStep | None = None
        self.steps = 0

    def add(self, request: Request) -> None:
        if not request.ids:
            raise ValueError("Every prompt needs at least one token.")
        if len(request.ids) + request.sampling.max_tokens > self.fast.max_positions:
            raise ValueError(f"{len(request.ids)} prompt tokens and {request.sampling.max_tokens} new ones exceed "
                             f"the model's {self.fast.max_positions} positions.")
        self.pending.append(request)

    @property
    def busy(self) -> bool:
        return bool(self.pending) or any(s is not None for s in self.slots)

    def _emit(self, request: Request, token: int) -> None:
        """Record a sampled token; finish the request at end-of-sequence, a stop string, its length or a cancel."""
        assert request._stream is not None
        request.tokens.append(token)
        stream = request._stream
        eos = token in self.eos_ids and request.sampling.stop_at_eos
        piece = "" if eos else stream.push(token)
        if len(request.tokens) >= request.sampling.max_tokens or eos or stream.stopped or (
                request.cancel is not None and request.cancel.cancelled):
            piece += stream.flush()
            request.done = True
        if piece:
            request.text += piece
            if request.on_piece is not None:
                request.on_piece(piece)

    def _pick(self, request: Request, logits: torch.Tensor) -> int:
        logits = penalise_repeats(logits[None], [request.tokens], request.sampling.repetition_penalty)[0]
        return pick_token(logits, request.sampling, request._generator)

    def _admit(self, row: int, request: Request) -> None:
        """Read the request's prompt (under its prompt steering) and take its first token; it keeps `row` unless
        that token already ends it."""
        fast = self.fast
        request._stream = TextStream(self.tokenizer, request.ids, request.sampling.stop)
        request._generator = sampling_generator(request.sampling, fast.device)
        if request.sampling.max_tokens == 0 or (request.cancel is not None and request.cancel.cancelled):
            request.done = True
            return
        cache = request.cache or PrefixCache(fast)
        fast.follow(cache, request.ids)
        guide = request._guide = guided(request.steered(), request.sampling, self.joins)
        prompt = request.steered("prompt")
        if guide is not None and prompt is not None:
            prompt = guide.current()
        logits = fast.upper(cache, prompt)
        if guide is None:
            self._emit(request, self._pick(request, logits))
            if request.done:
                return
        need = len(request.ids) + request.sampling.max_tokens + (self._candidates(request) if guide else 0)
        if need > self.cache.capacity or row >= self.cache.rows:
            rows = min(self.rows, max(row + 1, 2 * self.cache.rows)) if row >= self.cache.rows else self.cache.rows
            capacity = max(self.cache.capacity, min(fast.max_positions, -(-need // GROW) * GROW))
            self.cache = self.cache.resized(rows, capacity)
            self._graph = None
        self.cache.load(row, cache)
        self.slots[row] = request
        if guide is None:
            self.steering.set(row, request.steered())
            self.next_tokens[row] = request.tokens[-1]
            return
        self.steering.set(row, guide.current())
        self._compact()  # guided rows first: the one just loaded may have moved
        at = self.slots.index(request)
        self._guide([at], logits[None])
        if request.done:
            self.slots[at] = None

    def _candidates(self, request: Request) -> int:
        guidance = request.sampling.guidance
        return guidance.candidates if guidance is not None else 0

    def _guide(self, rows: list[int], logits: torch.Tensor) -> None:
        """Take the next token of the guided `rows` (consecutive, logits `[len(rows), vocab]`): their most likely
        next tokens read through the lower blocks at once, each request's guide choosing one, whose keys, values and
        residual then stand for it (the next step computes its upper blocks alone)."""
        fast, requests, first = self.fast, [self.slots[row] for row in rows], rows[0]
        assert rows == list(range(first, first + len(rows))) and all(
            r is not None and r._guide is not None for r in requests)
        count = max(self._candidates(r) for r in requests if r is not None)
        count = min(count, fast.max_positions - int(self.cache.lengths[rows].max()), logits.shape[-1])
        penalised = torch.stack([penalise_repeats(logits[i][None], [r.tokens], r.sampling.repetition_penalty)[0]
                                 for i, r in enumerate(requests) if r is not None])
        tokens = penalised.topk(count, dim=-1).indices
        view = CandidateView(fast, self.cache, len(rows), count, first)
        residuals = fast.blocks(fast.embedding(tokens.flatten()), view, 0, fast.split).view(len(rows), count, -1)
        sae = self.sae
        assert sae is not None
        codes = sae.encode(residuals.to(sae.device, sae.dtype))
        taken = []
        for i, request in enumerate(requests):
            assert request is not None and request._guide is not None
            taken.append(request._guide.choose(penalised[i], tokens[i], codes[i], request.sampling, request._generator))
        taken_t = torch.tensor(taken, device=self.cache.k.device)
        every = torch.arange(first, first + len(rows), device=self.cache.k.device)
        split = fast.split
        self.cache.k[:split, every, :, view.positions] = self.cache.k[:split, every, :, view.positions + taken_t]
        self.cache.v[:split, every, :, view.positions] = self.cache.v[:split, every, :, view.positions + taken_t]
        for i, request in enumerate(requests):
            assert request is not None and request._guide is not None
            request._pending = residuals[i, taken[i]]
            if request._guide.observe(int(tokens[i, taken[i]]), codes[i, taken[i]]):
                self.steering.set(rows[i], request._guide.current())
            self._emit(request, int(tokens[i, taken[i]]))

    @property
    def running(self) -> int:
        """Requests decoding now (they hold rows 0 .. running-1)."""
        return sum(s is not None for s in self.slots)

    def _compact(self) -> None:
        """Move the running requests to the first rows, guided ones first, so a step on the CPU computes only those
        and guidance reads its candidates for the first rows."""
        live = [row for row, r in enumerate(self.slots) if r is not None]
        order = sorted(live, key=lambda row: self.slots[row]._guide is None)  # type: ignore[union-attr]
        moves = [(src, dst) for dst, src in enumerate(order) if dst != src]
        if moves:
            src, dst = [m[0] for m in moves], [m[1] for m in moves]
            self.cache.move(src, dst)
            self.steering.move(src, dst)
            self.next_tokens[dst] = self.next_tokens[src]
            slots = [self.slots[i] for i in src]
            for i in src:
                self.slots[i] = None
            for i, request in zip(dst, slots, strict=True):
                self.slots[i] = request
        for row in range(len(live), self.rows):
            self.steering.set(row, None)
        self.cache.lengths[len(live):] = 0

    def _forward(self, n: int) -> torch.Tensor:
        """One decode step of the first `n` rows: the token each took last goes through the model (only its upper
        blocks where guidance read its lower ones already); logits `[n, vocab]`."""
        clamps, scaled = self.steering.any_clamps, self.steering.any_scaled
        pending = [r._pending for r in self.slots[:n] if r is not None and r._pending is not None]
        if not pending and self.graphs:  # every row, a fixed shape; the idle ones stay empty
            if self._graph is None:
                self._graph = GraphStep(self.fast, self.cache, self.steering)
            logits = self._graph(self.next_tokens[:self.cache.rows], clamps, scaled)
            self.cache.lengths[n:] = 0
            return logits
        span = int(self.cache.lengths[:n].max()) + 1
        if not pending:
            return batch_step(self.fast, self.cache, self.next_tokens[:n], self.steering, span=span, clamps=clamps,
                              scaled=scaled)
        fast, g = self.fast, len(pending)
        x = torch.stack(pending)
        if g < n:  # the unguided rows' lower blocks
            low = BatchView(fast, self.cache, n - g, span, first=g)
            x = torch.cat([x, fast.blocks(fast.embedding(self.next_tokens[g:n]), low, 0, fast.split)])
        view = BatchView(fast, self.cache, n, span)
        x = fast.blocks(self.steering(x, clamps=clamps, scaled=scaled), view, fast.split, fast.n_layers)
        view.positions += 1
        return fast.logits(x)

    def step(self) -> list[Request]:
        """Admit waiting requests into free rows, run one decode step for the running ones; returns the requests
        that finished."""
        finished: list[Request] = []
        with torch.inference_mode():
            for row in range(self.rows):
                while self.slots[row] is None and self.pending:
                    request = self.pending.popleft()
                    self._admit(row, request)
                    if request.done:
                        finished.append(request)
            self._compact()
            n = self.running
            if not n:
                return finished
            logits = self._forward(n)
            self.steps += 1
            guided_rows = [row for row in range(n) if self.slots[row]._guide is not None]  # type: ignore[union-attr]
            if guided_rows:
                self._guide(guided_rows, logits[:len(guided_rows)])
            for row in range(n):
                running = self.slots[row]
                assert running is not None
                if running._guide is None:
                    token = self._pick(running, logits[row])
                    self._emit(running, token)
                    self.next_tokens[row] = token
                if running.done:
                    finished.append(running)
                    self.slots[row] = None
            self._compact()
            if not self.busy and (self.cache.rows, self.cache.capacity) != (1, GROW):
                self.cache, self._graph = BatchCache(self.fast, 1, GROW), None  # the burst's memory goes back
        return finished

    def run(self, requests: Iterable[Request]) -> list[Request]:
        """Decode every request to its end; returns them in the order given."""
        requests = list(requests)
        for request in requests:
            self.add(request)
        while self.busy:
            self.step()
        return requests

