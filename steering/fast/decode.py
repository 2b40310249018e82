"""The decode loop on the fast path: `runtime.decode.decode_token_ids` (the readable reference it is tested
against) over a document's `PrefixCache`, reading only what the cache lacks."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import torch

from steering.config import SamplingConfig
from steering.runtime.decode import CancelToken, penalise_repeats, pick_token, sampling_generator
from steering.runtime.guidance import Guided, Joins, guided
from steering.runtime.interventions import Plan

from .cache import PrefixCache
from .model import FastModel


def phase_plan(plan: Plan | None, positions: str, phase: str) -> Plan | None:
    """What steers the `phase` (`prompt` or `generated`) of a generation whose steering applies at `positions`."""
    return plan if plan is not None and not plan.empty and positions in ("all", phase) else None


def decode(fast: FastModel, cache: PrefixCache, ids: list[int], prompt: Plan | None,
           generated: Plan | None) -> Generator[torch.Tensor, int, None]:
    """Logits after `ids`, then after each token sent in (`send(token)`): the cache reads only what it has not
    seen. Generated tokens stay in the cache afterwards; their upper blocks only when the generated positions were
    steered as the prompt was (`prompt`, `generated`: the plan of each phase)."""
    fast.follow(cache, ids)
    try:
        token = yield fast.upper(cache, prompt)
        while True:
            cache.push(token)
            token = yield fast.upper(cache, generated, keep=True)
    finally:
        if (generated.key if generated else None) != (prompt.key if prompt else None):
            cache.high = min(cache.high, len(ids))


def fast_token_ids(
    fast: FastModel,
    cache: PrefixCache,
    input_ids: list[int],
    sampling: SamplingConfig,
    eos_ids: set[int],
    *,
    plan: Plan | None = None,
    cancel: CancelToken | None = None,
    joins: Joins | None = None,
) -> Iterator[int]:
    """`runtime.decode.decode_token_ids` on the fast path: the same tokens, reading only what `cache` lacks.
    `joins`: the tokens whose repeat guidance does not count as a loop (`runtime.guidance.joining`)."""
    eos = eos_ids if sampling.stop_at_eos else set()
    generator = sampling_generator(sampling, fast.device)
    if sampling.max_tokens == 0 or (cancel is not None and cancel.cancelled):
        return
    guide = guided(phase_plan(plan, sampling.steer_positions, "generated"), sampling, joins)
    if guide is not None:
        yield from guided_token_ids(fast, cache, input_ids, sampling, eos, guide, generator, cancel)
        return
    steps = decode(fast, cache, input_ids, phase_plan(plan, sampling.steer_positions, "prompt"),
                   phase_plan(plan, sampling.steer_positions, "generated"))
    generated: list[int] = []
    try:
        with torch.inference_mode():
            logits = next(steps)
        for step in range(sampling.max_tokens):
            logits = penalise_repeats(logits[None], [generated], sampling.repetition_penalty)[0]
            token = pick_token(logits, sampling, generator)
            generated.append(token)
            yield token
            if token in eos or step == sampling.max_tokens - 1 or (cancel is not None and cancel.cancelled):
                return
            with torch.inference_mode():
                logits = steps.send(token)
    finally:
        steps.close()


def guided_token_ids(fast: FastModel, cache: PrefixCache, input_ids: list[int], sampling: SamplingConfig,
                     eos: set[int], guide: Guided, generator: torch.Generator | None,
                     cancel: CancelToken | None) -> Iterator[int]:
    """`fast_token_ids` under guidance (`runtime.guidance`): each step the most likely next tokens are read through
    the lower blocks, the guide takes one, and only its upper blocks are computed after that."""
    sae = guide.plan.sae
    assert sae is not None and sampling.guidance is not None
    fast.follow(cache, input_ids)
    prompt = guide.current() if phase_plan(guide.plan, sampling.steer_positions, "prompt") is not None else None
    generated: list[int] = []
    try:
        with torch.inference_mode():
            logits = fast.upper(cache, prompt)
        for step in range(sampling.max_tokens):
            with torch.inference_mode():
                logits = penalise_repeats(logits[None], [generated], sampling.repetition_penalty)[0]
                count = min(sampling.guidance.candidates, fast.max_positions - len(cache.ids), logits.shape[0])
                tokens = logits.topk(count).indices
                residuals = fast.candidates(cache, tokens)
                codes = sae.encode(residuals.to(sae.device, sae.dtype))
                index = guide.choose(logits, tokens, codes, sampling, generator)
                fast.take(cache, tokens, index, residuals[index])
                guide.observe(int(tokens[index]), codes[index])
            token = int(tokens[index])
            generated.append(token)
            yield token
            if token in eos or step == sampling.max_tokens - 1 or (cancel is not None and cancel.cancelled):
                return
            with torch.inference_mode():
                logits = fast.upper(cache, guide.current(), keep=True)
    finally:
        cache.high = min(cache.high, len(input_ids))  # the generated positions were steered as nothing else is
