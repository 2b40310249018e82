"""Model families on the fast path, as data: what differs between them is a `Family` entry, looked up by the model
config's `model_type`; the fast model's one block function reads it (gpt-fast's `ModelArgs` per family).

Every family but GPT-2 has the Llama layout (RMSNorm before attention and before a gated MLP, rotary positions, grouped
query attention, the modules `model.layers[i].self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
`input_layernorm`, `post_attention_layernorm`); a family differs in the fields below. Adding one that fits: an entry
in `FAMILIES` and its case in tests/test_fast_families.py (greedy output equal to the transformers forward in
float32). A family with more to it has fields for it, read by `model.FastModel`: Gemma 2's sandwich norms and soft
caps, GPT-2's whole layout (`gpt2`: learned positions, LayerNorm with biases, Conv1D projections, a plain MLP).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from steering.runtime.models import spread
from steering.sae.autoencoder import HookPoint

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}
"""The gated MLP's activation, by the config's `hidden_act`."""


@dataclass(frozen=True)
class Family:
    """What sets one model family apart on the fast path."""

    model_type: str
    """The config's `model_type`."""
    norm_offset: float = 0.0
    """RMSNorm multiplies by `norm_offset + weight` (Gemma stores its weights as offsets from 1)."""
    embed_scale: bool = False
    """Token embeddings are multiplied by sqrt(hidden_size) (Gemma)."""
    attention_bias: bool = False
    """The query/key/value projections may carry biases (Qwen2)."""
    activations: tuple[str, ...] = ("silu",)
    """The `hidden_act` values the family uses (each in `ACTIVATIONS`)."""
    sandwich_norms: bool = False
    """Norms after attention and around the MLP too (Gemma 2): `post_attention_layernorm` normalises the attention's
    output, `pre_feedforward_layernorm` the MLP's input and `post_feedforward_layernorm` its output."""
    gpt2: bool = False
    """GPT-2's layout (`transformer.h[i]`): learned positions added to the embedding, LayerNorm with biases, one
    Conv1D for queries, keys and values, a plain (not gated) MLP, biases on every projection, no rotary."""
    soft_caps: bool = False
    """Attention scores and final logits are soft-capped, `cap * tanh(x / cap)`, by the config's
    `attn_logit_softcapping` and `final_logit_softcapping` (Gemma 2); queries scaled by `query_pre_attn_scalar`."""

    def embedding_scale(self, config: Any) -> float:
        return math.sqrt(config.hidden_size) if self.embed_scale else 1.0


def activation_name(config: Any) -> str:
    """The MLP's activation: `hidden_act`, or Gemma 2's `hidden_activation`."""
    return str(getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
               or getattr(config, "activation_function", None) or "silu")


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama"),
    Family("mistral"),
    Family("qwen2", attention_bias=True),
    Family("gemma", norm_offset=1.0, embed_scale=True, activations=("gelu_pytorch_tanh",)),
    Family("gemma2", norm_offset=1.0, embed_scale=True, activations=("gelu_pytorch_tanh",), sandwich_norms=True,
           soft_caps=True),
    Family("gpt2", gpt2=True, activations=("gelu_new", "gelu_pytorch_tanh")),
)}
"""The families the fast path runs."""


def window(config: Any) -> int | None:
    """The sliding window attention is limited to (Mistral, Qwen2 with `use_sliding_window`), or None: the fast path
    keeps its positions within it, so the window never cuts."""
    if not getattr(config, "use_sliding_window", True):
        return None
    size = getattr(config, "sliding_window", None)
    return int(size) if size else None


def family_of(model: Any, hook: HookPoint) -> Family | str:
    """The family that runs `model` on the fast path, or why none can."""
    config: Any = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    family = FAMILIES.get(str(kind))
    if family is None:
        return f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    act = activation_name(config)
    if act not in family.activations:
        return f"activation {act!r}"
    if getattr(config, "mlp_bias", False) or (not family.attention_bias and getattr(config, "attention_bias", False)):
        return "biases the fast path does not apply"
    if family.gpt2:
        inner = getattr(model, "transformer", None)
        if inner is None or not all(hasattr(inner, m) for m in ("wte", "wpe", "h", "ln_f")):
            return "an unexpected module layout"
        if getattr(config, "scale_attn_by_inverse_layer_idx", False) or not getattr(config, "scale_attn_weights", True):
            return "an attention scaling the fast path does not apply"
        if hook.site == "resid_pre" and hook.layer == 0:
            return "a hook before the first block (the fast path adds the learned positions there)"
    else:
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "embed_tokens"):
            return "an unexpected module layout"
    if spread(model):
        return "its weights are spread over several devices"
    if not 0 <= hook.layer < config.num_hidden_layers:
        return f"hook {hook} is outside the model"
    return family


def unsupported_reason(model: Any, hook: HookPoint) -> str | None:
    """Why the fast path cannot run `model`, or None when it can."""
    found = family_of(model, hook)
    return found if isinstance(found, str) else None
