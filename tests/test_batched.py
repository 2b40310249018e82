"""Batched steered decoding (`steering.fast.batched`): each row decodes what it would alone, under its own steering, with
requests joining and leaving between steps."""

from __future__ import annotations

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.fast.batched import BatchCache, Batcher, BatchView, Request
from steering.fast.cache import PrefixCache
from steering.fast.decode import fast_token_ids
from steering.fast.model import FastModel
from steering.runtime.decode import prompt_ids
from steering.runtime.interventions import Intervention
from steering.runtime.models import LoadedModel, from_modules

from .conftest import ByteTokenizer, _llama, tiny_lm
from .test_fast import _qwen2, _sae
from .test_fast_families import _lm as _family_lm

PROMPTS = ["The lighthouse keeper climbed the stairs at dusk, and", "Rain", "Once upon a time in a small town",
           "She opened the letter slowly."]


def _alone(engine: Engine, prompt: str | list[int], steering, sampling: SamplingConfig) -> list[int]:
    fast = engine.caches.fast
    ids = prompt_ids(engine.lm, prompt)[0].tolist() if isinstance(prompt, str) else prompt
    return list(fast_token_ids(fast, PrefixCache(fast), ids, sampling, engine.lm.eos_token_ids,
                               plan=engine.plan(steering), joins=engine.joins))


def _steerings(d_model: int) -> list[list[Intervention]]:
    torch.manual_seed(5)
    return [[], [Intervention("add", 3, strength=6.0)], [Intervention("clamp", 5, value=4.0),
            Intervention("vector", vector=torch.randn(d_model), strength=2.0)], [Intervention("ablate", 7)]]


@pytest.mark.parametrize("make", [lambda: tiny_lm("llama"), _qwen2, lambda: _family_lm("gemma2"),
                                  lambda: _family_lm("gpt2")], ids=["llama", "qwen2", "gemma2", "gpt2"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_each_row_decodes_what_it_would_alone(make, positions: str) -> None:
    lm: LoadedModel = make()
    engine = Engine(lm, _sae(layer=1))
    sampling = SamplingConfig(max_tokens=20, stop_at_eos=False, steer_positions=positions)
    steerings = _steerings(lm.d_model)
    alone = [_alone(engine, p, s, sampling) for p, s in zip(PROMPTS, steerings, strict=True)]
    assert len({tuple(a) for a in alone}) == len(alone)  # the steerings differ in effect
    batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=4)
    requests = [Request(prompt_ids(lm, p)[0].tolist(), sampling, engine.plan(s))
                for p, s in zip(PROMPTS, steerings, strict=True)]
    batcher.run(requests)
    assert [r.tokens for r in requests] == alone
    assert batcher.steps == sampling.max_tokens - 1  # one shared forward per step after each prompt's first token


def test_one_row_decodes_what_it_would_alone_through_the_single_sequence_path() -> None:
    # the writer's one continuation: stored by a slice, attending through the fused kernel, the same tokens
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=1))
    sampling = SamplingConfig(max_tokens=20, stop_at_eos=False)
    for prompt, steering in zip(PROMPTS, _steerings(lm.d_model), strict=True):
        batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=4)
        request = Request(prompt_ids(lm, prompt)[0].tolist(), sampling, engine.plan(steering))
        batcher.run([request])
        assert request.tokens == _alone(engine, prompt, steering, sampling)
    cache = BatchCache(engine.caches.fast, 2, 64)
    cache.lengths[:] = torch.tensor([7, 3])
    one = BatchView(engine.caches.fast, cache, 1, span=8)
    assert one.slot == 7 and one.visible is None
    assert BatchView(engine.caches.fast, cache, 1, span=12).visible is not None  # positions it must not see
    assert BatchView(engine.caches.fast, cache, 2, span=8).slot is None


def test_requests_join_and_leave_between_steps() -> None:
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=2))
    steerings = _steerings(lm.d_model) * 2
    prompts = PROMPTS + [p[::-1] for p in PROMPTS]
    lengths = [3, 17, 8, 25, 1, 12, 30, 5]
    batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=3)
    requests = [Request(prompt_ids(lm, p)[0].tolist(), SamplingConfig(max_tokens=n, stop_at_eos=False),
                        engine.plan(s)) for p, s, n in zip(prompts, steerings, lengths, strict=True)]
    batcher.add(requests[0])
    batcher.add(requests[1])
    for _ in range(4):
        batcher.step()
    assert requests[0].done and not requests[1].done
    for r in requests[2:]:
        batcher.add(r)
    seen_rows = set()
    while batcher.busy:
        seen_rows.add(sum(s is not None for s in batcher.slots))
        batcher.step()
    assert max(seen_rows) == 3  # rows were reused as requests finished
    for request, prompt, steering, n in zip(requests, prompts, steerings, lengths, strict=True):
        expect = _alone(engine, prompt, steering, SamplingConfig(max_tokens=n, stop_at_eos=False))
        assert request.tokens == expect, prompt
        assert request.done


def test_the_cache_holds_only_the_rows_running_requests_need_and_is_given_back_when_dry() -> None:
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=1))
    sampling = SamplingConfig(max_tokens=6, stop_at_eos=False)
    batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=16)
    assert batcher.cache.rows == 1
    shapes = []
    for n in (1, 3, 2):  # bursts of 1, 3 and 2 concurrent requests
        requests = [Request(prompt_ids(lm, p)[0].tolist(), sampling) for p in PROMPTS[:n]]
        for r in requests:
            batcher.add(r)
        while batcher.busy:
            batcher.step()
            shapes.append((n, batcher.cache.rows))
        assert [r.tokens for r in requests] == [_alone(engine, p, [], sampling) for p in PROMPTS[:n]]
        assert batcher.cache.rows == 1  # back to one small row between bursts
    assert max(rows for n, rows in shapes if n == 3) == 4  # rows double as requests join: 1, 2, 4 (not 16)
    assert max(rows for n, rows in shapes if n == 2) == 2


def test_seeded_sampling_stop_strings_and_cancel_match_single_requests() -> None:
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=1))
    sampling = SamplingConfig(max_tokens=30, temperature=0.9, top_p=0.95, seed=3, stop=("e",),
                              repetition_penalty=1.3)
    steerings = _steerings(lm.d_model)
    texts = engine.generate_batch(PROMPTS, steerings, sampling, rows=2)
    assert texts == ["".join(engine.generate(p, s, sampling)) for p, s in zip(PROMPTS, steerings, strict=True)]
    assert all("e" not in t for t in texts)

    request = Request(prompt_ids(lm, PROMPTS[0])[0].tolist(), SamplingConfig(max_tokens=50, stop_at_eos=False))
    pieces: list[str] = []
    request.on_piece = pieces.append
    from steering.runtime.decode import CancelToken

    request.cancel = CancelToken()
    batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=2)
    batcher.add(request)
    for _ in range(5):
        batcher.step()
    request.cancel.cancel()
    batcher.step()
    assert request.done and not batcher.busy and len(request.tokens) == 7
    assert "".join(pieces) == request.text


def test_a_document_cache_is_read_through_and_kept() -> None:
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=1))
    fast: FastModel = engine.caches.fast
    cache = PrefixCache(fast)
    ids = prompt_ids(lm, PROMPTS[0])[0].tolist()
    sampling = SamplingConfig(max_tokens=10, stop_at_eos=False)
    batcher = Batcher(fast, engine.sae, set(), lm.tokenizer, rows=2)
    first = batcher.run([Request(ids, sampling, cache=cache)])[0]
    assert cache.low == len(ids) and cache.ids == ids
    more = ids + prompt_ids(lm, " more")[0].tolist()[1:]
    second = batcher.run([Request(more, sampling, cache=cache)])[0]
    assert cache.low == len(more)
    assert second.tokens == _alone(engine, more, [], sampling)
    assert first.tokens == _alone(engine, PROMPTS[0], [], sampling)


def test_the_cache_grows_for_long_requests_and_bad_requests_are_refused() -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(8)
    model = _llama()
    model.config.max_position_embeddings = 1024
    lm = from_modules(LlamaForCausalLM(model.config), ByteTokenizer(), name="tiny-llama-1024")
    engine = Engine(lm, _sae(layer=1))
    sampling = SamplingConfig(max_tokens=40, stop_at_eos=False)
    long_prompt = ("word " * 130).strip()  # 650 byte tokens: beyond the batch cache's first 512 positions
    text = engine.generate_batch([long_prompt, "Rain"], [[], []], sampling, rows=2)
    assert engine._batcher is not None and engine._batcher.steps > 0
    cache = engine._batcher.cache  # the 1,024 positions it grew to went back when the batch ran dry
    assert (cache.rows, cache.capacity) == (1, 512)
    assert text == ["".join(engine.generate(p, (), sampling)) for p in (long_prompt, "Rain")]
    beyond = ("word " * 220).strip()  # 1,100 tokens: more than the model's positions, read by transformers alone
    assert engine.generate_batch([beyond], [[]], SamplingConfig(max_tokens=3, stop_at_eos=False)) == [
        "".join(engine.generate(beyond, (), SamplingConfig(max_tokens=3, stop_at_eos=False)))]
    batcher = Batcher(engine.caches.fast, engine.sae, set(), lm.tokenizer, rows=2)
    with pytest.raises(ValueError, match="at least one token"):
        batcher.add(Request([], sampling))
    with pytest.raises(ValueError, match="positions"):
        batcher.add(Request([1] * 1000, SamplingConfig(max_tokens=100)))
    with pytest.raises(ValueError, match="steering sets"):
        engine.generate_batch(["a", "b"], [[]])


def test_without_the_fast_path_the_batch_runs_one_by_one() -> None:
    lm = tiny_lm("llama")
    engine = Engine(lm, _sae(layer=1), fast=False)
    sampling = SamplingConfig(max_tokens=8, stop_at_eos=False)
    steerings = [[], [Intervention("add", 3, strength=6.0)]]
    assert engine.caches is None
    assert engine.generate_batch(PROMPTS[:2], steerings, sampling) == [
        "".join(engine.generate(p, s, sampling)) for p, s in zip(PROMPTS[:2], steerings, strict=True)]
