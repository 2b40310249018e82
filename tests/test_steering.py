"""Steering interventions: add moves toward promoted tokens, clamp/ablate act through the error term."""

from __future__ import annotations

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.errors import FeatureIndexError, SteeringSpecError
from steering.features.labels import logit_lens
from steering.runtime.decode import decode_token_ids, prompt_ids
from steering.runtime.hooks import residual_hook
from steering.runtime.interventions import Intervention, SteeringHook, parse_steer
from steering.sae.autoencoder import SAE, HookPoint


def orthonormal_sae(d_in: int = 64, d_sae: int = 16, layer: int = 3) -> SAE:
    """A ReLU SAE whose decoder rows are orthonormal and whose encoder is their transpose: encode is exact."""
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae))
    sae = SAE(d_in, d_sae, "standard", hook=HookPoint(layer, "resid_post"))
    sae.W_enc.data.copy_(q)
    sae.W_dec.data.copy_(q.T)
    return sae


def _next_token_probs(engine: Engine, prompt: str, steering=()) -> torch.Tensor:
    ids = prompt_ids(engine.lm, prompt)
    hook = engine.steering_hook(steering)
    with torch.no_grad():
        if hook is None:
            logits = engine.lm.model(input_ids=ids).logits[0, -1]
        else:
            with residual_hook(engine.lm.blocks, engine.hook, hook):
                logits = engine.lm.model(input_ids=ids).logits[0, -1]
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("layer", [1, 3])
def test_add_raises_the_probability_of_promoted_tokens(llama, layer: int) -> None:
    sae = orthonormal_sae(layer=layer)
    engine = Engine(llama, sae)
    feature = 5
    lens = logit_lens(llama, sae, feature, top=5)
    promoted = [llama.tokenizer(t.token)["input_ids"][0] for t in lens.promoted if t.token]
    suppressed = [llama.tokenizer(t.token)["input_ids"][0] for t in lens.suppressed if t.token]
    base = _next_token_probs(engine, "The cat sat on")
    steered = _next_token_probs(engine, "The cat sat on", [Intervention("add", feature, strength=8.0)])
    assert steered[promoted].sum() > base[promoted].sum()
    assert steered[suppressed].sum() < base[suppressed].sum()


def test_add_uses_max_act_and_unit_decoder_row(llama) -> None:
    sae = orthonormal_sae()
    sae.W_dec.data[2] *= 3.0  # not unit norm: add must normalise it
    sae.set_feature_stats(max_act=torch.arange(16, dtype=torch.float32) + 1.0)
    hook = SteeringHook([Intervention("add", 2, strength=0.5)], sae, 64, fallback_scale=None)
    h = torch.randn(1, 4, 64)
    out = hook(h)
    assert out is not None
    expected = h + 0.5 * 3.0 * sae.W_dec[2] / sae.W_dec[2].norm()
    torch.testing.assert_close(out, expected)


def test_add_without_statistics_uses_the_documented_fallback(llama) -> None:
    engine = Engine(llama, orthonormal_sae())
    scale = engine.fallback_scale()
    assert scale > 0
    assert "fallback" in engine.info().steering_scale
    hook = engine.steering_hook([Intervention("add", 4, strength=2.0)])
    h = torch.randn(1, 3, 64)
    torch.testing.assert_close(hook(h), h + 2.0 * scale * engine.sae.direction(4))


def test_clamp_sets_the_feature_through_the_error_term() -> None:
    sae = orthonormal_sae()
    h = torch.randn(2, 5, 64) + 4 * sae.W_dec[3]  # feature 3 active, so its activation is its pre-activation
    before = sae.encode(h)
    out = SteeringHook([Intervention("clamp", 3, value=7.5)], sae, 64, None)(h)
    after = sae.encode(out)
    torch.testing.assert_close(after[..., 3], torch.full_like(after[..., 3], 7.5))
    others = [i for i in range(16) if i != 3]
    torch.testing.assert_close(after[..., others], before[..., others])
    # the part of h the SAE does not explain is untouched
    torch.testing.assert_close(out - sae.reconstruct(out), h - sae.reconstruct(h), atol=1e-5, rtol=1e-5)


def test_ablate_zeroes_an_active_feature() -> None:
    sae = orthonormal_sae()
    h = torch.randn(1, 6, 64) + 3 * sae.W_dec[1]
    assert (sae.encode(h)[..., 1] > 0).all()
    out = SteeringHook([Intervention("ablate", 1)], sae, 64, None)(h)
    assert torch.allclose(sae.encode(out)[..., 1], torch.zeros(1, 6), atol=1e-5)


def test_clamp_to_the_current_value_changes_nothing(llama) -> None:
    sae = orthonormal_sae()
    engine = Engine(llama, sae)
    acts = sae.encode(engine.residual("The cat sat on the mat"))
    silent = int((acts.max(0).values == 0).nonzero()[0])
    ids = prompt_ids(llama, "The cat sat on the mat")
    sampling = SamplingConfig(max_tokens=8, stop_at_eos=False)
    hook = engine.steering_hook([Intervention("clamp", silent, value=0.0)])
    with torch.no_grad():
        plain = llama.model(input_ids=ids).logits
        with residual_hook(llama.blocks, engine.hook, hook):
            clamped = llama.model(input_ids=ids).logits
    torch.testing.assert_close(plain, clamped)
    assert list(decode_token_ids(llama, ids, sampling)) == list(
        decode_token_ids(llama, ids, sampling, steering=hook, hook=engine.hook))


def test_vector_mode_adds_the_raw_vector(llama) -> None:
    v = torch.randn(64)
    hook = SteeringHook([Intervention("vector", vector=v, strength=-1.5)], None, 64, None)
    h = torch.randn(1, 2, 64)
    torch.testing.assert_close(hook(h), h - 1.5 * v)


def test_interventions_combine(llama) -> None:
    sae = orthonormal_sae()
    sae.set_feature_stats(max_act=torch.ones(16))
    v = torch.randn(64)
    hook = SteeringHook([Intervention("add", 0, strength=2.0), Intervention("vector", vector=v)], sae, 64, None)
    h = torch.randn(1, 2, 64)
    torch.testing.assert_close(hook(h), h + 2.0 * sae.direction(0) + v)


@pytest.mark.parametrize(("positions", "steered_steps"), [("all", 4), ("prompt", 1), ("generated", 3)])
def test_steering_positions(llama, positions: str, steered_steps: int) -> None:
    v = torch.randn(64)
    hook = SteeringHook([Intervention("vector", vector=v)], None, 64, None)
    seen: list[bool] = []
    original = hook.__call__

    class Spy(SteeringHook):
        def __call__(self, h: torch.Tensor):
            seen.append(self.active)
            return original(h)

    hook.__class__ = Spy
    ids = prompt_ids(llama, "abc")
    sampling = SamplingConfig(max_tokens=4, stop_at_eos=False, steer_positions=positions)  # type: ignore[arg-type]
    list(decode_token_ids(llama, ids, sampling, steering=hook, hook=HookPoint(1, "resid_post")))
    assert sum(seen) == steered_steps and len(seen) == 4


def test_hooks_are_gone_after_cancel_or_failure(llama) -> None:
    engine = Engine(llama, orthonormal_sae())
    stream = engine.generate("abc", [Intervention("ablate", 2)], SamplingConfig(max_tokens=10, stop_at_eos=False))
    next(stream)
    stream.close()
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in llama.blocks)


def test_bad_steering_fails_before_any_work(llama) -> None:
    engine = Engine(llama, orthonormal_sae())
    with pytest.raises(FeatureIndexError, match="out of range"):
        engine.generate("abc", [Intervention("add", 16)])
    with pytest.raises(SteeringSpecError, match="size"):
        engine.generate("abc", [Intervention("vector", vector=torch.ones(5))])
    with pytest.raises(SteeringSpecError, match="needs an SAE"):
        Engine(llama).generate("abc", [Intervention("ablate", 1)])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("12=+4", Intervention("add", 12, strength=4.0)),
        ("12=-2.5", Intervention("add", 12, strength=-2.5)),
        ("7=3", Intervention("add", 7, strength=3.0)),
        ("7=clamp:1.5", Intervention("clamp", 7, value=1.5)),
        ("7 = off", Intervention("ablate", 7)),
        ("7=row:+2", Intervention("row", 7, strength=2.0)),
    ],
)
def test_parse_steer(spec: str, expected: Intervention) -> None:
    assert parse_steer(spec) == expected


@pytest.mark.parametrize("spec", ["", "12", "x=+4", "12=+", "12=clamp:", "12=banana", "-3=+1", "12=inf"])
def test_parse_steer_rejects_garbage(spec: str) -> None:
    with pytest.raises(SteeringSpecError):
        parse_steer(spec)


def test_contrast_vector_points_from_negative_to_positive(llama) -> None:
    engine = Engine(llama, layer=2)
    v = engine.contrast_vector("happy happy joy", "sad sad gloom")
    pos, neg = engine.residual("happy happy joy")[1:].mean(0), engine.residual("sad sad gloom")[1:].mean(0)
    torch.testing.assert_close(v, pos - neg)


def test_interventions_read_back_from_their_description() -> None:
    for original in (Intervention("add", 3, strength=-2.5), Intervention("clamp", 7, value=4.0),
                     Intervention("ablate", 0), Intervention("row", 5, strength=1.5)):
        assert Intervention.from_dict(original.to_dict()) == original
    assert Intervention.from_dict({"mode": "add", "feature": 2, "label": "rain"}) == Intervention("add", 2)
    for bad, message in (({"mode": "boost", "feature": 1}, "mode must be one of"),
                         ({"mode": "add", "feature": -1}, "feature must be a whole number >= 0"),
                         ({"mode": "add", "feature": True}, "feature must be a whole number"),
                         ({"mode": "clamp", "feature": 1, "value": "high"}, "value must be a finite number"),
                         ({"mode": "add", "feature": 1, "strength": float("inf")}, "strength must be a finite"),
                         ({"mode": "vector", "strength": 2.0}, "needs the vector")):
        with pytest.raises(SteeringSpecError, match=message):
            Intervention.from_dict(bad)


def test_interventions_in_words_and_as_specs() -> None:
    cases = [(Intervention("add", 12, strength=4.0), "12 (rain) +4", "12=+4"),
             (Intervention("clamp", 12, value=2.0), "12 (rain) clamped at 2", "12=clamp:2"),
             (Intervention("ablate", 12), "12 (rain) off", "12=off"),
             (Intervention("row", 12, strength=2.0), "12 (rain) +2 along its decoder row", "12=row:+2")]
    for intervention, words, spec in cases:
        assert intervention.describe("rain") == words
        assert str(intervention) == spec and parse_steer(spec) == intervention
    assert Intervention("add", 3, strength=-1.5).describe() == "3 -1.5"


def test_add_follows_diffmean_times_its_calibrated_multiple_and_row_keeps_the_seeds_rule() -> None:
    from steering.runtime.interventions import DIFFMEAN_MULTIPLE

    sae = orthonormal_sae()
    diffmean = torch.randn(16, 64)
    diffmean[5] = 0.0  # a feature that never fired: no DiffMean direction
    sae.set_feature_stats(max_act=torch.full((16,), 2.0), diffmean=diffmean)
    h = torch.randn(1, 3, 64)

    def added(*items: Intervention) -> torch.Tensor:
        out = SteeringHook(list(items), sae, 64, None)(h)
        assert out is not None
        return out - h

    torch.testing.assert_close(added(Intervention("add", 2, strength=2.0)), 2.0 * DIFFMEAN_MULTIPLE * diffmean[2]
                               .expand(1, 3, 64))
    row = 2.0 * 2.0 * sae.direction(2)
    torch.testing.assert_close(added(Intervention("row", 2, strength=2.0)), row.expand(1, 3, 64))
    torch.testing.assert_close(added(Intervention("add", 5, strength=1.0)), (2.0 * sae.direction(5)).expand(1, 3, 64))
    steer_scale = torch.zeros(16)
    steer_scale[2] = 0.5
    sae.set_feature_stats(max_act=torch.full((16,), 2.0), diffmean=diffmean, steer_scale=steer_scale)
    torch.testing.assert_close(added(Intervention("add", 2, strength=2.0)), (0.5 * 2.0 * diffmean[2]).expand(1, 3, 64))
    torch.testing.assert_close(added(Intervention("add", 3, strength=1.0)), (DIFFMEAN_MULTIPLE * diffmean[3])
                               .expand(1, 3, 64))
    torch.testing.assert_close(added(Intervention("row", 2, strength=2.0)), row.expand(1, 3, 64))


def test_calibrated_multiple_scales_the_row_rule_without_diffmean(llama) -> None:
    sae = orthonormal_sae()
    steer_scale = torch.zeros(16)
    steer_scale[4] = 3.0
    sae.set_feature_stats(max_act=torch.full((16,), 2.0), steer_scale=steer_scale)
    engine = Engine(llama, sae)
    h = torch.randn(1, 2, 64)
    torch.testing.assert_close(engine.steering_hook([Intervention("add", 4)])(h), h + 6.0 * sae.direction(4))
    torch.testing.assert_close(engine.steering_hook([Intervention("row", 4)])(h), h + 2.0 * sae.direction(4))
    assert "calibrated multiple for 1 features" in engine.info().steering_scale
    sae.set_feature_stats(max_act=torch.full((16,), 2.0), diffmean=torch.randn(16, 64))
    assert "DiffMean" in engine.info().steering_scale
