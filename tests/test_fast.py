"""The fast path (`steering.fast`): the same tokens as the transformers forward, reading only what a document's
prefix cache lacks, with steering as data and bounded memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import steering.fast.model as fast_model
from steering.config import SamplingConfig
from steering.engine import READ_MIN_TOKENS, Engine
from steering.fast.batched import BatchCache, batch_step
from steering.fast.cache import ANCHOR, PrefixCache, SessionCaches, moved_run
from steering.fast.decode import fast_token_ids
from steering.fast.family import unsupported_reason
from steering.fast.linear import (
    INT4_GROUP,
    Linear,
    int4_available,
    int8_available,
    linear_maker,
    quantize_int4,
    quantize_int8,
    row_bucket,
    whole_rows,
)
from steering.fast.model import (
    CHUNK,
    SPLICE_LIMIT,
    SPLICE_MIN,
    SPLICE_REACH,
    FastModel,
    View,
    attend_blocks,
)
from steering.features.annotate import annotate
from steering.runtime.decode import CancelToken, decode_token_ids, prompt_ids
from steering.runtime.interventions import Intervention, RowPlans
from steering.runtime.models import LoadedModel, from_modules
from steering.sae.autoencoder import SAE, HookPoint
from steering.sae.codes import SparseCodes, nonzeros

from .conftest import ByteTokenizer, tiny_lm
from .test_annotate import random_sae

PROMPT = "The lighthouse keeper climbed the stairs at dusk, and"
GREEDY = SamplingConfig(max_tokens=24, stop_at_eos=False, guidance=None)
"""Greedy, steering by vectors alone: what the transformers loop (the reference) does; guidance is the fast path's
own (tests/test_guidance.py)."""


def _qwen2() -> LoadedModel:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(99)
    cfg = Qwen2Config(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return from_modules(Qwen2ForCausalLM(cfg), ByteTokenizer(), name="tiny-qwen2")


def _sae(layer: int = 1, site: str = "resid_post") -> SAE:
    sae = random_sae(layer=layer)
    sae.hook = HookPoint(layer, site)
    return sae


class Counter:
    """Counts the positions each block of a FastModel computes (a decode step's blocks run in one scripted call,
    `FastModel.blocks`)."""

    def __init__(self, fast: FastModel) -> None:
        self.per_block = [0] * fast.n_layers
        inner = fast.blocks

        def counting(x: torch.Tensor, view: View, first: int, last: int) -> torch.Tensor:
            for i in range(first, last):
                self.per_block[i] += x.shape[0]
            return inner(x, view, first, last)

        fast.blocks = counting  # type: ignore[method-assign]

    def take(self) -> list[int]:
        out, self.per_block = self.per_block, [0] * len(self.per_block)
        return out


def _slow(lm: LoadedModel, prompt: str, sampling: SamplingConfig = GREEDY, steering=None, hook=None) -> list[int]:
    return list(decode_token_ids(lm, prompt_ids(lm, prompt), sampling, steering=steering, hook=hook))


def _fast(fast: FastModel, cache: PrefixCache, lm: LoadedModel, prompt: str, sampling: SamplingConfig = GREEDY,
          steering=None) -> list[int]:
    ids = prompt_ids(lm, prompt)[0].tolist()
    plan = None if steering is None else steering.plan
    return list(fast_token_ids(fast, cache, ids, sampling, lm.eos_token_ids, plan=plan))


@pytest.mark.parametrize("make", [lambda: tiny_lm("llama"), _qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_greedy_tokens_equal_the_transformers_loop_in_float32(make, site: str) -> None:
    lm = make()
    engine = Engine(lm, _sae(2, site))
    assert engine.caches is not None and engine.info().fast_path
    fast = engine.caches.fast
    steerings = [(), [Intervention("add", 3, strength=2.0)], [Intervention("clamp", 5, value=3.0)],
                 [Intervention("ablate", 7), Intervention("vector", vector=torch.randn(64), strength=0.5)]]
    for steering in steerings:
        for positions in ("all", "prompt", "generated"):
            sampling = SamplingConfig(max_tokens=16, stop_at_eos=False, steer_positions=positions, guidance=None)
            hook = engine.steering_hook(steering)
            expected = _slow(lm, PROMPT, sampling, hook, engine.hook)
            assert _fast(fast, PrefixCache(fast), lm, PROMPT, sampling, engine.steering_hook(steering)) == expected
    steered = _slow(lm, PROMPT, GREEDY, engine.steering_hook(steerings[1]), engine.hook)
    assert steered != _slow(lm, PROMPT), "the steering in this test must change the text"


def test_sampling_with_a_seed_and_the_repetition_penalty_match_too(llama) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    sampling = SamplingConfig(max_tokens=20, temperature=0.8, top_p=0.9, seed=3, repetition_penalty=1.3,
                              stop_at_eos=False)
    assert _fast(fast, PrefixCache(fast), llama, PROMPT, sampling) == _slow(llama, PROMPT, sampling)


def test_a_longer_prompt_reads_only_its_new_tokens_and_gives_the_same_text(llama) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    counter = Counter(fast)
    cache = PrefixCache(fast)
    _fast(fast, cache, llama, PROMPT)
    n = len(prompt_ids(llama, PROMPT)[0])
    assert counter.take() == [n + GREEDY.max_tokens - 1] * fast.n_layers
    longer = PROMPT + " then"
    longer_ids = prompt_ids(llama, longer)[0].tolist()
    kept = next(i for i, (a, b) in enumerate(zip([*cache.ids, -1], longer_ids, strict=False)) if a != b)
    assert kept >= n
    assert _fast(fast, cache, llama, longer) == _slow(llama, longer)
    assert counter.take() == [len(longer_ids) - kept + GREEDY.max_tokens - 1] * fast.n_layers


def test_an_edit_in_the_middle_rereads_from_the_first_changed_token(llama) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    counter = Counter(fast)
    cache = PrefixCache(fast)
    _fast(fast, cache, llama, PROMPT)
    counter.take()
    edited = PROMPT.replace("stairs", "steps!")
    assert _fast(fast, cache, llama, edited) == _slow(llama, edited)
    changed_from = PROMPT.index("stairs") + 2  # "st" is shared
    assert counter.take()[0] == len(edited) - changed_from + GREEDY.max_tokens - 1


def test_a_steering_change_recomputes_only_the_blocks_after_the_hook(llama) -> None:
    engine = Engine(llama, _sae(1))
    fast = engine.caches.fast
    counter = Counter(fast)
    cache = PrefixCache(fast)
    _fast(fast, cache, llama, PROMPT)
    counter.take()
    steering = engine.steering_hook([Intervention("add", 4, strength=3.0)])
    out = _fast(fast, cache, llama, PROMPT, steering=steering)
    assert out == _slow(llama, PROMPT, GREEDY, engine.steering_hook([Intervention("add", 4, strength=3.0)]),
                        engine.hook)
    per_block = counter.take()
    n = len(prompt_ids(llama, PROMPT)[0])
    assert per_block[:2] == [GREEDY.max_tokens - 1] * 2  # lower blocks: only the generated tokens
    assert per_block[2:] == [n + GREEDY.max_tokens - 1] * 2  # upper blocks: everything again, steered
    # back to unsteered: the same again for the upper blocks, and the text of a cold cache
    assert _fast(fast, cache, llama, PROMPT) == _slow(llama, PROMPT)


def test_steering_only_generated_positions_keeps_the_plain_prompt_cache(llama) -> None:
    engine = Engine(llama, _sae(1))
    fast = engine.caches.fast
    cache = PrefixCache(fast)
    sampling = SamplingConfig(max_tokens=12, stop_at_eos=False, steer_positions="generated", guidance=None)
    _fast(fast, cache, llama, PROMPT)
    counter = Counter(fast)
    steer = [Intervention("add", 4, strength=3.0)]
    out = _fast(fast, cache, llama, PROMPT, sampling, engine.steering_hook(steer))
    assert out == _slow(llama, PROMPT, sampling, engine.steering_hook(steer), engine.hook)
    assert counter.take()[-1] == 1 + 11  # the prompt's last token (for its logits), then each generated token
    assert cache.high <= len(prompt_ids(llama, PROMPT)[0]), "steered generated tokens must not stay in the cache"
    assert _fast(fast, cache, llama, PROMPT) == _slow(llama, PROMPT)


def test_a_cancelled_generation_leaves_a_cache_that_still_gives_the_right_text(llama) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    cache = PrefixCache(fast)
    cancel = CancelToken()
    ids = prompt_ids(llama, PROMPT)[0].tolist()
    for i, _token in enumerate(fast_token_ids(fast, cache, ids, GREEDY, set(), cancel=cancel)):
        if i == 3:
            cancel.cancel()
    assert i == 3
    assert _fast(fast, cache, llama, PROMPT) == _slow(llama, PROMPT)


def test_the_text_after_an_edit_is_found_where_it_moved() -> None:
    old = list(range(100))
    inserted = [*old[:40], 900, 901, 902, *old[40:]]
    assert moved_run(old, inserted, 40, 40, 16) == (40, 43, 60)
    deleted = old[:40] + old[45:]
    assert moved_run(old, deleted, 40, 40, 16) == (45, 40, 55)
    replaced = [*old[:40], 900, *old[41:90], 901, *old[91:]]  # the run ends at the next difference
    assert moved_run(old, replaced, 40, 40, 16) == (41, 41, 49)
    assert moved_run(old, replaced, 90, 90, 16) == (91, 91, 9)  # the next edit's, from where the last run ended
    assert moved_run(old, old[:40] + [900] * 30 + old[60:], 40, 40, 16) is None  # beyond the reach
    assert moved_run(old, old[:40] + list(range(200, 200 + ANCHOR)), 40, 40, 64) is None  # nothing shared again


def _read(fast: FastModel, cache: PrefixCache, ids: list[int]) -> torch.Tensor:
    """A continuation's read of `ids` through `cache`: the logits after them."""
    with torch.inference_mode():
        fast.follow(cache, ids)
        return fast.upper(cache)


def _read_once(lm: LoadedModel, text: str) -> tuple[FastModel, Counter, PrefixCache]:
    """A fast model, its block counter (emptied) and a cache that read `text` as a continuation."""
    fast = FastModel(lm.model, HookPoint(1, "resid_post"))
    counter = Counter(fast)
    cache = PrefixCache(fast)
    _read(fast, cache, prompt_ids(lm, text)[0].tolist())
    counter.take()
    return fast, counter, cache


def test_an_edit_far_above_the_cursor_reads_only_its_own_tokens(llama) -> None:
    text = "The harbour was quiet in the morning, and the boats rocked slowly on the grey water. " * 3
    fast, counter, cache = _read_once(llama, text)
    at = text.index("quiet")
    edited = text[:at] + "very " + text[at:]
    new = prompt_ids(llama, edited)[0].tolist()
    logits = _read(fast, cache, new)
    lower = [len("very ")] * fast.split  # the edit's own tokens; above the hook the last token again, for its logits
    assert counter.take() == lower + [len("very ") + 1] * (fast.n_layers - fast.split)
    stale = at + len("very ")  # the byte tokenizer: a token a character
    assert cache.stale == stale and cache.splices == 1
    fresh = PrefixCache(fast)
    exact = _read(fast, fresh, new)
    n = len(new)
    # the first block's keys and values depend on the token and its position alone: moved and rotated, they equal
    # a fresh read's (a wrong rotation, or none, would not)
    torch.testing.assert_close(cache.k[0, :, :n], fresh.k[0, :, :n], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(cache.v[0, :, :n], fresh.v[0, :, :n])
    assert not torch.allclose(cache.k[:, :, :n], fresh.k[:, :, :n], atol=1e-5)  # later blocks: stale, not re-read
    assert torch.equal(logits.argmax(), exact.argmax())
    # an exact reader (annotation through the same cache) reads from the first stale token again
    cache.sync(new)
    assert cache.low == cache.high == stale and cache.stale is None and cache.splices == 0


def test_a_splice_reads_the_edit_under_the_caches_steering_and_survives_a_failure(llama) -> None:
    engine = Engine(llama, _sae(1))
    plan = engine.plan([Intervention("vector", vector=torch.randn(64), strength=4.0)])
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    text = "The harbour was quiet in the morning, and the boats rocked slowly on the grey water. " * 3
    at = text.index("boats")
    edited = text[:at] + "little " + text[at:]
    new = prompt_ids(llama, edited)[0].tolist()
    cache, fresh = PrefixCache(fast), PrefixCache(fast)
    with torch.inference_mode():
        fast.follow(cache, prompt_ids(llama, text)[0].tolist())
        fast.upper(cache, plan)
        fast.follow(cache, new)
        fast.upper(cache, plan)
        fresh.sync(new)
        fast.upper(fresh, plan)
    edit = slice(at, at + len("little "))  # the edit's own tokens attend to an exact prefix: exact, steered
    torch.testing.assert_close(cache.k[:, :, edit], fresh.k[:, :, edit], rtol=1e-4, atol=1e-4)
    # a failure part-way (out of memory, say) leaves the exact prefix, and the next read is right
    broken = PrefixCache(fast)
    _read(fast, broken, prompt_ids(llama, text)[0].tolist())

    def fail(*args: object) -> torch.Tensor:
        raise MemoryError

    fast.blocks = fail  # type: ignore[method-assign]
    with pytest.raises(MemoryError):
        _read(fast, broken, new)
    del fast.blocks
    assert broken.low == broken.high == at and broken.ids == new
    torch.testing.assert_close(_read(fast, broken, new), _read(fast, PrefixCache(fast), new))


def test_edits_in_several_places_are_spliced_in_one_read(llama) -> None:
    text = "The lighthouse keeper climbed the stairs at dusk and lit the great lamp for the ships. " * 4
    fast, counter, cache = _read_once(llama, text)
    a, b = text.index("stairs"), text.index("ships")
    edited = text[:a] + "narrow " + text[a:b] + text[b + len("ships"):]  # a word in, later a word out
    new = prompt_ids(llama, edited)[0].tolist()
    _read(fast, cache, new)
    assert counter.take()[0] == len("narrow ")  # the inserted word alone: the deleted one has no tokens to read
    assert cache.splices == 2 and cache.stale == a + len("narrow ")
    fresh = PrefixCache(fast)
    _read(fast, fresh, new)
    torch.testing.assert_close(cache.k[0, :, :len(new)], fresh.k[0, :, :len(new)], rtol=1e-2, atol=1e-2)


def test_splices_stop_at_a_long_edit_and_after_the_limit(llama) -> None:
    text = "Rain fell on the town all night, and by morning the river had risen over the old stone bridge. " * 3
    fast, counter, cache = _read_once(llama, text)
    pasted = text[:20] + "x" * (SPLICE_REACH + 10) + text[20:]  # too long an edit: read again from it
    ids = prompt_ids(llama, pasted)[0].tolist()
    _read(fast, cache, ids)
    assert counter.take()[0] == len(ids) - 20 and cache.stale is None
    edited = pasted
    for round in range(SPLICE_LIMIT + 1):
        at = len(edited) // 3 + 7 * round
        edited = edited[:at] + "s" + edited[at:]
        _read(fast, cache, prompt_ids(llama, edited)[0].tolist())
        read = counter.take()[0]
        if round < SPLICE_LIMIT:
            assert read == 1 and cache.splices == round + 1
        else:  # the limit: everything from the first stale token is read again, exactly
            assert read > SPLICE_MIN and cache.stale is None and cache.splices == 0


def test_spliced_tokens_are_read_again_exactly_in_the_background(llama) -> None:
    engine = Engine(llama, _sae(1))
    caches, fast = engine.caches, engine.fast
    assert caches is not None and fast is not None
    text = "The harbour was quiet in the morning, and the boats rocked slowly on the grey water. " * 3
    sampling = SamplingConfig(max_tokens=4, stop_at_eos=False, guidance=None)
    "".join(engine.generate(text, sampling=sampling, session="s"))
    at = text.index("boats")
    edited = text[:at] + "little " + text[at:]
    "".join(engine.generate(edited, sampling=sampling, session="s"))
    cache = caches.get("s")
    assert cache.stale is not None
    calls = 0
    while not engine.refresh("s", seconds=0.0):  # the smallest pieces
        calls += 1
        if calls == 2:  # the writer edits again meanwhile: the copy follows
            edited = edited.replace("grey", "gray")
            "".join(engine.generate(edited, sampling=sampling, session="s"))
    assert calls > 2 and cache.stale is None and cache.splices == 0
    n = cache.high
    fresh = PrefixCache(fast)
    _read(fast, fresh, cache.ids[:n])
    torch.testing.assert_close(cache.k[:, :, :n], fresh.k[:, :, :n])
    torch.testing.assert_close(cache.v[:, :, :n], fresh.v[:, :, :n])
    assert engine.refresh("s") and engine.refresh("no such session")


def test_a_prefetched_prompt_is_read_in_pieces_and_the_continuation_reads_only_what_follows(llama) -> None:
    engine = Engine(llama, _sae(1))
    fast = engine.fast
    assert fast is not None
    counter = Counter(fast)
    text = "The harbour was quiet in the morning, and the boats rocked slowly on the grey water. " * 2
    pieces = 1
    while not engine.prefetch(text, "s", seconds=0.0):  # the smallest pieces
        pieces += 1
    n = len(prompt_ids(llama, text)[0])
    assert pieces == -(-n // READ_MIN_TOKENS) and counter.take() == [n] * fast.n_layers
    typed = text + "Then"
    sampling = SamplingConfig(max_tokens=6, stop_at_eos=False, guidance=None)
    out = "".join(engine.generate(typed, sampling=sampling, session="s"))
    assert counter.take() == [len("Then") + 5] * fast.n_layers  # the typed word, then the decode steps
    assert out == "".join(Engine(llama, _sae(1)).generate(typed, sampling=sampling))
    assert engine.prefetch("", "s") and engine.prefetch(typed, "s", seconds=10.0)


def test_engine_sessions_annotate_and_generate_on_one_cache(llama) -> None:
    engine = Engine(llama, _sae(1))
    fast = engine.caches.fast
    text = "Rain fell on the roofs.\n\nThe streets were quiet in the morning."
    plain = Engine(tiny_lm("llama"), _sae(1), fast=False)
    assert plain.caches is None and not plain.info().fast_path
    expected = plain.annotate(text)
    counter = Counter(fast)
    got = engine.annotate(text, session="doc")
    assert [t.token_id for t in got.tokens] == [t.token_id for t in expected.tokens]
    for a, b in zip(got.tokens, expected.tokens, strict=True):
        assert [f.feature for f in a.features] == [f.feature for f in b.features]
        assert [f.activation for f in a.features] == pytest.approx([f.activation for f in b.features], abs=1e-4)
    assert counter.take() == [len(text)] * 2 + [0, 0]
    # typing at the end: the annotation reads 6 tokens, the completion after it only its upper blocks for them
    typed = text + " Then"
    engine.annotate(typed, session="doc")
    assert counter.take() == [5, 5, 0, 0]
    out = "".join(engine.generate(typed, sampling=SamplingConfig(max_tokens=6, stop_at_eos=False), session="doc"))
    assert counter.take() == [5, 5, len(typed) + 5, len(typed) + 5]
    assert out == "".join(plain.generate(typed, sampling=SamplingConfig(max_tokens=6, stop_at_eos=False)))
    engine.forget("doc")
    assert len(engine.caches) == 0


def test_warming_up_runs_every_block_and_leaves_no_session_or_trace(llama) -> None:
    engine = Engine(llama, _sae(1))
    counter = Counter(engine.caches.fast)
    sampling = SamplingConfig(max_tokens=6, stop_at_eos=False)
    engine.warm_up()
    per_block = counter.take()
    assert min(per_block) > 3 and len(set(per_block)) == 1, "the prompt and a few steps through every block"
    assert len(engine.caches) == 0
    assert "".join(engine.generate(PROMPT, sampling=sampling)) == \
        "".join(Engine(tiny_lm("llama"), _sae(1)).generate(PROMPT, sampling=sampling))
    Engine(tiny_lm("llama"), _sae(1), fast=False).warm_up()  # no fast path: nothing to do


def test_annotation_of_an_edited_document_equals_a_fresh_one(llama) -> None:
    engine = Engine(llama, _sae(1))
    text = "One line of text.\n\nA second paragraph follows it here."
    engine.annotate(text, session="doc")
    edited = text.replace("second", "third")
    again = engine.annotate(edited, session="doc")
    fresh = annotate(llama, engine.sae, edited)
    assert [[(f.feature, round(f.activation, 3)) for f in t.features] for t in again.tokens] == \
           [[(f.feature, round(f.activation, 3)) for f in t.features] for t in fresh.tokens]


def test_reading_ahead_in_pieces_encodes_as_it_goes_and_annotates_as_a_whole_reading(llama) -> None:
    engine = Engine(llama, _sae(1))
    text = " ".join(f"Sentence {i} about the harbour." for i in range(6))  # about 190 tokens of 512
    pieces = 0
    while not engine.read_ahead(text, "doc", 16):
        cache = engine.caches.get("doc")
        assert cache.coded == cache.low > 0, "each piece read is encoded with it"
        pieces += 1
    assert pieces >= 3
    got = engine.annotate(text, session="doc")
    fresh = annotate(llama, engine.sae, text)
    assert [[(f.feature, round(f.activation, 3)) for f in t.features] for t in got.tokens] == \
           [[(f.feature, round(f.activation, 3)) for f in t.features] for t in fresh.tokens]


def test_timed_pieces_follow_what_the_last_ones_cost(llama) -> None:
    """`read_ahead(seconds=...)` sizes each piece from the cost per token of the last: a budget far below one token's
    cost reads the fewest tokens a piece reads, one far above it the rest at once; the codes are the same."""
    engine = Engine(llama, _sae(1))
    text = " ".join(f"Sentence {i} about the harbour." for i in range(6))
    sizes = []
    while True:
        before = engine.caches.get("doc").low
        done = engine.read_ahead(text, "doc", seconds=1e-9)
        sizes.append(engine.caches.get("doc").low - before)
        if done:
            break
    assert len(sizes) >= 3 and all(n == READ_MIN_TOKENS for n in sizes[:-1]) and 0 < sizes[-1] <= READ_MIN_TOKENS
    assert engine._read_cost > 0
    assert engine.read_ahead(text + " One more sentence about the boats.", "doc", seconds=3600.0)
    engine.read_ahead(text, "other", seconds=3600.0)
    assert engine.caches.get("other").low == len(engine.caches.get("other").ids), "a generous budget reads it all"
    got = engine.annotate(text, session="doc")
    fresh = annotate(llama, engine.sae, text)
    assert [[(f.feature, round(f.activation, 3)) for f in t.features] for t in got.tokens] == \
           [[(f.feature, round(f.activation, 3)) for f in t.features] for t in fresh.tokens]


def test_healing_in_its_own_session_leaves_the_steered_continuation_read(llama) -> None:
    """The server heals a half word unsteered in a session of its own: the steered continuation then reads only the
    new letters in the upper blocks. Healed in the continuation's session, the unsteered read of the prompt made
    the steered continuation read all of it there again."""
    engine = Engine(llama, _sae(1))
    fast = engine.caches.fast
    steer = [Intervention("add", 3, strength=2.0)]
    how = SamplingConfig(max_tokens=4, stop_at_eos=False)
    counter = Counter(fast)
    upper_reads = []
    for heal_in in ("heal", "continuation"):
        for session in ("heal", "continuation"):
            engine.caches.drop(session)
        text = PROMPT + " then he"
        "".join(engine.generate(text, steer, how, session="continuation"))
        text += " sl"
        healed = engine.complete_word(text, "sl", session=heal_in)
        counter.take()
        "".join(engine.generate(text + healed, steer, how, session="continuation"))
        upper_reads.append(counter.take()[-1])
    prompt_tokens = len(prompt_ids(llama, PROMPT)[0])
    assert upper_reads[0] <= 16 < prompt_tokens <= upper_reads[1], upper_reads


def test_caches_stay_within_their_budget_least_recently_used_first(llama) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    caches = SessionCaches(fast, budget_bytes=2 * PrefixCache(fast).nbytes)
    for name in ("a", "b", "c"):
        caches.get(name)
        caches.trim()
    assert len(caches) == 2 and caches.nbytes <= caches.budget
    caches.get("b")  # b is now the most recent
    caches.get("d")
    caches.trim()
    assert set(caches._caches) == {"b", "d"}
    assert caches.get(None) is not caches.get(None), "without a session nothing is kept"


def sparse_rows(m: int, width: int, nonzeros: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(m, width)
    for r in range(m):
        picked = torch.randperm(width, generator=g)[:nonzeros if r % 3 else nonzeros // 2]
        rows[r, picked] = torch.randn(len(picked), generator=g)
    return rows


def test_sparse_codes_give_back_the_rows_they_keep_as_nonzeros_only() -> None:
    width = 300
    codes = SparseCodes(width)
    first = sparse_rows(40, width, 8, 0)
    codes.put(0, *nonzeros(first))
    assert torch.equal(codes.dense(40), first)
    assert codes.nbytes < first.numel() * 4 // 10, "kept as index/value pairs, not dense"
    # more rows, denser ones: the kept rows stay, the width of the pairs grows
    more = sparse_rows(25, width, 20, 1)
    codes.put(40, *nonzeros(more))
    assert torch.equal(codes.dense(65), torch.cat([first, more]))
    # after an edit the rows from the first changed token on are replaced; an empty row stays empty
    edited = sparse_rows(10, width, 4, 2)
    edited[3] = 0
    codes.put(30, *nonzeros(edited))
    assert torch.equal(codes.dense(40), torch.cat([first[:30], edited]))
    assert torch.equal(codes.dense(0), torch.zeros(0, width))


def test_cached_codes_equal_a_fresh_encoding_and_cost_little_memory(llama) -> None:
    engine = Engine(llama, _sae(1))
    text = "The rain fell on the harbour all night. " * 12
    engine.annotate(text, session="doc")
    cache = engine.caches.get("doc")
    n = cache.coded
    assert n > 50 and cache.codes is not None
    dense_bytes = n * engine.sae.d_sae * 4
    assert cache.codes.nbytes < dense_bytes
    kept = cache.codes.dense(n)
    fresh = engine.sae.encode(cache.resid[:n].to(engine.sae.dtype)).float()
    assert torch.allclose(kept, fresh, atol=1e-6)


def _causal_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention in float64, each of the last `tokens` queries seeing the span up to its own position."""
    tokens, span = q.shape[2], keys.shape[2]
    visible = torch.ones(tokens, span, dtype=torch.bool).tril(span - tokens)
    return F.scaled_dot_product_attention(q.double(), keys.double(), values.double(), attn_mask=visible,
                                          scale=scale, enable_gqa=True)


def test_blocked_attention_is_causal_after_the_cache_and_matches_the_fused_kernel(monkeypatch) -> None:
    monkeypatch.setattr(fast_model, "BLOCK_ROWS", 16)  # 50 queries: blocks of 16, 16, 16 and 2
    g = torch.Generator().manual_seed(3)
    start, tokens, scale = 37, 50, 0.25
    q = torch.randn(1, 6, tokens, 16, generator=g)
    keys, values = torch.randn(2, 1, 2, start + tokens, 16, generator=g)
    exact = _causal_reference(q, keys, values, scale)
    assert torch.allclose(attend_blocks(q, keys, values, scale).double(), exact, atol=1e-5)
    reduced = attend_blocks(q.bfloat16(), keys, values, scale)  # a float32 cache, bfloat16 queries
    assert reduced.dtype == torch.bfloat16
    assert float((reduced.double() - exact).norm() / exact.norm()) < 0.02
    later = keys.clone()
    later[:, :, start + 20:] += 5.0  # what the 21st new token and those after it see
    moved = attend_blocks(q, later, values, scale)
    assert torch.equal(moved[:, :, :20], attend_blocks(q, keys, values, scale)[:, :, :20])
    assert not torch.allclose(moved[:, :, 20:], exact[:, :, 20:].float(), atol=1e-3)


def test_blocked_attention_multiplies_on_a_few_shapes_whatever_the_span(monkeypatch) -> None:
    shapes = set()
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: shapes.add((a.shape, b.shape)) or bmm(a, b))
    g = torch.Generator().manual_seed(4)
    keys, values = torch.randn(2, 1, 2, 700, 16, generator=g)
    for span in range(140, 700, 7):  # a document read in pieces of every size: 80 spans
        tokens = 128 + span % 17
        q = torch.randn(1, 4, tokens, 16, generator=g).bfloat16()
        got = attend_blocks(q, keys[:, :, :span], values[:, :, :span], 0.25)
        if span % 5 == 0:
            exact = _causal_reference(q, keys[:, :, :span], values[:, :, :span], 0.25)
            assert float((got.double() - exact).norm() / exact.norm()) < 0.02
    # oneDNN keeps a kernel per shape: one per block of queries over the keys padded to a bucket, scores and values
    assert len(shapes) <= 2 * 3


def test_a_paused_pass_goes_on_from_its_block_and_reads_what_one_pass_reads(llama) -> None:
    """`lower(pause=...)` stops between two blocks (after one at least) and the next call goes on from there; an edit
    inside the paused pass starts it over, a cache that grows keeps its keys; each ends as one unpaused read."""
    fast = FastModel(llama.model, HookPoint(2, "resid_post"))
    ids = prompt_ids(llama, PROMPT * 8)[0].tolist()[:200]
    edited = [*ids[:40], 7, 8, 9, *ids[43:]]

    def read(tokens: list[int], first: int | None) -> PrefixCache:  # unpaused, in the same passes
        cache = PrefixCache(fast)
        cache.sync(tokens)
        fast.lower(cache, first)
        fast.lower(cache)
        return cache

    with torch.inference_mode():
        calls = 0
        paused = PrefixCache(fast, capacity=64)  # the pass of 60 tokens fits, the rest makes it grow
        paused.sync(ids)
        while not fast.lower(paused, 60 if calls == 0 else None, pause=lambda: True):
            calls += 1
            assert paused.partial is not None and paused.partial.block == calls % fast.split
        assert calls == 2 * fast.split - 1 and paused.capacity >= len(ids)  # one block a call
        assert paused.block_rows == fast.split * len(ids)
        moved = PrefixCache(fast)
        moved.sync(ids)
        fast.lower(moved, pause=lambda: True)
        moved.sync(edited)  # inside the paused pass: it is dropped
        assert moved.partial is None and moved.low == 0
        while not fast.lower(moved, pause=lambda: True):
            pass
        for cache, tokens, first in ((paused, ids, 60), (moved, edited, None)):
            whole = read(tokens, first)
            n = len(tokens)
            assert torch.equal(cache.resid[:n], whole.resid[:n])
            assert torch.equal(cache.k[:fast.split, :, :n], whole.k[:fast.split, :, :n])
            assert torch.equal(cache.v[:fast.split, :, :n], whole.v[:fast.split, :, :n])


def test_a_paused_read_ahead_leaves_the_codes_to_the_next_call_and_annotates_as_a_whole_reading(llama) -> None:
    engine = Engine(llama, _sae(1))
    text = " ".join(f"Sentence {i} about the harbour." for i in range(6))
    assert engine.caches is not None and engine.caches.fast.split == 2
    urgent = [True, True, True]  # after the first block, before encoding, and again before encoding; then never
    calls = 0
    while not engine.read_ahead(text, "doc", seconds=3600.0, pause=lambda: bool(urgent) and urgent.pop(0)):
        calls += 1
    cache = engine.caches.get("doc")
    assert calls == 1 and cache.low == len(cache.ids) and cache.coded == 0
    got = engine.annotate(text, session="doc")
    fresh = annotate(llama, engine.sae, text)
    assert [[(f.feature, round(f.activation, 3)) for f in t.features] for t in got.tokens] == \
           [[(f.feature, round(f.activation, 3)) for f in t.features] for t in fresh.tokens]


def test_bfloat16_prompts_read_through_blocked_attention_as_transformers_reads_them(monkeypatch) -> None:
    lm = tiny_lm("llama")
    lm.model.to(torch.bfloat16)
    fast = FastModel(lm.model, HookPoint(1, "resid_post"))
    calls = []
    monkeypatch.setattr(fast_model, "attend_blocks", lambda *a: calls.append(a[0].shape[2]) or attend_blocks(*a))
    ids = prompt_ids(lm, PROMPT * 10)[0].tolist()[:480]
    piece = fast_model.BLOCK_ROWS // 2  # the shortest pass read in blocks
    with torch.inference_mode():
        whole = PrefixCache(fast)
        whole.sync(ids)
        fast.lower(whole)
        pieces = PrefixCache(fast)
        pieces.sync(ids)
        while not fast.lower(pieces, piece):  # later pieces attend to the cached keys before them; the last (96
            pass                              # tokens) goes through the fused kernel
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    reference = out.hidden_states[2][0].float()
    assert calls == [480] * fast.split + [piece] * 3 * fast.split
    n = len(ids)
    for cache in (whole, pieces):
        got = cache.resid[:n].float()
        assert float(F.cosine_similarity(got, reference, dim=-1).min()) > 0.999


def test_a_long_prompt_is_read_in_as_few_passes_as_its_memory_allows(llama, monkeypatch) -> None:
    fast = FastModel(llama.model, HookPoint(1, "resid_post"))
    ids = prompt_ids(llama, PROMPT * 12)[0].tolist()[:500]
    assert fast.pass_rows(0, len(ids)) >= len(ids), "one pass"
    passes = []
    inner = fast.block
    monkeypatch.setattr(fast, "block", lambda i, x, view: (passes.append(x.shape[0]) if i == 0 else None)
                        or inner(i, x, view))
    caches = []
    with torch.inference_mode():
        for budget in (fast_model.PASS_BYTES, 100 * fast.row_bytes):  # the MLP's rows, then the keys' mask
            monkeypatch.setattr(fast_model, "PASS_BYTES", budget)
            cache = PrefixCache(fast)
            cache.sync(ids)
            fast.lower(cache)
            caches.append(cache)
    assert passes == [500, CHUNK, 500 - CHUNK]
    assert torch.allclose(caches[0].resid[:500], caches[1].resid[:500], atol=1e-5)
    lower = fast.split  # the blocks a read computes
    assert torch.allclose(caches[0].k[:lower, :, :500], caches[1].k[:lower, :, :500], atol=1e-5)


def test_reduced_precision_passes_run_on_a_few_row_counts_with_the_same_result() -> None:
    """oneDNN keeps a kernel per shape: row counts are padded to buckets, so a long session sees few shapes."""
    assert [row_bucket(n) for n in (1, 2, 3, 5, 8, 9, 31, 32, 33, 64, 65, 256, 257)] == \
        [1, 2, 4, 8, 8, 16, 32, 32, 64, 64, 96, 256, 288]
    assert len({row_bucket(n) for n in range(1, 2049)}) == 6 + 2048 // 32 - 1
    for n in range(1, 700):  # the longest run of rows at most n that is not padded
        m = whole_rows(n)
        assert m <= n and row_bucket(m) == m and all(row_bucket(k) != k for k in range(m + 1, n + 1))
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 16, generator=g).to(torch.bfloat16)
    bias = torch.randn(48, generator=g).to(torch.bfloat16)
    for n in (3, 37, 64):
        x = torch.randn(n, 16, generator=g).to(torch.bfloat16)
        got = Linear(weight, bias, bucket=True)(x)
        assert got.shape == (n, 48)
        torch.testing.assert_close(got, F.linear(x, weight, bias), atol=0.05, rtol=0.01)


def test_models_without_a_fast_path_use_the_transformers_loop() -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from steering.runtime.models import from_modules
    from steering.testing import ByteTokenizer

    torch.manual_seed(0)
    neox = from_modules(GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2)).eval(), ByteTokenizer(), name="tiny-neox")
    reason = unsupported_reason(neox.model, HookPoint(1, "resid_post"))
    assert reason is not None and "gpt_neox" in reason
    engine = Engine(neox)
    assert engine.caches is None and engine.slow_reason == reason
    out = "".join(engine.generate("abc", sampling=SamplingConfig(max_tokens=5, stop_at_eos=False), session="x"))
    assert out == neox.tokenizer.decode(_slow(neox, "abc", SamplingConfig(max_tokens=5, stop_at_eos=False)))
    with pytest.raises(ValueError, match="cannot run"):
        FastModel(neox.model, HookPoint(1, "resid_post"))


def test_a_prompt_beyond_the_models_positions_falls_back(llama) -> None:
    engine = Engine(llama)
    prompt = "x" * 500  # 500 byte tokens + 20 new ones > 512 positions
    sampling = SamplingConfig(max_tokens=20, stop_at_eos=False)
    out = "".join(engine.generate(prompt, sampling=sampling, session="long"))
    assert out == llama.tokenizer.decode(_slow(llama, prompt, sampling))


def test_int8_weights_round_trip_within_half_a_step() -> None:
    weight = torch.randn(48, 32) * torch.linspace(0.01, 3, 48)[:, None]
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.shape == (48,)
    error = (q.float() * scales[:, None] - weight).abs()
    assert bool((error <= scales[:, None] / 2 + 1e-6).all())


@pytest.mark.skipif(not int8_available(torch.bfloat16, torch.device("cpu")), reason="no int8 matmul kernel")
def test_the_unembedding_multiplies_through_the_quantized_engine_where_there_is_one() -> None:
    weight = torch.randn(96, 64, dtype=torch.bfloat16)  # full precision: no 4-bit copy
    make = linear_maker(torch.bfloat16, torch.device("cpu"), True)
    lin = make(weight, dynamic=True)  # the unembedding's
    engine = torch.backends.quantized.engine in ("x86", "fbgemm")
    block = make(weight)  # a block's: weight-only int8, its inputs exact
    assert block.dynamic is None and block.int8 is not None
    assert (lin.dynamic is not None) == engine and (lin.int8 is None) == engine and lin.int4 is None
    few, many = torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(8, 64, dtype=torch.bfloat16)
    exact = few.float() @ weight.float().T
    out = lin(few)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 96)
    assert 0 < float((out.float() - exact).norm() / exact.norm()) < 0.02  # 8-bit weights and inputs: close, not equal
    assert torch.equal(lin(many), F.linear(many, weight)), "a prompt's rows use the model's own weights"


def _four_bit(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    """A weight whose groups of INT4_GROUP input columns each hold values on 16 evenly spaced levels from the group's
    minimum to its maximum (as a Q4_1 GGUF stores them)."""
    g = torch.Generator().manual_seed(seed)
    groups = in_f // INT4_GROUP
    scale = torch.rand(out_f, groups, 1, generator=g) * 0.01 + 0.001
    low = -8 * scale + torch.randn(out_f, groups, 1, generator=g) * 0.001
    q = torch.randint(0, 16, (out_f, groups, INT4_GROUP), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15  # each block spans its whole range, as Q4_1's min and scale make it
    return (q * scale + low).reshape(out_f, in_f).to(torch.bfloat16)


@pytest.mark.skipif(not int4_available(torch.bfloat16, torch.device("cpu")), reason="no 4-bit matmul kernel")
def test_four_bit_copies_only_for_weights_stored_in_four_bits_and_they_compute_the_same() -> None:
    weight = _four_bit(64, 96)
    packed = quantize_int4(weight)
    assert packed is not None
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    exact = x.float() @ weight.float().T
    out = Linear(weight, int4=packed)(x).float()
    assert float((out - exact).norm() / exact.norm()) < 0.01
    assert quantize_int4(torch.randn(64, 96, dtype=torch.bfloat16)) is None, "full precision keeps its int8 copy"
    assert quantize_int4(weight[:, :80]) is None, "columns not in whole groups"


def _four_bit_llama() -> LoadedModel:
    """The tiny Llama in bfloat16, its blocks' weights on 4-bit grids (as a Q4_1 GGUF stores them)."""
    lm = tiny_lm("llama")
    lm.model.to(torch.bfloat16)
    with torch.no_grad():
        for i, module in enumerate(lm.model.model.layers.modules()):
            if isinstance(module, torch.nn.Linear) and module.weight.shape[1] % INT4_GROUP == 0:
                module.weight.copy_(_four_bit(*module.weight.shape, seed=i) * 4)
    return lm


@pytest.mark.skipif(not int4_available(torch.bfloat16, torch.device("cpu")), reason="no 4-bit matmul kernel")
def test_a_model_stored_in_four_bits_decodes_from_four_bit_copies_with_the_same_tokens() -> None:
    lm = _four_bit_llama()
    plain = FastModel(lm.model, HookPoint(1, "resid_post"))
    quick = FastModel(lm.model, HookPoint(1, "resid_post"), int8=True)
    assert quick.int4 > 0 and plain.int4 == 0
    ids = prompt_ids(lm, PROMPT)[0].tolist()
    with torch.inference_mode():
        logits = []
        for fast in (plain, quick):
            cache = PrefixCache(fast)
            cache.sync(ids)
            fast.upper(cache)
            cache.push(5)
            logits.append(fast.upper(cache, keep=True))
        # candidate next tokens (guided steering) go through the 4-bit copies several rows at a time
        rows = []
        for fast in (plain, quick):
            cache = PrefixCache(fast)
            cache.sync(ids)
            fast.upper(cache)
            rows.append(fast.candidates(cache, torch.tensor([5, 9, 11])).float())
    assert F.cosine_similarity(logits[0], logits[1], dim=0) > 0.999
    assert rows[1].shape == (3, lm.d_model)
    assert bool((F.cosine_similarity(rows[0], rows[1], dim=-1) > 0.999).all())


@pytest.mark.skipif(not int8_available(torch.bfloat16, torch.device("cpu")), reason="no int8 matmul kernel")
def test_int8_decode_steps_stay_close_to_bfloat16_and_prompts_use_the_model_weights() -> None:
    lm = tiny_lm("llama")
    lm.model.to(torch.bfloat16)
    plain = FastModel(lm.model, HookPoint(1, "resid_post"))
    quick = FastModel(lm.model, HookPoint(1, "resid_post"), int8=True)
    assert quick.int8 and not plain.int8
    ids = prompt_ids(lm, PROMPT)[0].tolist()
    with torch.inference_mode():
        caches = [PrefixCache(plain), PrefixCache(quick)]
        prompt_logits = []
        for fast, cache in zip((plain, quick), caches, strict=True):
            cache.sync(ids)
            prompt_logits.append(fast.upper(cache))
        n = len(ids)
        for name in ("k", "v", "resid"):  # a prompt is read with the model's own weights
            assert torch.equal(getattr(caches[0], name)[..., :n, :], getattr(caches[1], name)[..., :n, :]), name
        assert F.cosine_similarity(prompt_logits[0], prompt_logits[1], dim=0) > 0.99
        step_logits = []
        for fast, cache in zip((plain, quick), caches, strict=True):
            cache.push(5)
            step_logits.append(fast.upper(cache, keep=True))
    assert not torch.equal(step_logits[0], step_logits[1])
    assert F.cosine_similarity(step_logits[0], step_logits[1], dim=0) > 0.99


def _bfloat16(make):
    def build() -> LoadedModel:
        lm = make()
        lm.model.to(torch.bfloat16)
        return lm
    return build


@pytest.mark.parametrize(("make", "int8"), [(lambda: tiny_lm("llama"), False), (_qwen2, False),
                                            (_bfloat16(_qwen2), True), (_four_bit_llama, True)],
                         ids=["float32", "qwen2-biases", "int8", "four-bit"])
@pytest.mark.parametrize("span", ["fused", "matmuls"])
def test_a_scripted_decode_step_computes_what_the_blocks_do_to_the_last_bit(make, int8, span, monkeypatch) -> None:
    if span == "matmuls":
        monkeypatch.setattr(fast_model, "SDPA_SPAN", 8)  # attention over longer spans as two matmuls
    lm = make()
    fast = FastModel(lm.model, HookPoint(1, "resid_post"), int8=int8)
    assert fast.scripted is not None
    ids = prompt_ids(lm, PROMPT)[0].tolist()
    steered = Engine(lm, _sae()).plan([Intervention("add", 3, strength=4.0)])
    runs = []
    scripted = fast.scripted
    calls: list[int] = []
    fast.block = lambda *a: calls.append(a[0]) or FastModel.block(fast, *a)  # type: ignore[method-assign]
    for script in (scripted, None):
        fast.scripted = script
        calls.clear()
        cache = PrefixCache(fast)
        with torch.inference_mode():
            cache.sync(ids)
            logits = [fast.upper(cache, steered)]
            for token in (5, 40, 77, 9):
                cache.push(token)
                logits.append(fast.upper(cache, steered, keep=True))
            # the server's continuation: one row of a batch, each token a step
            batch = BatchCache(fast, 1, 128)
            batch.load(0, cache)
            rows = RowPlans(1, fast.d_model, None, fast.device)
            logits += [batch_step(fast, batch, torch.tensor([t]), rows, span=int(batch.lengths[0]) + 1)
                       for t in (11, 12)]
        runs.append((logits, cache, batch))
        # with the script, only the prompt's pass runs block by block
        assert len(calls) == fast.n_layers * (1 if script is not None else 1 + 4 + 2)
    (first, cache_a, batch_a), (second, cache_b, batch_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    n = len(cache_a.ids)
    for name in ("k", "v"):
        assert torch.equal(getattr(cache_a, name)[:, :, :n], getattr(cache_b, name)[:, :, :n])
        assert torch.equal(getattr(batch_a, name), getattr(batch_b, name))


def test_models_the_scripted_step_does_not_cover_decode_block_by_block() -> None:
    assert FastModel(tiny_lm("gpt2").model, HookPoint(1, "resid_post")).scripted is None
