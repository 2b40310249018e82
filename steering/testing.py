"""Tiny random models of real config shapes, for tests and benchmarks: no download, nothing built at import.

A Llama and a GPT-2 built from small configs with random (seeded) weights, a byte-level tokenizer for them, the same
model saved as a regular Hugging Face folder (what `load_model` reads), and a random TopK SAE on its residual stream.
Their outputs mean nothing; they exercise every code path of the engine in a second on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from steering.runtime.models import LoadedModel, from_modules
from steering.sae.autoencoder import SAE, HookPoint

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

VOCAB = 259
"""Three special ids (pad/unk 0, BOS 1, EOS 2) and the 256 bytes."""
SEED = 1234
"""The seed every tiny model's weights are drawn with."""


class ByteTokenizer:
    """A minimal tokenizer over bytes (ids 3..258), with BOS=1 and EOS=2, offsets in characters."""

    bos_token_id = 1
    eos_token_id = 2

    def _encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offsets = [], []
        for i, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(3 + b)
                offsets.append((i, i + 1))
        return ids, offsets

    def __call__(self, text: str, return_tensors: str | None = None,
                 return_offsets_mapping: bool = False) -> dict[str, Any]:
        ids, offsets = self._encode(text)
        out: dict[str, Any] = {"input_ids": torch.tensor([ids], dtype=torch.long) if return_tensors == "pt" else ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def __len__(self) -> int:
        return VOCAB

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        data = bytes(i - 3 for i in ids if 3 <= i < VOCAB)
        return data.decode("utf-8", errors="replace")


def tiny_llama(vocab: int = VOCAB, layers: int = 4, hidden: int = 64) -> LlamaForCausalLM:
    """A Llama with grouped-query attention (4 heads, 2 KV heads), untied embeddings, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def tiny_gpt2(vocab: int = VOCAB, layers: int = 3, hidden: int = 48) -> GPT2LMHeadModel:
    """A GPT-2 (learned positions, Conv1D layers, LayerNorm), random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg)


def _seeded_model(kind: str) -> LlamaForCausalLM | GPT2LMHeadModel:
    torch.manual_seed(SEED)
    return tiny_llama() if kind == "llama" else tiny_gpt2()


def tiny_lm(kind: str = "llama") -> LoadedModel:
    """The tiny `kind` ("llama" or "gpt2") with a ByteTokenizer, in memory, as `load_model` would return it."""
    return from_modules(_seeded_model(kind), ByteTokenizer(), name=f"tiny-{kind}")


def save_tiny_model(folder: str | Path, kind: str = "llama") -> Path:
    """The tiny `kind` with a byte-level BPE tokenizer, saved as a regular Hugging Face model folder; the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[ch] = 3 + i
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    model = _seeded_model(kind)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return Path(folder)


def random_topk_sae(d_in: int, hook: HookPoint, *, expansion: int = 8, k: int = 32, seed: int = 0) -> SAE:
    """A TopK SAE whose decoder rows are random unit directions and whose encoder is their transpose: it reads and
    writes the residual stream at `hook` with the shapes and costs of a trained one (speed, not meaning)."""
    d_sae = expansion * d_in
    sae = SAE(d_in, d_sae=d_sae, architecture="topk", k=k, hook=hook)
    w_dec = torch.randn(d_sae, d_in, generator=torch.Generator().manual_seed(seed))
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    sae.W_dec.data.copy_(w_dec)
    sae.W_enc.data.copy_(w_dec.T.contiguous())
    return sae


class TinyAssets(NamedTuple):
    """The folders `save_tiny_assets` wrote."""

    model: Path
    sae: Path


def save_tiny_assets(folder: str | Path, *, layer: int = 2, k: int = 16) -> TinyAssets:
    """The tiny Llama (`folder/model`) and a random TopK SAE (8x, `k`) on its block `layer` (`folder/sae`)."""
    model = save_tiny_model(Path(folder) / "model")
    d_in = int(json.loads((model / "config.json").read_text(encoding="utf-8"))["hidden_size"])
    sae = random_topk_sae(d_in, HookPoint(layer, "resid_post"), k=k).save(Path(folder) / "sae")
    return TinyAssets(model, sae)
