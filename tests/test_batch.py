"""Batched steered greedy decoding equals one request at a time; the clean re-reading measures what it says."""

from __future__ import annotations

import math

import pytest
import torch

from steering.config import SamplingConfig
from steering.evaluation.continuations import distinct_2, greedy_batch, human_nll, reread
from steering.runtime.decode import decode_token_ids
from steering.runtime.interventions import Intervention, SteeringHook, compile_plan
from tests.test_steering import orthonormal_sae

PROMPTS = ["The cat sat on the", "Rain", "A long time ago, in a harbour town by the sea,"]


def _ids(lm, text: str) -> list[int]:
    return list(lm.tokenizer(text)["input_ids"])


def _one(lm, ids: list[int], edit, point, positions: str) -> list[int]:
    sampling = SamplingConfig(max_tokens=10, steer_positions=positions)  # type: ignore[arg-type]
    out = list(decode_token_ids(lm, torch.tensor([ids]), sampling, steering=edit, hook=point))
    return [t for t in out if t not in lm.eos_token_ids]


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_batch_equals_one_request_at_a_time(lm, positions: str) -> None:
    sae = orthonormal_sae(d_in=lm.d_model, layer=1)
    steering = [None, [Intervention("add", 3, strength=6.0)], [Intervention("clamp", 5, value=4.0)]]
    plans = [None if s is None else compile_plan(s, sae, lm.d_model, fallback_scale=3.0) for s in steering]
    prompts = [_ids(lm, p) for p in PROMPTS]
    batched = greedy_batch(lm, prompts, 10, plans=plans, hook=sae.hook, steer_positions=positions)
    alone = [_one(lm, p, None if plan is None else SteeringHook.from_plan(plan), sae.hook, positions)
             for p, plan in zip(prompts, plans, strict=True)]
    assert batched == alone
    plain = greedy_batch(lm, prompts, 10)
    assert plain[0] == batched[0]  # the unsteered row is untouched by its neighbours' steering
    assert plain[1] != batched[1] or plain[2] != batched[2]


def test_reread_measures_the_feature_and_the_likelihood(llama) -> None:
    sae = orthonormal_sae(d_in=llama.d_model)
    prompt, continuation = _ids(llama, "The cat sat"), _ids(llama, " on the mat")
    (row,) = reread(llama, sae, [prompt], [continuation], [4])
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logits = llama.model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    expected = -logp.gather(1, torch.tensor(continuation)[:, None]).mean()
    assert math.isclose(row.nll, float(expected), rel_tol=1e-4)
    from steering.runtime.hooks import capture_residual

    resid = capture_residual(llama.model, llama.blocks, sae.hook, ids)[0, len(prompt):]
    fires = (sae.encode(resid)[:, 4] > 0).float().mean()
    assert math.isclose(row.concept, float(fires), abs_tol=1e-6)
    assert torch.allclose(row.residual, resid.mean(0), atol=1e-5)
    empty, unlabelled = reread(llama, sae, [prompt, prompt], [[], continuation], [4, None])
    assert math.isnan(empty.nll) and empty.concept == 0.0
    assert unlabelled.concept == 0.0 and math.isclose(unlabelled.nll, row.nll, rel_tol=1e-4)


def test_human_nll_and_distinct_2(llama) -> None:
    stream = torch.tensor(_ids(llama, "The morning was grey and cold. Rain had fallen all night. " * 4))
    value = human_nll(llama, stream, spans=4, prefix=8, length=8)
    assert 0 < value < 20
    with pytest.raises(ValueError, match="at least"):
        human_nll(llama, stream[:10], prefix=8, length=8)
    assert distinct_2([1, 2, 3, 4]) == 1.0
    assert distinct_2([1, 2, 1, 2, 1, 2]) == 0.4
    assert distinct_2([7]) == 1.0


def test_word_lists_are_runs_of_content_words_without_the_words_that_make_a_sentence() -> None:
    from steering.evaluation.continuations import word_list

    assert word_list("and the cattle.eddies, and sheep in a horse to cow goat calf lamb chicken hen pi")
    assert word_list(" cooking tabletop  food cook-ftenc dish dinner pasta dish salad")
    assert not word_list("I'm on a ship in the Caribbean. It's called the MV LASER. We're sailing to Newhaven")
    assert not word_list("then the old stone bridge fell")  # four in a row: prose does that
    assert not word_list("cow, goat, calf, lamb and chicken")  # punctuation and a function word hold it together
    assert not word_list("")
