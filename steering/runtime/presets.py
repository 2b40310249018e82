"""Style presets, "write more like this": a steering vector from a passage the writer likes, contrasted with the rest
of the document (contrastive activation addition at the engine's hook point).

The vector is the mean residual of the passage's tokens minus the mean residual of the document's other tokens, read
in one pass so every token keeps its context; when the document has too little else, a neutral reference paragraph
stands in for the rest. Strength 1 adds `PRESET_MULTIPLE` times that difference (the steering benchmark's `preset`
method measured it). A vector is kept as safetensors, never pickle, with metadata naming the model and hook point
it belongs to, so a preset made under another model is refused rather than applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from steering.atomic import write_bytes
from steering.errors import TinymorphError
from steering.sae.autoencoder import HookPoint

from .hooks import capture_residual, windowed_residual
from .models import LoadedModel

PRESET_MULTIPLE = 3.0
"""Strength 1 of a preset, in multiples of its mean difference. Measured by `bench_steering.py --methods preset`
(default model and SAE, 14 topic paragraphs x 6 neutral prompts): at 3x, 65 % of continuations used a word of the
selection's topic (unsteered 4 %, 2x 39 %, 4x 61 %) at NLL 2.87 per token, below human prose's 3.86."""
MIN_WORDS = 2
"""Words a passage needs."""
MIN_TOKENS = 3
"""Tokens a passage needs (and the rest of the document, before the neutral reference stands in)."""
CONTEXT_CHARS = 4000
"""Characters of the document read on each side of the passage."""
MAX_PASSAGE_CHARS = 8000
"""Longest passage read; a longer selection is read from its start."""
FORMAT = "tinymorph-style-vector/1"


class PresetError(TinymorphError):
    """A passage that cannot make a preset, or a preset file that cannot be read."""


@dataclass(frozen=True)
class StyleVector:
    """A passage's steering vector and what it was made from."""

    vector: torch.Tensor
    """Mean residual of the passage minus that of the reference, `[d_model]`, float32."""
    tokens: int
    """Tokens of the passage."""
    against: int
    """Tokens of the reference."""
    reference: str
    """`document` (the rest of the document) or `neutral` (a neutral paragraph)."""
    passage: torch.Tensor
    """Mean residual of the passage `[d_model]` (the reference's is `passage - vector`)."""


def style_vector(lm: LoadedModel, hook: HookPoint, text: str, start: int, end: int, neutral: str) -> StyleVector:
    """The steering vector of `text[start:end]` against the rest of `text`, or against `neutral` when the rest has
    fewer than `MIN_TOKENS` tokens. Raises PresetError for a passage of fewer than `MIN_WORDS` words or `MIN_TOKENS`
    tokens."""
    if not 0 <= start <= end <= len(text):
        raise PresetError(f"The passage [{start}, {end}) is outside the text (length {len(text)}).")
    end = min(end, start + MAX_PASSAGE_CHARS)
    if len(text[start:end].split()) < MIN_WORDS:
        raise PresetError(f"Select at least {MIN_WORDS} words to make a preset from.")
    lo, hi = max(0, start - CONTEXT_CHARS), min(len(text), end + CONTEXT_CHARS)
    window = text[lo:hi]
    enc = lm.tokenizer(window, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    inside: list[int] = []
    outside: list[int] = []
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if i == 0 or e <= s or not window[s:e].strip():  # the outsized first token, special tokens, bare spaces
            continue
        (inside if start <= lo + s < end else outside).append(i)
    if len(inside) < MIN_TOKENS:
        raise PresetError(f"Select a few more words to make a preset from (the selection has {len(inside)} "
                          f"token{'s' if len(inside) != 1 else ''}; {MIN_TOKENS} needed).")
    with torch.inference_mode():
        resid = torch.cat([r.float().cpu() for _, r in windowed_residual(lm.model, lm.blocks, hook, ids, lm.device)])
        passage = resid[inside].mean(0)
        if len(outside) >= MIN_TOKENS:
            rest, reference, against = resid[outside].mean(0), "document", len(outside)
        else:
            ids_neutral = lm.tokenizer(neutral, return_tensors="pt")["input_ids"].to(lm.device)
            other = capture_residual(lm.model, lm.blocks, hook, ids_neutral)[0, 1:].float().cpu()
            rest, reference, against = other.mean(0), "neutral", len(other)
    vector = passage - rest
    if not bool(torch.isfinite(vector).all()):
        raise PresetError("The model's residual stream is not finite on this text; no preset was made.")
    return StyleVector(vector, len(inside), against, reference, passage)


def vector_bytes(vector: torch.Tensor, *, model: str, hook: str) -> bytes:
    """A preset vector as a safetensors file (one tensor `vector`, metadata naming the model and hook point)."""
    return save({"vector": vector.detach().float().cpu().contiguous()},
                metadata={"format": FORMAT, "model": model, "hook": hook, "d_model": str(vector.shape[0])})


def save_vector(path: Path, vector: torch.Tensor, *, model: str, hook: str) -> None:
    """Write a preset vector atomically (a temporary file, then a rename)."""
    write_bytes(path, vector_bytes(vector, model=model, hook=hook))


@dataclass(frozen=True)
class StoredVector:
    vector: torch.Tensor
    model: str
    hook: str


def load_vector(path: Path) -> StoredVector:
    """Read a preset vector written by `save_vector`; anything else raises PresetError saying what is wrong."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
            if keys != ["vector"] or meta.get("format") != FORMAT:
                raise PresetError(f"{path} is not a tinymorph preset vector (tensors {keys}, format "
                                  f"{meta.get('format')!r}).")
            vector = fh.get_tensor("vector")
    except PresetError:
        raise
    except FileNotFoundError:
        raise PresetError(f"The preset's vector file {path} is missing.") from None
    except Exception as exc:  # safetensors raises several kinds for a damaged header or body
        raise PresetError(f"{path} is damaged: {exc}") from None
    if vector.ndim != 1 or vector.dtype != torch.float32 or str(vector.shape[0]) != meta.get("d_model"):
        raise PresetError(f"{path} holds a {tuple(vector.shape)} {vector.dtype} tensor, not the vector its "
                          f"metadata describes.")
    if not bool(torch.isfinite(vector).all()) or not math.isfinite(float(vector.norm())):
        raise PresetError(f"{path} holds values that are not finite.")
    return StoredVector(vector, meta.get("model", ""), meta.get("hook", ""))
