"""The CUDA paths (bf16 model, fp32 SAE, steering vectors moved to the GPU). Skipped where torch sees no GPU."""

from __future__ import annotations

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.runtime.decode import decode_token_ids, prompt_ids
from steering.runtime.interventions import Intervention
from steering.runtime.models import from_modules
from steering.sae.autoencoder import SAE, HookPoint

from .conftest import ByteTokenizer, _llama

pytestmark = pytest.mark.cuda


@pytest.fixture
def cuda_lm():
    torch.manual_seed(1234)
    model = _llama().to("cuda", torch.bfloat16)
    return from_modules(model, ByteTokenizer(), name="tiny-llama-cuda")


def _sae(layer: int = 2) -> SAE:
    sae = SAE(64, 128, "topk", k=8, hook=HookPoint(layer, "resid_post"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.W_dec.data.normal_(0, 0.1)
    return sae


def test_greedy_on_cuda_equals_transformers_generate(cuda_lm) -> None:
    ids = prompt_ids(cuda_lm, "Once upon a time")
    ours = list(decode_token_ids(cuda_lm, ids, SamplingConfig(max_tokens=12, stop_at_eos=False)))
    with torch.no_grad():
        hf = cuda_lm.model.generate(ids.cuda(), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == hf[0, ids.shape[1]:].tolist()


def test_annotate_and_steer_on_cuda(cuda_lm) -> None:
    engine = Engine(cuda_lm, _sae())
    assert engine.sae is not None and engine.sae.device.type == "cuda"
    ann = engine.annotate("A short text about rain.\n\nAnd one about the sea.")
    assert len(ann.paragraphs) == 2
    sampling = SamplingConfig(max_tokens=8, stop_at_eos=False, temperature=0.8, seed=1)
    steering = [Intervention("add", 3, strength=4.0), Intervention("clamp", 5, value=2.0),
                Intervention("vector", vector=torch.randn(64), strength=1.0)]
    text = "".join(engine.generate("Rain", steering, sampling))
    assert text == "".join(engine.generate("Rain", steering, sampling))  # seeded sampling is reproducible on GPU
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in cuda_lm.blocks)
    explanation = engine.explain(3)
    assert len(explanation.lens.promoted) == 10


def test_graph_batch_decoding_equals_single_eager_requests(cuda_lm) -> None:
    from steering.fast.batched import Batcher, Request
    from steering.fast.cache import PrefixCache
    from steering.fast.decode import fast_token_ids

    engine = Engine(cuda_lm, _sae())
    assert engine.caches is not None
    fast = engine.caches.fast
    sampling = SamplingConfig(max_tokens=16, stop_at_eos=False)
    prompts = ["Once upon a time", "Rain", "The sea was calm that night", "She said"]
    steerings = [[], [Intervention("add", 3, strength=4.0)], [Intervention("clamp", 5, value=2.0)],
                 [Intervention("vector", vector=torch.randn(64), strength=1.0)]]
    alone = [list(fast_token_ids(fast, PrefixCache(fast), prompt_ids(cuda_lm, p)[0].tolist(), sampling, set(),
                                 plan=engine.plan(s), joins=engine.joins))
             for p, s in zip(prompts, steerings, strict=True)]
    batcher = Batcher(fast, engine.sae, set(), cuda_lm.tokenizer, rows=4)
    assert batcher.graphs
    requests = [Request(prompt_ids(cuda_lm, p)[0].tolist(), sampling, engine.plan(s))
                for p, s in zip(prompts, steerings, strict=True)]
    batcher.run(requests)
    same = sum(r.tokens == a for r, a in zip(requests, alone, strict=True))
    assert same >= 3, [(r.tokens, a) for r, a in zip(requests, alone, strict=True)]  # bf16 may flip a near tie
    assert batcher._graph is not None and set(batcher._graph._graphs) == {True}


def test_a_model_spread_over_gpu_and_cpu_equals_the_whole(tiny_model_dir, tmp_path) -> None:
    from .test_models_hooks import _spread_pair

    whole, spread_over, sampling = _spread_pair(tiny_model_dir, tmp_path, "0=450000,cpu=10000000", device="cuda")
    placed = set(spread_over.lm.model.hf_device_map.values())
    assert 0 in placed and "cpu" in placed
    steering = [Intervention("add", 3, strength=6.0), Intervention("clamp", 5, value=3.0)]
    assert "".join(spread_over.generate("Once upon", steering, sampling)) == \
        "".join(whole.generate("Once upon", steering, sampling))
