"""One steering kernel: every mode of the table goes through the transformers hook, the fast path's prefix pass and a
batched decode step, and each path leaves the same residual after the hook point."""

from __future__ import annotations

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.fast.batched import BatchCache, Batcher, Request, batch_step
from steering.fast.cache import PrefixCache
from steering.fast.decode import fast_token_ids
from steering.fast.model import FastModel, View
from steering.runtime.decode import prompt_ids
from steering.runtime.hooks import residual_hook
from steering.runtime.interventions import (
    FEATURE_MODES,
    MODE_TABLE,
    MODES,
    SPEC_HELP,
    Intervention,
    RowPlans,
    SteeringHook,
    compile_plan,
    parse_steer,
)
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE, HookPoint
from steering.testing import tiny_lm

D, WIDTH, LAYER = 64, 32, 1
PROMPT = "The harbour lights came on one by one"


def stats_sae(normalize: str = "none") -> SAE:
    """A ReLU SAE with the statistics every mode reads (max_act, DiffMean directions for even features only)."""
    g = torch.Generator().manual_seed(3)
    sae = SAE(D, WIDTH, "standard", hook=HookPoint(LAYER, "resid_post"), normalize_activations=normalize)
    sae.W_enc.data = torch.randn(D, WIDTH, generator=g) * 0.3
    sae.W_dec.data = torch.randn(WIDTH, D, generator=g) * 0.2
    sae.b_enc.data.fill_(0.05)
    diffmean = torch.randn(WIDTH, D, generator=g)
    diffmean[1::2] = 0  # odd features never fired: `add` falls back to the decoder row
    sae.set_feature_stats(max_act=torch.rand(WIDTH, generator=g) * 3 + 1, diffmean=diffmean)
    return sae


def example(mode: str) -> list[Intervention]:
    """A steering set of `mode` that changes the residual."""
    if mode == "vector":
        return [Intervention("vector", vector=torch.randn(D, generator=torch.Generator().manual_seed(8)),
                             strength=1.5)]
    return [{"add": Intervention("add", 4, strength=2.0), "row": Intervention("row", 6, strength=-3.0),
             "clamp": Intervention("clamp", 9, value=5.0), "ablate": Intervention("ablate", 2)}[mode]]


SETS = {**{m: example(m) for m in MODES},
        "add without DiffMean": [Intervention("add", 5, strength=2.5)],
        "mixed": [*example("add"), *example("clamp"), *example("vector")]}


def test_every_mode_has_a_case_here() -> None:
    assert set(MODES) <= set(SETS), "a new steering mode needs its example set in this test"


class Capture:
    """Records the residual the first block of each run of a FastModel's blocks receives (the lower ones, then the
    upper ones from the hook point), by block."""

    def __init__(self, fast: FastModel) -> None:
        self.inputs: dict[int, torch.Tensor] = {}
        inner = fast.blocks

        def recording(x: torch.Tensor, view: View, first: int, last: int) -> torch.Tensor:
            self.inputs[first] = x.detach().clone()
            return inner(x, view, first, last)

        fast.blocks = recording  # type: ignore[method-assign]


def slow_residual(lm: LoadedModel, ids: list[int], hook: SteeringHook | None, sae: SAE) -> torch.Tensor:
    """The residual after the hook point `[seq, d]` through the transformers forward with the hook."""
    seen: list[torch.Tensor] = []
    nxt = HookPoint(LAYER + 1, "resid_pre")

    def grab(h: torch.Tensor) -> None:
        seen.append(h[0].detach().clone())

    assert sae.hook is not None
    with torch.inference_mode(), residual_hook(lm.blocks, nxt, grab):
        if hook is None:
            lm.model(input_ids=torch.tensor([ids]))
        else:
            with residual_hook(lm.blocks, sae.hook, hook):
                lm.model(input_ids=torch.tensor([ids]))
    return seen[0]


@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale"])
@pytest.mark.parametrize("name", list(SETS))
def test_the_three_paths_leave_the_same_residual(name: str, normalize: str) -> None:
    lm = tiny_lm("llama")
    sae = stats_sae(normalize)
    engine = Engine(lm, sae)
    fast = engine.fast
    assert fast is not None and fast.split == LAYER + 1
    plan = engine.plan(SETS[name])
    other = engine.plan(SETS["mixed"] if name != "mixed" else SETS["vector"])
    assert plan is not None and other is not None and not plan.empty
    ids = prompt_ids(lm, PROMPT)[0].tolist()
    token = 77
    # the transformers forward under the hook, over the prompt and one more token
    slow = slow_residual(lm, [*ids, token], SteeringHook.from_plan(plan), sae)
    plain = slow_residual(lm, [*ids, token], None, sae)
    assert not torch.allclose(slow, plain, atol=1e-3), "the steering must change the residual"
    # the fast path: the prompt in one pass, then the token as a decode step
    capture = Capture(fast)
    cache = PrefixCache(fast)
    with torch.inference_mode():
        cache.sync(ids)
        fast.upper(cache, plan)
        torch.testing.assert_close(capture.inputs[fast.split], slow[:-1], atol=1e-4, rtol=1e-4)
        cache.push(token)
        fast.upper(cache, plan, keep=True)
        torch.testing.assert_close(capture.inputs[fast.split], slow[-1:], atol=1e-4, rtol=1e-4)
        # a batched step: the same token in two rows under different plans
        rows = RowPlans(2, D, sae, fast.device)
        rows.set(0, plan)
        rows.set(1, other)
        batch = BatchCache(fast, 2, 512)
        prefix = PrefixCache(fast)
        prefix.sync(ids)
        fast.upper(prefix, plan)
        batch.load(0, prefix)
        batch.load(1, prefix)
        batch_step(fast, batch, torch.tensor([token, token]), rows, span=len(ids) + 1, clamps=rows.any_clamps,
                   scaled=rows.any_scaled)
        steered = capture.inputs[fast.split]
    torch.testing.assert_close(steered[0], slow[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steered[1], other(plain[-1:])[0], atol=1e-4, rtol=1e-4)


def test_per_token_normalised_steering_joins_a_batch_and_decodes_as_alone() -> None:
    lm = tiny_lm("llama")
    sae = stats_sae("constant_norm_rescale")
    engine = Engine(lm, sae)
    steering = [Intervention("add", 5, strength=4.0)]  # no DiffMean: added in the SAE's normalised units
    plan = engine.plan(steering)
    assert plan is not None and plan.scaled is not None
    sampling = SamplingConfig(max_tokens=10, stop_at_eos=False)
    request = engine.start(PROMPT, steering, sampling)
    assert request is not None, "every plan can be batched"
    while engine.batching:
        engine.step()
    fast = engine.fast
    assert fast is not None
    alone = list(fast_token_ids(fast, PrefixCache(fast), prompt_ids(lm, PROMPT)[0].tolist(), sampling, set(),
                                plan=plan, joins=engine.joins))
    assert request.tokens == alone
    assert alone != list(fast_token_ids(fast, PrefixCache(fast), prompt_ids(lm, PROMPT)[0].tolist(), sampling, set()))


def test_batcher_rows_steer_as_their_plans(llama) -> None:
    engine = Engine(llama, stats_sae())
    assert engine.fast is not None
    batcher = Batcher(engine.fast, engine.sae, set(), llama.tokenizer, rows=3)
    sampling = SamplingConfig(max_tokens=6, stop_at_eos=False)
    sets = [SETS["add"], SETS["ablate"], SETS["mixed"]]
    done = batcher.run([Request(prompt_ids(llama, PROMPT)[0].tolist(), sampling, engine.plan(s)) for s in sets])
    for request, steering in zip(done, sets, strict=True):
        assert request.tokens == list(fast_token_ids(engine.fast, PrefixCache(engine.fast), request.ids, sampling,
                                                     set(), plan=engine.plan(steering), joins=engine.joins))


@pytest.mark.parametrize("mode", FEATURE_MODES)
def test_each_feature_mode_reads_back_from_its_description_and_its_spec(mode: str) -> None:
    item = example(mode)[0]
    assert Intervention.from_dict(item.to_dict()) == item
    assert parse_steer(str(item)) == item
    assert item.describe("rain").startswith(f"{item.feature} (rain) ")
    assert MODE_TABLE[mode].spec_help in SPEC_HELP


def test_plan_keys_tell_steering_apart_and_none_is_none() -> None:
    sae = stats_sae()
    keys = {name: compile_plan(s, sae, D).key for name, s in SETS.items()}
    assert len(set(keys.values())) == len(keys)
    assert compile_plan([], sae, D).key is None
    assert compile_plan(SETS["add"], sae, D).key == compile_plan(example("add"), sae, D).key
