"""Annotation: offsets, per-token top-k, paragraph aggregates, the first token left out, long documents."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.engine import Engine
from steering.features.annotate import annotate, annotation_of, encode_document
from steering.features.ranking import Specificity, rank_dense
from steering.runtime.hooks import capture_residual
from steering.sae.autoencoder import SAE, HookPoint
from steering.sae.codes import SparseCodes
from steering.spans import paragraphs, split_spans


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


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), granularity=st.sampled_from(["paragraph", "sentence", "line"]))
def test_annotation_from_nonzeros_equals_the_dense_reference(seed: int, granularity: str) -> None:
    """`annotation_of` reads the codes as nonzeros: per token, per span and with watched features it gives what
    the dense codes give by the definitions (top k per token; sum, peak and count over a span's tokens)."""
    g = torch.Generator().manual_seed(seed)
    words = ["rain", "fell.", "The", "harbour", "slept\n", "boats\n\n", "Night", "came."]
    picks = torch.randint(len(words), (int(torch.randint(1, 60, (1,), generator=g)),), generator=g).tolist()
    text, offsets = "", []
    for w in picks:
        if text and not text.endswith("\n"):
            text += " "
        word = words[w].rstrip("\n")
        offsets.append((len(text), len(text) + len(word)))
        if word != words[w]:  # the line break is a token of its own, between spans
            offsets.append((len(text) + len(word), len(text) + len(words[w])))
        text += words[w]
    sae = random_sae(d_sae=48)
    dense = torch.rand(len(offsets), 48, generator=g)
    dense[dense < 0.8] = 0  # sparse, distinct values: no ties to order
    dense[0] = 0
    ids = list(range(len(offsets)))
    watch = [3, 17]
    got = annotation_of(sae, text, ids, offsets, dense, top_k=4, paragraph_top=5, granularity=granularity,
                        watch=watch)
    assert got == annotation_of(sae, text, ids, offsets, SparseCodes.of(dense), top_k=4, paragraph_top=5,
                                granularity=granularity, watch=watch)
    for i, token in enumerate(got.tokens):
        top = dense[i].topk(4)
        want = {int(f): float(v) for v, f in zip(top.values, top.indices, strict=True) if v > 0}
        want.update({f: float(dense[i, f]) for f in watch if dense[i, f] > 0})
        assert {f.feature: f.activation for f in token.features} == pytest.approx(want)
    assert set(got.weights) == set(dense.sum(0).nonzero().flatten().tolist())
    ends = torch.tensor([max(e - 1, s) for s, e in offsets])
    spans = [(s, e) for s, e in split_spans(text, granularity) if ((ends >= s) & (ends < e)).any()]
    assert [(p.start, p.end) for p in got.paragraphs] == spans
    specificity = Specificity(sae)
    for span in got.paragraphs:
        block = dense[(ends >= span.start) & (ends < span.end)]
        total = block.sum(0)
        assert [f.feature for f in span.features] == [r.feature for r in rank_dense(total, specificity, top=5)]
        for f in span.features:
            assert f.total == pytest.approx(float(total[f.feature]), rel=1e-5)
            assert f.max == float(block[:, f.feature].max()) and f.count == int((block[:, f.feature] > 0).sum())
