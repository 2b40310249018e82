"""Self-explanation: the model says in its own words what a feature means.

The feature's decoder direction, times a scale, replaces the residual at the SAE's hook point on the placeholder
token of a prompt such as `What does "X" mean? "X" means`, and the model continues the prompt. The scale is chosen
over a sweep by a composite score: `alpha * self_similarity + (1 - alpha) * (-entropy)`, where self-similarity is the
cosine between a later layer's residual at the last prompt token and the feature direction (the model still carries
the feature to where it answers), and entropy is that of the first answer token's distribution, divided by
log(vocabulary) so both terms lie in comparable ranges (entropy falls as the answer depends more on the feature).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from steering.config import SamplingConfig
from steering.runtime.decode import stream_text
from steering.runtime.hooks import residual_hook
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE, HookPoint

PROMPT = 'What does "X" mean? "X" means'
PLACEHOLDER = "X"
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Scales tried, in units of the mean residual norm at the hook point."""
ALPHA = 0.5


@dataclass(frozen=True)
class ScaleScore:
    scale: float
    self_similarity: float
    entropy: float
    """Entropy of the first answer token, over log(vocabulary): 0 (certain) to 1 (uniform)."""
    composite: float


@dataclass(frozen=True)
class SelfExplanation:
    feature: int
    text: str
    scale: float
    self_similarity: float
    entropy: float
    sweep: tuple[ScaleScore, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sweep": [asdict(s) for s in self.sweep]}


class PlaceholderEdit:
    """Replaces the residual at the placeholder positions with `vector` during the prompt pass only."""

    def __init__(self, positions: Sequence[int], vector: torch.Tensor) -> None:
        self.positions = list(positions)
        self.vector = vector
        self.active = True
        self.empty = False

    def __call__(self, h: torch.Tensor) -> torch.Tensor | None:
        if not self.active or h.shape[1] <= max(self.positions):
            return None
        out = h.clone()
        out[:, self.positions] = self.vector.to(h.device, h.dtype)
        return out


def placeholder_positions(lm: LoadedModel, prompt: str, placeholder: str = PLACEHOLDER) -> tuple[list[int], list[int]]:
    """(token ids of `prompt`, indices of the tokens that hold the placeholder)."""
    enc = lm.tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    spans, start = [], prompt.find(f'"{placeholder}"')
    while start != -1:
        spans.append((start + 1, start + 1 + len(placeholder)))
        start = prompt.find(f'"{placeholder}"', start + 1)
    positions = [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]
    if not positions:
        raise ValueError(f"The prompt has no placeholder token {placeholder!r} in quotes.")
    return ids, positions


@torch.inference_mode()
def score_scale(lm: LoadedModel, hook: HookPoint, ids: list[int], positions: list[int], direction: torch.Tensor,
                scale: float, later: int, alpha: float = ALPHA) -> ScaleScore:
    """Self-similarity and first-token entropy of one scale (`direction` already has the residual's norm unit)."""
    edit = PlaceholderEdit(positions, direction * scale)
    later_resid: list[torch.Tensor] = []

    def grab(h: torch.Tensor) -> None:
        later_resid.append(h[0, -1].detach().float())

    input_ids = torch.tensor([ids], device=lm.device)
    with residual_hook(lm.blocks, hook, edit), residual_hook(lm.blocks, HookPoint(later, "resid_post"), grab):
        logits = lm.model(input_ids=input_ids, use_cache=False).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum()) / math.log(probs.shape[-1])
    similarity = float(torch.nn.functional.cosine_similarity(later_resid[0], direction.float().to(
        later_resid[0].device), dim=0))
    return ScaleScore(scale, similarity, entropy, alpha * similarity - (1 - alpha) * entropy)


def self_explain(lm: LoadedModel, sae: SAE, feature: int, unit: float, *, prompt: str = PROMPT,
                 scales: Sequence[float] = SCALES, alpha: float = ALPHA, max_tokens: int = 16) -> SelfExplanation:
    """The model's own words for `feature`: the scale (times `unit`, the mean residual norm at the hook) with the
    best composite score, and the greedy continuation of the prompt under it."""
    assert sae.hook is not None
    hook = sae.hook
    direction = sae.direction(sae.check_feature(feature)).float()
    ids, positions = placeholder_positions(lm, prompt)
    later = min(lm.n_layers - 1, hook.layer + max(1, (lm.n_layers - hook.layer) // 2))
    sweep = tuple(score_scale(lm, hook, ids, positions, direction * unit, s, later, alpha) for s in scales)
    best = max(sweep, key=lambda s: s.composite)
    edit = PlaceholderEdit(positions, direction * unit * best.scale)
    text = "".join(stream_text(lm, prompt, SamplingConfig(max_tokens=max_tokens, stop=("\n",),
                                                          steer_positions="prompt"), steering=edit, hook=hook))
    return SelfExplanation(feature, text.strip(), best.scale, best.self_similarity, best.entropy, sweep)

