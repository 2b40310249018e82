"""Every model family of the fast path (`steering.fast.family.FAMILIES`) gives what the transformers forward gives
in float32: the same logits, and the same greedy text unsteered and steered. Tiny random models of each family's
config shape; a family added to the table needs its case here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.fast.cache import PrefixCache
from steering.fast.decode import fast_token_ids
from steering.fast.family import FAMILIES
from steering.runtime.decode import decode_token_ids, prompt_ids
from steering.runtime.interventions import Intervention
from steering.runtime.models import LoadedModel, from_modules
from steering.sae.autoencoder import SAE, HookPoint
from steering.testing import ByteTokenizer

COMMON = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2)


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=False))


def _mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**COMMON, sliding_window=128))


def _qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**COMMON, tie_word_embeddings=True))


def _gemma() -> Any:
    from transformers import GemmaConfig, GemmaForCausalLM

    model = GemmaForCausalLM(GemmaConfig(**COMMON, head_dim=16, hidden_act="gelu_pytorch_tanh"))
    with torch.no_grad():  # Gemma starts its norms at 0 (a weight of 1): make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
    return model


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # soft caps small enough to bite on random weights; the eager attention is the one that applies them
    config = Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                          final_logit_softcapping=3.0, sliding_window=128)
    config._attn_implementation = "eager"
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.2)
    return model


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=259, n_embd=64, n_inner=128, n_layer=3, n_head=4, n_positions=1024,
                                       bos_token_id=1, eos_token_id=2))
    with torch.no_grad():  # LayerNorm starts at 1 and 0: make its weights and biases matter
        for name, p in model.named_parameters():
            if ".ln_" in name:
                p.normal_(0.5 if name.endswith("weight") else 0.0, 0.2)
    return model


CASES: dict[str, Callable[[], Any]] = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "gemma": _gemma,
                                       "gemma2": _gemma2, "gpt2": _gpt2}
PROMPT = "The ferry left the harbour before dawn, and"


def test_every_family_has_a_case() -> None:
    assert set(CASES) == set(FAMILIES)


def _lm(kind: str) -> LoadedModel:
    torch.manual_seed(21)
    model = CASES[kind]().eval()
    assert model.config.model_type == kind
    return from_modules(model, ByteTokenizer(), name=f"tiny-{kind}")


def _sae() -> SAE:
    g = torch.Generator().manual_seed(4)
    sae = SAE(64, 48, "standard", hook=HookPoint(1, "resid_post"))
    sae.W_enc.data = torch.randn(64, 48, generator=g) * 0.3
    sae.W_dec.data = torch.randn(48, 64, generator=g) * 0.3
    sae.set_feature_stats(max_act=torch.full((48,), 4.0))
    return sae


@pytest.mark.parametrize("kind", list(CASES))
def test_fast_logits_equal_the_transformers_forward(kind: str) -> None:
    lm = _lm(kind)
    engine = Engine(lm, _sae())
    assert engine.fast is not None, engine.slow_reason
    ids = prompt_ids(lm, PROMPT)
    with torch.inference_mode():
        expected = lm.model(input_ids=ids).logits[0, -1].float()
        cache = PrefixCache(engine.fast)
        cache.sync(ids[0].tolist())
        got = engine.fast.upper(cache)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", list(CASES))
def test_fast_greedy_text_equals_the_transformers_loop_unsteered_and_steered(kind: str) -> None:
    lm = _lm(kind)
    engine = Engine(lm, _sae())
    sampling = SamplingConfig(max_tokens=12, stop_at_eos=False, guidance=None)  # the reference steers by vectors
    assert engine.fast is not None
    cache = PrefixCache(engine.fast)  # one cache for both: the steered run recomputes only what steering changes
    outputs = []
    for steering in ([], [Intervention("add", 3, strength=3.0), Intervention("clamp", 7, value=2.0)]):
        slow = list(decode_token_ids(lm, prompt_ids(lm, PROMPT), sampling, steering=engine.steering_hook(steering),
                                     hook=engine.hook))
        fast = list(fast_token_ids(engine.fast, cache, prompt_ids(lm, PROMPT)[0].tolist(), sampling, set(),
                                   plan=engine.plan(steering)))
        assert fast == slow
        outputs.append(fast)
    assert outputs[0] != outputs[1], "the steering in this test must change the text"
