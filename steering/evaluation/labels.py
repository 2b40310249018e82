"""How well labels describe their features, measured offline: `tinymorph eval-labels`.

For a sample of labelled features, held-out contexts where the feature fires (its top activations on text the labels
were not made from) and contexts where it does not (random positions, checked to be silent for it), `contexts` a
side (20 by default). Two judges, neither of them the labeller (which counts label words in the labelling corpus):

- **likelihood** (the main one): how much more likely the model finds the label after the context than after no
  context: log P(label | context + "This passage is about") - log P(label | "This passage is about"), per label
  token. It reads the whole context, so a label naming the topic counts even where the word itself is absent.
- **embedding**: the cosine between the model's own embedding of the label (the mean residual over its tokens at a
  middle layer) and that of the context.

Per feature and judge, the balanced accuracy of "fires" = "score above the median of its contexts"; the same with
labels shuffled among the features is the baseline, in the same run; and the share of features whose own label
beats the shuffled one. No external model judges anything.

Self-explanations (the model's own words for a feature, `selfexplain.py`) can be scored beside the context labels on
the same features and contexts (by the embedding judge): their words stand in for the label, and an explanation
without a real word scores chance (0.5), as a label a writer never sees would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from steering.features.labels import context_at
from steering.features.separation import LABEL_WORDS, is_label_word, label_words
from steering.features.stats import feature_statistics
from steering.runtime.hooks import capture_residual
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE, HookPoint


@dataclass(frozen=True)
class Judged:
    """One judge's verdict over the sampled features."""

    balanced_accuracy: float
    """Mean over the features of the balanced accuracy of their labels."""
    shuffled_baseline: float
    """The same with every feature given another feature's label."""
    beats_baseline: float
    """Share of features whose own label scores higher than the shuffled one."""

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LabelEval:
    features: int
    contexts_per_side: int
    balanced_accuracy: float
    """The main judge's (likelihood): mean over the features of the balanced accuracy of their labels."""
    shuffled_baseline: float
    """The same with every feature given another feature's label."""
    beats_baseline: float
    """Share of features whose own label scores higher than the shuffled one."""
    tokens: int
    judges: dict[str, Judged] = field(default_factory=dict)
    """Every judge's verdict (likelihood, embedding)."""
    self_explanation: SelfExplanationEval | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()
                               if k not in ("self_explanation", "judges")}
        out["judges"] = {name: j.to_dict() for name, j in self.judges.items()}
        if self.self_explanation is not None:
            out["self_explanation"] = self.self_explanation.to_dict()
        return out


@dataclass(frozen=True)
class SelfExplanationEval:
    """Self-explanations scored on the first `features` sampled features, beside their context labels."""

    features: int
    balanced_accuracy: float
    context_label: float
    """The context labels' mean balanced accuracy on the same features."""
    beats_context: float
    """Share of these features whose self-explanation scores higher than its context label."""
    examples: dict[int, dict[str, str]] = field(default_factory=dict)
    """Per feature: the explanation, the words scored, the context label."""

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def explanation_label(text: str) -> str:
    """The words of a self-explanation a label would show: its first `LABEL_WORDS` real words, in order."""
    words = [w for w in label_words(text) if is_label_word(w)]
    return ", ".join(dict.fromkeys(words[:LABEL_WORDS]))


@torch.inference_mode()
def embed(lm: LoadedModel, texts: list[str], layer: int, batch: int = 32) -> torch.Tensor:
    """The mean residual (after block `layer`) over each text's tokens: `[len(texts), d]`, unit norm."""
    out = []
    for first in range(0, len(texts), batch):
        rows = [list(lm.tokenizer(t)["input_ids"]) or [0] for t in texts[first:first + batch]]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, row in enumerate(rows):
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1.0
        resid = capture_residual(lm.model, lm.blocks, HookPoint(layer), ids.to(lm.device)).float().cpu()
        mask[:, 0] = 0.0 if width > 1 else 1.0  # the first position's outsized norm would dominate the mean
        mean = (resid * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out)


JUDGE_PROMPT = "\n\nThis passage is about"
"""What follows a context before the label whose likelihood the likelihood judge reads."""


@torch.inference_mode()
def label_logprob(lm: LoadedModel, contexts: list[str], labels: list[str], batch: int = 32) -> torch.Tensor:
    """Mean log-probability per token of `" " + labels[i]` after `contexts[i] + JUDGE_PROMPT`: `[n]`. Rows are
    padded on the right (a causal model's real tokens never see the padding), and only the label's positions go
    through the unembedding."""
    last = HookPoint(lm.n_layers - 1)
    out = []
    for first in range(0, len(contexts), batch):
        rows, spans = [], []
        for context, label in zip(contexts[first:first + batch], labels[first:first + batch], strict=True):
            head = list(lm.tokenizer(context + JUDGE_PROMPT)["input_ids"])[-96:]
            tail = list(lm.tokenizer(" " + label)["input_ids"]) or [0]
            rows.append(head + tail)
            spans.append((len(head), len(head) + len(tail)))
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        resid = capture_residual(lm.model, lm.blocks, last, ids.to(lm.device))
        h = torch.cat([resid[i, lo - 1:hi - 1] for i, (lo, hi) in enumerate(spans)])[None]
        targets = torch.cat([ids[i, lo:hi] for i, (lo, hi) in enumerate(spans)]).to(lm.device)
        logp = lm.unembed(lm.final_norm(h) if lm.final_norm is not None else h)[0].float().log_softmax(-1)
        picked = logp.gather(1, targets[:, None])[:, 0].cpu()
        at = 0
        for lo, hi in spans:
            out.append(float(picked[at:at + hi - lo].mean()))
            at += hi - lo
    return torch.tensor(out)


def balanced_accuracy(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Balanced accuracy of `score > median of all scores` as the detector of the positive contexts."""
    threshold = torch.cat([pos, neg]).median()
    return 0.5 * (float((pos > threshold).float().mean()) + float((neg <= threshold).float().mean()))


@torch.inference_mode()
def evaluate_labels(lm: LoadedModel, sae: SAE, labels: dict[str, Any], stream: torch.Tensor, *, context: int = 128,
                    tokens: int = 50_000, features: int = 200, per_side: int = 20, seed: int = 0,
                    explain: Callable[[int], str] | None = None, explain_features: int = 0) -> LabelEval:
    """Detection scores of the labels in `labels` (labels.json) on the held-out token `stream`; with `explain`
    (feature -> the model's own words for it), also of the self-explanations of the first `explain_features`."""
    assert sae.hook is not None
    stats = feature_statistics(lm, sae, stream, context=context, tokens=tokens, top=per_side)
    entries = labels.get("features", {})
    rng = random.Random(seed)
    candidates = [f for f in range(sae.d_sae) if entries.get(str(f), {}).get("label")
                  and int((stats.top_tokens[f] >= 0).sum()) >= per_side]
    chosen = sorted(rng.sample(candidates, min(features, len(candidates))))
    if len(chosen) < 2:
        raise ValueError("Fewer than two labelled features fire in the held-out text; give more text.")
    special = set(getattr(lm.tokenizer, "all_special_ids", None) or []) | lm.eos_token_ids
    readable = len(stream) // context * context
    positions = [p for p in range(readable) if p % context and int(stream[p]) not in special]
    # the SAE's activations at candidate silent positions: read once, for every feature
    pool = sorted(rng.sample(positions, min(len(positions), per_side * 40)))
    silent_acts = _activations_at(lm, sae, stream, pool, context)
    layer = max(0, lm.n_layers // 2)
    texts_pos: dict[int, list[str]] = {}
    texts_neg: dict[int, list[str]] = {}
    for f in chosen:
        texts_pos[f] = [context_at(lm.tokenizer, stream, int(p), context, special, before=24, after=8).marked().replace("«", "")
                        .replace("»", "") for p in stats.top_tokens[f].tolist() if p >= 0][:per_side]
        quiet = [p for p, acts in zip(pool, silent_acts, strict=True) if acts[f] <= 0]
        picks = rng.sample(quiet, min(per_side, len(quiet)))
        texts_neg[f] = [context_at(lm.tokenizer, stream, p, context, special, before=24, after=8).marked().replace("«", "")
                        .replace("»", "") for p in picks]
    all_texts = [t for f in chosen for t in texts_pos[f] + texts_neg[f]]
    vectors = embed(lm, all_texts, layer)
    label_of = {f: entries[str(f)]["label"] for f in chosen}
    label_vectors = embed(lm, [label_of[f] for f in chosen], layer)
    other = dict(zip(chosen, chosen[1:] + chosen[:1], strict=True))  # every feature gets another feature's label
    index = {f: i for i, f in enumerate(chosen)}
    blocks: dict[int, slice] = {}
    at = 0
    for f in chosen:
        n = len(texts_pos[f]) + len(texts_neg[f])
        if texts_pos[f] and texts_neg[f]:
            blocks[f] = slice(at, at + n)
        at += n
    if not blocks:
        raise ValueError("No labelled feature had contexts on both sides; give more text.")

    def verdict(score: Callable[[int, int], torch.Tensor]) -> tuple[Judged, dict[int, float]]:
        """`score(f, g)`: feature f's contexts scored against g's label."""
        def accuracy(f: int, g: int) -> float:
            values = score(f, g)
            return balanced_accuracy(values[:len(texts_pos[f])], values[len(texts_pos[f]):])

        own = {f: accuracy(f, f) for f in blocks}
        shuffled = {f: accuracy(f, other[f]) for f in blocks}
        return Judged(sum(own.values()) / len(own), sum(shuffled.values()) / len(shuffled),
                      sum(own[f] > shuffled[f] for f in blocks) / len(blocks)), own

    # likelihood: every context with its own feature's label and with the shuffled one, against no context
    jobs = [(f, g) for f in blocks for g in (f, other[f])]
    contexts = [t for f, _ in jobs for t in all_texts[blocks[f]]]
    named = [label_of[g] for f, g in jobs for _ in all_texts[blocks[f]]]
    after = label_logprob(lm, contexts, named)
    prior = dict(zip(chosen, label_logprob(lm, [""] * len(chosen), [label_of[f] for f in chosen]).tolist(),
                     strict=True))
    pmi: dict[tuple[int, int], torch.Tensor] = {}
    at = 0
    for f, g in jobs:
        n = blocks[f].stop - blocks[f].start
        pmi[f, g] = after[at:at + n] - prior[g]
        at += n
    likelihood, _ = verdict(lambda f, g: pmi[f, g])
    embedding, own = verdict(lambda f, g: vectors[blocks[f]] @ label_vectors[index[g]])
    selfeval = None
    if explain is not None and explain_features > 0:
        explained = {f: explain(f) for f in list(blocks)[:explain_features]}
        words = {f: explanation_label(text) for f, text in explained.items()}
        spoken = [f for f in explained if words[f]]
        said = dict(zip(spoken, embed(lm, [words[f] for f in spoken], layer), strict=True)) if spoken else {}
        mine = {}
        for f in explained:
            sims = vectors[blocks[f]] @ said[f] if f in said else None
            mine[f] = balanced_accuracy(sims[:len(texts_pos[f])], sims[len(texts_pos[f]):]) if sims is not None \
                else 0.5
        selfeval = SelfExplanationEval(
            len(explained), sum(mine.values()) / len(mine), sum(own[f] for f in explained) / len(explained),
            sum(mine[f] > own[f] for f in explained) / len(explained),
            {f: {"explanation": explained[f], "words": words[f], "label": entries[str(f)]["label"]}
             for f in explained})
    return LabelEval(len(blocks), per_side, likelihood.balanced_accuracy, likelihood.shuffled_baseline,
                     likelihood.beats_baseline, stats.tokens, {"likelihood": likelihood, "embedding": embedding},
                     selfeval)


def _activations_at(lm: LoadedModel, sae: SAE, stream: torch.Tensor, positions: list[int], context: int,
                    batch: int = 16) -> list[torch.Tensor]:
    """The SAE's activations `[d_sae]` at each stream position, read in its sequence: each sequence holding one of
    the positions is read once (a causal model's position sees only the tokens before it), several at a time."""
    assert sae.hook is not None
    starts = sorted({p - p % context for p in positions})
    at: dict[int, torch.Tensor] = {}
    for first in range(0, len(starts), batch):
        group = starts[first:first + batch]
        width = min(context, min(len(stream) - s for s in group))
        ids = torch.stack([stream[s:s + width] for s in group]).to(lm.device)
        resid = capture_residual(lm.model, lm.blocks, sae.hook, ids)
        for row, s in enumerate(group):
            wanted = [p for p in positions if s <= p < s + width]
            if wanted:
                codes = sae.encode(resid[row, [p - s for p in wanted]].to(sae.device, sae.dtype)).float().cpu()
                at.update(zip(wanted, codes, strict=True))
    missing = [p for p in positions if p not in at]  # a short last sequence cut the group's width
    for p in missing:
        start = p - p % context
        resid1 = capture_residual(lm.model, lm.blocks, sae.hook, stream[start:p + 1][None].to(lm.device))[0, -1]
        at[p] = sae.encode(resid1.to(sae.device, sae.dtype)).float().cpu()
    return [at[p] for p in positions]
