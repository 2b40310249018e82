"""Guided decoding: the per-request policy that carries amplified features into the text and keeps suppressed ones
out, while the text stays fluent (`config.Guidance`).

Each step the decode loop reads the most likely next tokens (`Guidance.candidates`) through the layers below the
SAE's hook and encodes them: what the SAE reads there is what the clean model reads of the same text, because those
layers never see steering. `Guided.choose` adds `bonus` nats to a candidate on which an amplified feature fires (and
takes it from one on which a suppressed feature fires) and takes the best, but an amplified feature earns nothing on a
candidate that repeats a token just taken (`Guidance.repeats`: the feature's word again is a loop, not more of the
feature; a function word or punctuation repeated is no loop and keeps it); `Guided.observe` counts where the
amplified features fired, and once one has fired on `enough` of the generated tokens its vector and bonus ease off,
so the text spends its fluency on the feature only until the feature is there. The fast path's batcher
(`fast.batched`) runs the candidates; this module holds the policy alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from steering.config import Guidance, SamplingConfig

from .interventions import Plan

_FUNCTION_WORDS = """a an the and or but if of to in on at by for with from as into onto over under about
after before than then so that this these those it its he she they we you i me him her them us my your his our their
is are was were be been being am do does did have has had not no nor there here what which who whom whose when where
why how all any each some such very just only also too again will would can could shall should may might must one up
out off down while until because though although through during against between among without within across upon
i'm it's don't can't i've i'd i'll you're we're they're that's there's"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
"""Words that hold a sentence together: a run of words without any of them (and without punctuation) is a list
(`evaluation.continuations.word_list`), and their repeat is no loop (`Guided.choose`)."""
Joins = Callable[[int], bool]
"""Whether a token joins words rather than carries one (`joining`)."""


def joining(tokenizer: Any) -> Joins:
    """`Joins` for `tokenizer`: a token whose text is whitespace, punctuation or a function word (`FUNCTION_WORDS`).
    Each token is decoded the first time it is asked about and remembered."""
    known: dict[int, bool] = {}

    def joins(token: int) -> bool:
        if token not in known:
            text = tokenizer.decode([token]).strip().lower()
            known[token] = not text or not text[0].isalnum() or text in FUNCTION_WORDS
        return known[token]

    return joins


class Guided:
    """The guidance state of one continuation under `plan` (which has guides); `joins`: the tokens whose repeat is
    no loop (function words, punctuation), or None to count every repeat."""

    def __init__(self, plan: Plan, guidance: Guidance, joins: Joins | None = None) -> None:
        if not plan.guides:
            raise ValueError("A guided continuation needs a plan with `add` interventions.")
        self.plan, self.guidance, self.joins = plan, guidance, joins
        self.features = torch.tensor([g.feature for g in plan.guides], dtype=torch.long)
        self.signs = torch.tensor([g.sign for g in plan.guides])
        self.fired = torch.zeros(len(plan.guides))
        self.steps = 0
        self.eased = [False] * len(plan.guides)
        self.taken: list[int] = []

    def shares(self) -> list[float]:
        """The share of each guide's vector applied now."""
        out = []
        for guide, eased in zip(self.plan.guides, self.eased, strict=True):
            share = 1.0 if guide.calibrated else self.guidance.vector_share
            out.append(share * self.guidance.eased_vector if eased else share)
        return out

    def current(self) -> Plan:
        """The plan as applied now (each guide's vector at its share)."""
        return self.plan.with_shares(self.shares())

    def bonuses(self) -> torch.Tensor:
        """`[guides]`: what a candidate gains when each guide's feature fires on it."""
        g = self.guidance
        size = torch.tensor([g.eased_bonus if eased else g.bonus for eased in self.eased])
        return self.signs * size

    def choose(self, logits: torch.Tensor, candidates: torch.Tensor, codes: torch.Tensor, sampling: SamplingConfig,
               generator: torch.Generator | None) -> int:
        """The index of the candidate to take: `logits` `[vocab]` (penalised), `candidates` `[k]` token ids and their
        SAE codes `[k, d_sae]` at the hook. Greedy at temperature 0, else sampled among the candidates."""
        scaled = logits.float() / (sampling.temperature or 1.0)
        score = torch.log_softmax(scaled, -1)[candidates.to(logits.device)]
        fires = (codes[:, self.features.to(codes.device)] > 0).float().to(score.device)
        loops = self.loops()
        if loops:
            again = torch.isin(candidates.to(score.device), torch.tensor(loops, device=score.device))
            fires[again[:, None] & (self.signs > 0).to(score.device)[None, :]] = 0.0
        score = score + fires @ self.bonuses().to(score.device)
        if sampling.temperature == 0:
            return int(score.argmax())
        return int(torch.multinomial(torch.softmax(score, -1), 1, generator=generator))

    def loops(self) -> list[int]:
        """The tokens taken last (`Guidance.repeats`) whose repeat is a loop: all but the joining ones."""
        recent = self.taken[-self.guidance.repeats:] if self.guidance.repeats else []
        return [t for t in recent if self.joins is None or not self.joins(t)]

    def observe(self, token: int, code: torch.Tensor) -> bool:
        """Count where the guides' features fired on the token taken (`token`, its SAE code `[d_sae]`); True when a
        guide eased off or back, so the plan applied changed."""
        self.steps += 1
        self.taken.append(token)
        self.fired += (code[self.features.to(code.device)] > 0).float().cpu()
        share = self.fired / self.steps
        eased = [bool(sign > 0 and s >= self.guidance.enough) for sign, s in zip(self.signs, share, strict=True)]
        changed = eased != self.eased
        self.eased = eased
        return changed


CANNOT_STEER = 0.0
"""A measured steerability at or below this: Amplify does not carry the feature while the text stays fluent on any
calibration prompt, and the editor says so instead of steering (`evaluation.calibrate`)."""


def steers(steerability: float | None) -> str:
    """How Amplify does with a feature of this measured steerability, in a few words for a writer."""
    if steerability is None:
        return "not measured"
    if steerability <= CANNOT_STEER:
        return "cannot carry it fluently"
    return "carries it well" if steerability >= 0.5 else "carries it sometimes"


def guided(plan: Plan | None, sampling: SamplingConfig, joins: Joins | None = None) -> Guided | None:
    """The guidance state of a continuation of the generated positions' `plan`, or None where nothing is guided."""
    guidance = sampling.guidance
    if plan is None or not plan.guides or guidance is None or guidance.candidates == 0:
        return None
    return Guided(plan, guidance, joins)
