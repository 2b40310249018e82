"""Shared fixtures: tiny random models built from configs (no downloads), seeded."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from steering.runtime.models import LoadedModel, from_modules


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


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

    def __call__(self, text: str, return_tensors: str | None = None, return_offsets_mapping: bool = False):
        ids, offsets = self._encode(text)
        out: dict = {"input_ids": torch.tensor([ids], dtype=torch.long) if return_tensors == "pt" else ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        data = bytes(i - 3 for i in ids if 3 <= i < 259)
        return data.decode("utf-8", errors="replace")


def _llama(vocab: int = 259, layers: int = 4, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _gpt2(vocab: int = 259, layers: int = 3, hidden: int = 48):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg)


def tiny_lm(kind: str = "llama") -> LoadedModel:
    torch.manual_seed(1234)
    model = _llama() if kind == "llama" else _gpt2()
    return from_modules(model, ByteTokenizer(), name=f"tiny-{kind}")


@pytest.fixture(params=["llama", "gpt2"])
def lm(request: pytest.FixtureRequest) -> LoadedModel:
    return tiny_lm(request.param)


@pytest.fixture
def llama() -> LoadedModel:
    return tiny_lm("llama")


def save_tiny_model(folder, kind: str = "llama") -> None:
    """A tiny random model with a byte-level BPE tokenizer, saved as a regular HF model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[ch] = 3 + i
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(1234)
    model = _llama() if kind == "llama" else _gpt2()
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(folder)
    return folder
