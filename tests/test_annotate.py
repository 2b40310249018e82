"""Annotation: offsets, per-token top-k, paragraph aggregates, the first token left out, long documents."""

from __future__ import annotations

import torch

from steering.engine import Engine
from steering.features.annotate import annotate, encode_document
from steering.runtime.hooks import capture_residual
from steering.sae.autoencoder import SAE, HookPoint
from steering.spans import paragraphs


def random_sae(d_in: int = 64, d_sae: int = 96, layer: int = 2) -> SAE:
    sae = SAE(d_in, d_sae, "standard", hook=HookPoint(layer, "resid_pre"))
    sae.W_enc.data.normal_(0, 0.3)
    sae.W_dec.data.normal_(0, 0.1)
    sae.b_enc.data.fill_(-0.1)
    return sae


TEXT = "The rain fell all night. 🌧️ 雨が降る\n\nIn the morning the streets were quiet.\n  \nEnd."


def test_empty_text_gives_an_empty_annotation(llama) -> None:
    for text in ("", "  \n\n "):
        ann = annotate(llama, random_sae(), text)
        assert ann.tokens == () and ann.paragraphs == ()


def test_paragraph_spans() -> None:
    first_end = TEXT.index("\n\n")
    second = TEXT.index("In the")
    assert paragraphs(TEXT) == [(0, first_end), (second, TEXT.index("quiet.") + 6), (len(TEXT) - 4, len(TEXT))]
    assert paragraphs("one\ntwo") == [(0, 7)]
    assert paragraphs("\n\n  x  \n\n") == [(4, 5)]


def test_tokens_carry_offsets_and_sorted_top_k(llama) -> None:
    sae = random_sae()
    ann = annotate(llama, sae, TEXT, top_k=3)
    assert ann.hook == "blocks.2.hook_resid_pre"
    for tok in ann.tokens:
        assert tok.text == TEXT[tok.start : tok.end]
        acts = [f.activation for f in tok.features]
        assert acts == sorted(acts, reverse=True) and len(acts) <= 3 and all(a > 0 for a in acts)
    assert ann.tokens[0].features == ()  # the first position is never shown
    assert any(tok.features for tok in ann.tokens)


def test_annotation_matches_the_sae_on_the_residual(llama) -> None:
    sae = random_sae()
    ids, _offsets, feats = encode_document(llama, sae, TEXT)
    resid = capture_residual(llama.model, llama.blocks, sae.hook, torch.tensor([ids]))[0]
    expected = sae.encode(resid)
    expected[0] = 0
    torch.testing.assert_close(feats, expected)
    ann = annotate(llama, sae, TEXT, top_k=2, paragraph_top=4)
    tok = ann.tokens[5]
    top = expected[5].topk(2)
    assert [f.feature for f in tok.features] == [i for v, i in zip(top.values, top.indices, strict=True) if v > 0]
    # paragraph aggregates: summed and max activation over the paragraph's tokens
    para = ann.paragraphs[1]
    mask = torch.tensor([para.start <= t.end - 1 < para.end for t in ann.tokens])
    for f in para.features:
        torch.testing.assert_close(f.total, float(expected[mask, f.feature].sum()), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(f.max, float(expected[mask, f.feature].max()), rtol=1e-5, atol=1e-5)
    totals = [f.total for f in para.features]
    assert totals == sorted(totals, reverse=True) and len(totals) <= 4


def test_long_documents_run_in_windows(llama) -> None:
    sae = random_sae()
    text = "word " * 300
    ids, _o, full = encode_document(llama, sae, text, window=4096)
    _i, _o2, windowed = encode_document(llama, sae, text, window=256, context=64)
    assert full.shape == windowed.shape == (len(ids), sae.d_sae)
    # with 64 tokens of left context the windowed features stay close to the full-context ones
    assert torch.nn.functional.cosine_similarity(full[300:], windowed[300:], dim=-1).mean() > 0.9


def test_engine_annotate_and_to_dict(llama) -> None:
    engine = Engine(llama, random_sae())
    data = engine.annotate(TEXT).to_dict()
    assert data["paragraphs"][0]["text"] == TEXT[: TEXT.index("\n")]
    assert {"index", "token_id", "text", "start", "end", "features"} <= set(data["tokens"][1])
