"""Many greedy continuations in one batch, each row under its own steering, and the clean model's re-reading of them.

The steering benchmark and the strength calibration run thousands of short (prompt, steering) continuations; one
forward pass per step over all of them is many times faster on any device than one request at a time. Prompts are
left-padded (attention mask and position ids say where each row starts) so every row's next token sits in the last
column. Each row's steering is a plan (`runtime.interventions.Plan`) or None; the plans are stacked per row
(`RowPlans`) and applied by the same kernel as everywhere else.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from steering.runtime.decode import _forward_kwargs, penalise_repeats
from steering.runtime.guidance import FUNCTION_WORDS
from steering.runtime.hooks import residual_hook
from steering.runtime.interventions import Plan, RowPlans
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE, HookPoint


def _pad_id(lm: LoadedModel) -> int:
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    if pad is None:
        pad = lm.first_eos_id if lm.first_eos_id is not None else 0
    return int(pad)


@torch.inference_mode()
def greedy_batch(lm: LoadedModel, prompts: Sequence[Sequence[int]], max_tokens: int, *,
                 plans: Sequence[Plan | None] | None = None, hook: HookPoint | None = None,
                 steer_positions: str = "all", repetition_penalty: float = 1.0) -> list[list[int]]:
    """Greedy continuations (`max_tokens` ids each, or fewer where a row reaches end-of-sequence) of every prompt
    (token ids), row i steered by `plans[i]` at `hook` on the positions `steer_positions` names (`all`, `prompt`,
    `generated`)."""
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token.")
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), _pad_id(lm), dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p))
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    steer: RowPlans | None = None
    if plans is not None and hook is not None and any(p is not None and not p.empty for p in plans):
        sae = next((p.sae for p in plans if p is not None and p.sae is not None), None)
        steer = RowPlans.of(plans, lm.d_model, sae, lm.device)
    extra = _forward_kwargs(lm.model)
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    past: Any = None
    for step in range(max_tokens):
        ctx: Any = nullcontext()
        if steer is not None and hook is not None and \
                steer_positions in ("all", "prompt" if step == 0 else "generated"):
            ctx = residual_hook(lm.blocks, hook, steer)
        with ctx:
            result = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                              use_cache=True, **extra)
        past = result.past_key_values
        token = penalise_repeats(result.logits[:, -1].float(), out, repetition_penalty).argmax(-1)
        for i, t in enumerate(token.tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = t in lm.eos_token_ids
        if bool(done.all()):
            break
        ids = token[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=mask.device)], 1)
    return [[t for t in row if t not in lm.eos_token_ids] for row in out]


@dataclass(frozen=True)
class Reread:
    """The clean model's view of a continuation."""

    concept: float
    """Share of the continuation's tokens on which the row's feature fires (0 without a feature)."""
    nll: float
    """Mean negative log-likelihood per continuation token, in nats (nan for an empty continuation)."""
    residual: torch.Tensor
    """Mean residual at the SAE's hook over the continuation's tokens `[d_in]` (zeros when empty)."""


@torch.inference_mode()
def reread(lm: LoadedModel, sae: SAE, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
           features: Sequence[int | None], *, batch: int = 16) -> list[Reread]:
    """The unsteered model reads prompt + continuation: per row, how often `features[i]` fires on the continuation,
    the continuation's NLL per token, and its mean residual."""
    assert sae.hook is not None
    out: list[Reread] = []
    grabbed: list[torch.Tensor] = []

    def grab(h: torch.Tensor) -> None:
        grabbed.append(h.detach())

    for first in range(0, len(prompts), batch):
        rows = [list(p) + list(c) for p, c in zip(prompts[first:first + batch], continuations[first:first + batch],
                                                  strict=True)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), _pad_id(lm), dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        grabbed.clear()
        with residual_hook(lm.blocks, sae.hook, grab):
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        resid = grabbed[0]
        for i in range(len(rows)):
            p, c = len(prompts[first + i]), len(continuations[first + i])
            if c == 0:
                out.append(Reread(0.0, float("nan"), torch.zeros(resid.shape[-1])))
                continue
            logp = torch.log_softmax(logits[i, p - 1 : p + c - 1].float(), -1)
            target = ids[i, p : p + c].to(logp.device)
            nll = float(-logp.gather(1, target[:, None]).mean())
            h = resid[i, p : p + c]
            feature = features[first + i]
            concept = 0.0
            if feature is not None:
                acts = sae.encode(h.to(sae.device, sae.dtype))[:, feature]
                concept = float((acts > 0).float().mean())
            out.append(Reread(concept, nll, h.float().mean(0).cpu()))
    return out


def human_nll(lm: LoadedModel, stream: torch.Tensor, *, spans: int = 64, prefix: int = 32, length: int = 24) -> float:
    """The model's NLL per token on human text: `spans` pieces of `length` tokens spread over `stream`, each read
    after the `prefix` tokens before it (the reference a continuation's fluency is judged against)."""
    size = prefix + length
    if len(stream) < size:
        raise ValueError(f"The reference text has {len(stream)} tokens; at least {size} are needed.")
    starts = torch.linspace(0, len(stream) - size, spans).long().unique().tolist()
    total = 0.0
    with torch.inference_mode():
        for first in range(0, len(starts), 16):
            ids = torch.stack([stream[s : s + size] for s in starts[first:first + 16]]).to(lm.device)
            logits = lm.model(input_ids=ids).logits[:, prefix - 1 : size - 1].float()
            logp = torch.log_softmax(logits, -1).gather(2, ids[:, prefix:, None])
            total += float(-logp.sum())
    return total / (len(starts) * length)


def distinct_2(tokens: Sequence[Hashable]) -> float:
    """Distinct bigrams over all bigrams of a continuation, of tokens or words (1: no repeats; low values flag loops)."""
    pairs = list(itertools.pairwise(tokens))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


WORD_LIST_RUN = 5
"""Content words in a row, with no function word or punctuation between, that make a continuation a word list."""
_PIECE = re.compile(r"[A-Za-z][A-Za-z']*|[0-9]+|[^\sA-Za-z0-9]")


def word_list(text: str, run: int = WORD_LIST_RUN) -> bool:
    """Whether `text` reads as a list of words rather than a sentence: `run` content words in a row with no function
    word, number or punctuation between them (`cow goat calf lamb chicken`). Four in a row happen in one human
    passage of 18 words in seven (`the bright red sports car`); five in none of the benchmarks' paragraphs."""
    count = 0
    for piece in _PIECE.findall(text):
        if piece[0].isalpha() and piece.lower() not in FUNCTION_WORDS:
            count += 1
            if count >= run:
                return True
        else:
            count = 0
    return False
