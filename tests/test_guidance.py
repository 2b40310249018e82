"""Guided decoding (`steering.runtime.guidance`): amplified features carried by choosing among the most likely next
tokens those on which the SAE reads the feature, suppressed ones avoided, easing off once the feature is there; one
policy on the single-sequence fast path and in batched rows."""

from __future__ import annotations

import pytest
import torch

from steering.config import Guidance, SamplingConfig
from steering.engine import Engine
from steering.fast.batched import Batcher, Request
from steering.fast.cache import PrefixCache
from steering.fast.decode import fast_token_ids
from steering.runtime.decode import prompt_ids
from steering.runtime.guidance import Guided, joining
from steering.runtime.hooks import capture_residual
from steering.runtime.interventions import Intervention, compile_plan
from steering.sae.autoencoder import SAE, HookPoint
from steering.testing import ByteTokenizer, tiny_lm

PROMPTS = ["The lighthouse keeper climbed the stairs", "Rain", "Once upon a time in a small town"]


def sae_on(layer: int = 1, d_sae: int = 48) -> SAE:
    g = torch.Generator().manual_seed(11)
    sae = SAE(64, d_sae, "standard", hook=HookPoint(layer, "resid_post"))
    sae.W_enc.data = torch.randn(64, d_sae, generator=g) * 0.3
    sae.W_dec.data = torch.randn(d_sae, 64, generator=g) * 0.3
    sae.set_feature_stats(max_act=torch.full((d_sae,), 3.0))
    return sae


def engine_with_sae() -> Engine:
    """The tiny model and an SAE whose every feature fires on about a fifth of plain text's tokens."""
    engine = Engine(tiny_lm("llama"), sae_on())
    sae = engine.sae
    assert sae is not None
    pre = sae.pre_acts(engine.residual(" ".join(PROMPTS) * 3)[1:])
    sae.b_enc.data -= pre.quantile(0.8, dim=0)
    return engine


def fired_share(engine: Engine, prompt: str, tokens: list[int], feature: int) -> float:
    """The clean model's reading: on which share of `tokens` (after `prompt`) the SAE's `feature` fires."""
    assert engine.sae is not None and engine.sae.hook is not None
    ids = prompt_ids(engine.lm, prompt)[0].tolist()
    with torch.inference_mode():
        h = capture_residual(engine.lm.model, engine.lm.blocks, engine.sae.hook, torch.tensor([ids + tokens]))[0]
    acts = engine.sae.encode(h[len(ids):].to(engine.sae.dtype))[:, feature]
    return float((acts > 0).float().mean())


def alone(engine: Engine, prompt: str, steering, sampling: SamplingConfig) -> list[int]:
    assert engine.fast is not None
    return list(fast_token_ids(engine.fast, PrefixCache(engine.fast), prompt_ids(engine.lm, prompt)[0].tolist(),
                               sampling, set(), plan=engine.plan(steering), joins=engine.joins))


def quiet_feature(engine: Engine) -> int:
    """A feature that fires on some tokens of plain text but not on most."""
    assert engine.sae is not None
    codes = engine.sae.encode(engine.residual(" ".join(PROMPTS) * 3)[1:])
    rate = (codes > 0).float().mean(0)
    return int(((rate - 0.15).abs() + (rate == 0).float()).argmin())


PENALTY = 1.3
"""The tiny random model repeats itself without a repetition penalty."""


def test_guidance_carries_the_feature_more_than_the_same_vector_alone() -> None:
    engine = engine_with_sae()
    f = quiet_feature(engine)
    steering = [Intervention("add", f, strength=0.2)]
    shares = {}
    for name, guidance in (("vector", None), ("guided", Guidance(candidates=8, bonus=8.0, eased_bonus=8.0,
                                                                vector_share=1.0, enough=1.0))):
        sampling = SamplingConfig(max_tokens=16, stop_at_eos=False, guidance=guidance, repetition_penalty=PENALTY)
        shares[name] = sum(fired_share(engine, p, alone(engine, p, steering, sampling), f) for p in PROMPTS)
    assert shares["guided"] > shares["vector"] + 0.5


def test_suppression_avoids_the_feature() -> None:
    engine = engine_with_sae()
    f = quiet_feature(engine)
    plain = SamplingConfig(max_tokens=16, stop_at_eos=False, guidance=None, repetition_penalty=PENALTY)
    base = sum(fired_share(engine, p, alone(engine, p, [], plain), f) for p in PROMPTS)
    guided = SamplingConfig(max_tokens=16, stop_at_eos=False, guidance=Guidance(candidates=8, vector_share=0.0),
                            repetition_penalty=PENALTY)
    suppressed = sum(fired_share(engine, p, alone(engine, p, [Intervention("add", f, strength=-1.0)], guided), f)
                     for p in PROMPTS)
    assert base > 0 and suppressed < base / 2


def test_with_no_bonus_and_the_whole_vector_guidance_decodes_what_the_vector_alone_does() -> None:
    """The candidates' pass and the upper-blocks-only step give the plain step's tokens."""
    engine = engine_with_sae()
    steering = [Intervention("add", 5, strength=1.0), Intervention("clamp", 9, value=2.0)]
    flat = Guidance(candidates=4, bonus=0.0, eased_bonus=0.0, vector_share=1.0, eased_vector=1.0)
    for prompt in PROMPTS:
        plain = alone(engine, prompt, steering, SamplingConfig(max_tokens=14, stop_at_eos=False, guidance=None))
        assert alone(engine, prompt, steering, SamplingConfig(max_tokens=14, stop_at_eos=False,
                                                               guidance=flat)) == plain


@pytest.mark.parametrize("rows", [1, 3])
def test_batched_rows_are_guided_as_alone_beside_unguided_ones(rows: int) -> None:
    engine = engine_with_sae()
    assert engine.fast is not None
    f = quiet_feature(engine)
    sampling = SamplingConfig(max_tokens=12, stop_at_eos=False, guidance=Guidance(candidates=4, bonus=5.0),
                              repetition_penalty=PENALTY)
    sets = [[Intervention("add", f, strength=0.5)], [], [Intervention("add", f + 1, strength=-1.0),
                                                         Intervention("ablate", 3)]]
    batcher = Batcher(engine.fast, engine.sae, set(), engine.lm.tokenizer, rows=rows)
    requests = [Request(prompt_ids(engine.lm, p)[0].tolist(), sampling, engine.plan(s))
                for p, s in zip(PROMPTS, sets, strict=True)]
    batcher.run(requests)
    assert [r.tokens for r in requests] == [alone(engine, p, s, sampling) for p, s in zip(PROMPTS, sets, strict=True)]
    assert not batcher.busy and batcher.cache.rows == 1


def test_the_guide_eases_off_once_the_feature_fired_enough() -> None:
    sae = sae_on()
    plan = compile_plan([Intervention("add", 4, strength=2.0), Intervention("add", 7, strength=-1.0)], sae, 64)
    guide = Guided(plan, Guidance(bonus=6.0, eased_bonus=1.0, enough=0.5, vector_share=0.75, eased_vector=0.5))
    full = plan.guides[0].vector + plan.guides[1].vector
    torch.testing.assert_close(guide.current().vector, 0.75 * full)
    fires_4 = torch.zeros(48)
    fires_4[4] = 1.0
    assert not guide.observe(10, torch.zeros(48))  # steps 1: the feature not there yet
    assert guide.bonuses().tolist() == [6.0, -6.0]
    assert guide.observe(11, fires_4)  # 1 of 2: enough, eased
    assert guide.bonuses().tolist() == [1.0, -6.0]  # a suppressed feature never eases
    torch.testing.assert_close(guide.current().vector, 0.75 * 0.5 * plan.guides[0].vector + 0.75 * plan.guides[1].vector)
    assert guide.observe(12, torch.zeros(48))  # 1 of 3: under enough again
    assert guide.bonuses().tolist() == [6.0, -6.0]


def test_choose_prefers_a_likely_candidate_the_feature_fires_on() -> None:
    sae = sae_on()
    guide = Guided(compile_plan([Intervention("add", 2, strength=1.0)], sae, 64), Guidance(bonus=3.0))
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    candidates = torch.tensor([0, 1, 2, 3])
    codes = torch.zeros(4, 48)
    codes[1, 2] = codes[2, 2] = 1.0
    greedy = SamplingConfig(guidance=Guidance(bonus=3.0))
    assert guide.choose(logits, candidates, codes, greedy, None) == 1  # 1 nat worse, 3 nats of bonus
    codes[1, 2] = 0.0
    assert guide.choose(logits, candidates, codes, greedy, None) == 0  # 5 nats worse is too far


def test_a_candidate_repeating_a_token_just_taken_earns_no_bonus_but_a_suppressed_feature_still_costs() -> None:
    sae = sae_on()
    plan = compile_plan([Intervention("add", 2, strength=1.0), Intervention("add", 5, strength=-1.0)], sae, 64)
    greedy = SamplingConfig(guidance=Guidance(bonus=3.0, eased_bonus=3.0, repeats=2))
    guide = Guided(plan, greedy.guidance)  # type: ignore[arg-type]
    logits = torch.tensor([5.0, 4.0, 0.0, -1.0])
    candidates = torch.tensor([0, 1, 2, 3])
    codes = torch.zeros(4, 48)
    codes[1, 2] = 1.0  # the amplified feature fires on token 1
    assert guide.choose(logits, candidates, codes, greedy, None) == 1
    guide.observe(1, codes[1])
    assert guide.choose(logits, candidates, codes, greedy, None) == 0  # token 1 again is a loop: no bonus
    guide.observe(0, codes[0])
    guide.observe(3, codes[3])
    assert guide.choose(logits, candidates, codes, greedy, None) == 1  # two tokens later it counts again
    guide.observe(0, codes[0])
    suppressed = torch.zeros(4, 48)
    suppressed[0, 5] = 1.0  # the suppressed feature fires on token 0, just taken: it still costs
    assert guide.choose(logits, candidates, suppressed, greedy, None) == 1
    joined = Guided(plan, greedy.guidance, joins=lambda token: token == 1)  # type: ignore[arg-type]
    joined.observe(1, codes[1])
    assert joined.choose(logits, candidates, codes, greedy, None) == 1  # a function word again is no loop
    loose = Guided(plan, Guidance(bonus=3.0, eased_bonus=3.0, repeats=0))
    loose.observe(1, codes[1])
    assert loose.choose(logits, candidates, codes, SamplingConfig(guidance=loose.guidance),
                        None) == 1  # repeats 0: the bonus as before


def test_joining_tokens_are_whitespace_punctuation_and_function_words() -> None:
    tokenizer = ByteTokenizer()
    joins = joining(tokenizer)
    ids = {text: tokenizer(text)["input_ids"][0] for text in ("a", "I", " ", ",", "\n", "x", "7")}
    assert [joins(ids[t]) for t in ("a", "I", " ", ",", "\n")] == [True] * 5
    assert not joins(ids["x"]) and not joins(ids["7"])
