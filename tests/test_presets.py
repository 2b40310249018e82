"""Style presets in the engine: the "write more like this" vector of a passage against the rest of the document (or a
neutral paragraph), and its safetensors file, which refuses anything damaged."""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steering.engine import CALIBRATION_TEXT, Engine
from steering.runtime.hooks import capture_residual
from steering.runtime.presets import PresetError, load_vector, save_vector, style_vector
from steering.sae.autoencoder import HookPoint

HOOK = HookPoint(2, "resid_post")
DOC = ("The ledger showed nine invoices paid in March.\n\n"
       "Thunder rolled over the grey harbour and the rain came down in sheets.\n\n"
       "Payment terms remain thirty days from the date of issue.")


def test_the_vector_is_the_passage_mean_minus_the_rest_in_context(lm) -> None:
    start = DOC.index("Thunder")
    end = DOC.index("sheets.") + len("sheets.")
    made = style_vector(lm, HOOK, DOC, start, end, CALIBRATION_TEXT)
    enc = lm.tokenizer(DOC, return_offsets_mapping=True)
    resid = capture_residual(lm.model, lm.blocks, HOOK, torch.tensor([enc["input_ids"]]))[0].float()
    inside = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if i and start <= s < end and DOC[s:e].strip()]
    outside = [i for i, (s, e) in enumerate(enc["offset_mapping"])
               if i and not start <= s < end and e > s and DOC[s:e].strip()]
    assert made.reference == "document" and made.tokens == len(inside) and made.against == len(outside)
    torch.testing.assert_close(made.vector, resid[inside].mean(0) - resid[outside].mean(0), rtol=1e-4, atol=1e-4)


def test_a_whole_document_is_contrasted_with_the_neutral_paragraph(llama) -> None:
    made = style_vector(llama, HOOK, DOC, 0, len(DOC), CALIBRATION_TEXT)
    assert made.reference == "neutral" and made.against > 10
    assert made.vector.shape == (llama.d_model,) and bool(made.vector.any())


@pytest.mark.parametrize("start,end", [(0, 0), (4, 6), (0, 3), (0, 4)])
def test_a_selection_of_a_word_or_less_is_refused(llama, start: int, end: int) -> None:
    with pytest.raises(PresetError, match="Select at least 2 words"):
        style_vector(llama, HOOK, DOC, start, end, CALIBRATION_TEXT)


def test_a_selection_of_too_few_tokens_is_refused(llama) -> None:
    class Words:  # a tokenizer of whole words: "a b" is two tokens, and the first is never counted
        def __call__(self, text: str, return_offsets_mapping: bool = False, **_: object) -> dict:
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            return {"input_ids": [1 + i % 200 for i in range(len(spans))], "offset_mapping": spans}

    with pytest.raises(PresetError, match="Select a few more words"):
        style_vector(dataclasses.replace(llama, tokenizer=Words()), HOOK, "a b", 0, 3, CALIBRATION_TEXT)


def test_a_range_outside_the_text_is_refused(llama) -> None:
    with pytest.raises(PresetError, match="outside the text"):
        style_vector(llama, HOOK, DOC, 5, len(DOC) + 1, CALIBRATION_TEXT)


def test_engine_style_vector_reads_at_its_hook(llama) -> None:
    engine = Engine(llama, layer=1)
    made = engine.style_vector(DOC, 0, 40)
    torch.testing.assert_close(made.vector, style_vector(llama, engine.hook, DOC, 0, 40, CALIBRATION_TEXT).vector)


def test_vector_file_round_trip_leaves_no_temporary(tmp_path: Path) -> None:
    vector = torch.randn(64)
    path = tmp_path / "presets" / "0123456789abcdef.safetensors"
    save_vector(path, vector, model="tiny", hook="blocks.2.hook_resid_post")
    stored = load_vector(path)
    assert torch.equal(stored.vector, vector) and (stored.model, stored.hook) == ("tiny", "blocks.2.hook_resid_post")
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def damaged(path: Path, how: str) -> None:
    good = torch.randn(8)
    if how == "truncated":
        save_vector(path, good, model="m", hook="h")
        path.write_bytes(path.read_bytes()[:40])
    elif how == "pickle":
        path.write_bytes(pickle.dumps({"vector": good.tolist()}))
    elif how == "other tensors":
        save_file({"weights": good}, str(path))
    elif how == "not finite":
        save_vector(path, torch.tensor([1.0, float("nan")]), model="m", hook="h")
    elif how == "matrix":
        save_file({"vector": torch.randn(2, 4)}, str(path), metadata={"format": "tinymorph-style-vector/1",
                                                                      "d_model": "2"})


@pytest.mark.parametrize("how,message", [
    ("missing", "is missing"), ("truncated", "is damaged"), ("pickle", "is damaged"),
    ("other tensors", "not a tinymorph preset vector"), ("not finite", "not finite"), ("matrix", "not the vector"),
])
def test_a_damaged_vector_file_is_a_clear_error(tmp_path: Path, how: str, message: str) -> None:
    path = tmp_path / "p.safetensors"
    damaged(path, how)
    with pytest.raises(PresetError, match=message):
        load_vector(path)
