"""The decode loop: an explicit per-token loop over the model's forward with a KV cache, like nanoGPT's `generate`.

Each step runs one forward pass (the whole prompt at step 0, then one token), picks the next token (greedy at
temperature 0, else temperature + top-p sampling with a seeded generator), and checks the cancel token before the
next pass. Steering hooks are registered around each forward pass only, so they can never outlive a step.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import torch

from steering.config import SamplingConfig
from steering.sae.autoencoder import HookPoint

from .hooks import residual_hook
from .models import LoadedModel


class ResidualEdit(Protocol):
    """What the decode loop applies at the hook point during a step (`SteeringHook` is one): `active` is set per
    phase (prompt, generated) and `empty` skips the hook altogether."""

    active: bool

    @property
    def empty(self) -> bool: ...

    def __call__(self, h: torch.Tensor) -> torch.Tensor | None: ...


class CancelToken:
    """Set from any thread; the decode loop stops before its next forward pass."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def pick_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> int:
    """Greedy at temperature 0; otherwise sample from softmax(logits / T) restricted to the top-p nucleus."""
    if sampling.temperature == 0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < sampling.top_p
        keep[..., 0] = True
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs * keep)
    return int(torch.multinomial(probs, 1, generator=generator))


def penalise_repeats(logits: torch.Tensor, generated: Sequence[Sequence[int]], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty: for each row of `logits` `[batch, vocab]`, the logits of the tokens that row has
    generated are divided by `penalty` where positive and multiplied where negative."""
    if penalty == 1.0:
        return logits
    logits = logits.clone()
    for i, row in enumerate(generated):
        if row:
            seen = torch.tensor(sorted(set(row)), device=logits.device)
            values = logits[i, seen]
            logits[i, seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def sampling_generator(sampling: SamplingConfig, device: torch.device) -> torch.Generator | None:
    """The seeded generator that sampling draws from (None when decoding greedily or unseeded)."""
    if sampling.seed is None or sampling.temperature == 0:
        return None
    return torch.Generator(device=device).manual_seed(sampling.seed)


def _forward_kwargs(model: Any) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


def decode_token_ids(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    sampling: SamplingConfig,
    *,
    steering: ResidualEdit | None = None,
    hook: HookPoint | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[int]:
    """Yield new token ids one by one; stops at max_tokens, EOS (if asked) or cancellation."""
    model = lm.model
    extra = _forward_kwargs(model)
    eos = lm.eos_token_ids if sampling.stop_at_eos else set()
    generator = sampling_generator(sampling, lm.device)
    ids = input_ids.to(lm.device)
    generated: list[int] = []
    past: Any = None
    with torch.inference_mode():
        for step in range(sampling.max_tokens):
            if cancel is not None and cancel.cancelled:
                return
            ctx: Any = nullcontext()
            if steering is not None and not steering.empty and hook is not None:
                phase = "prompt" if step == 0 else "generated"
                steering.active = sampling.steer_positions in ("all", phase)
                ctx = residual_hook(lm.blocks, hook, steering)
            with ctx:
                out = model(input_ids=ids, past_key_values=past, use_cache=True, **extra)
            past = out.past_key_values
            logits = penalise_repeats(out.logits[:, -1], [generated], sampling.repetition_penalty)[0]
            token = pick_token(logits, sampling, generator)
            generated.append(token)
            yield token
            if token in eos:
                return
            ids = torch.tensor([[token]], device=lm.device)


class Detokenizer:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences.

    Decodes a short window (a few tokens of context plus the new ones) rather than everything so far, so each step
    costs the same however long the output grows; the context keeps SentencePiece's leading spaces right.
    """

    def __init__(self, tokenizer: Any, context: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context[-4:])
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class StopScanner:
    """Cuts the stream before the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.buffer = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = n
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class TextStream:
    """Token ids in, text pieces out: detokenized after the prompt `context`, cut before the first stop string."""

    def __init__(self, tokenizer: Any, context: list[int], stops: tuple[str, ...]) -> None:
        self.detok = Detokenizer(tokenizer, context)
        self.scanner = StopScanner(stops)

    @property
    def stopped(self) -> bool:
        return self.scanner.stopped

    def push(self, token: int) -> str:
        return self.scanner.push(self.detok.push(token))

    def flush(self) -> str:
        return self.scanner.flush()


def prompt_ids(lm: LoadedModel, prompt: str) -> torch.Tensor:
    """Token ids `[1, n]` of a prompt; an empty prompt starts from the BOS (or EOS) token."""
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"] if prompt else None
    if ids is None or ids.shape[1] == 0:
        start = lm.tokenizer.bos_token_id
        if start is None:
            start = lm.first_eos_id if lm.first_eos_id is not None else 0
        ids = torch.tensor([[start]])
    return ids


def text_pieces(tokenizer: Any, context: list[int], tokens: Iterable[int], sampling: SamplingConfig,
                eos_ids: set[int]) -> Iterator[str]:
    """The text of `tokens` (generated after `context`) in pieces as they come: cut before the first stop string,
    ended at end-of-sequence when `sampling` says so."""
    text = TextStream(tokenizer, context, sampling.stop)
    eos = eos_ids if sampling.stop_at_eos else set()
    for token in tokens:
        if token in eos:
            break
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            return
    tail = text.flush()
    if tail:
        yield tail


def stream_text(
    lm: LoadedModel,
    prompt: str,
    sampling: SamplingConfig,
    *,
    steering: ResidualEdit | None = None,
    hook: HookPoint | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[str]:
    """Yield text pieces of the continuation of `prompt` through the transformers forward (`decode_token_ids`)."""
    ids = prompt_ids(lm, prompt)
    tokens = decode_token_ids(lm, ids, sampling, steering=steering, hook=hook, cancel=cancel)
    return text_pieces(lm.tokenizer, ids[0].tolist(), tokens, sampling, lm.eos_token_ids)
