"""Incremental annotation: after an edit only the touched spans are read again, and the merged annotation agrees
with a full one wherever the model's input is the same."""

from __future__ import annotations

import pytest
import torch

from lsp_server.incremental import merge, plan, rereads
from steering.engine import Engine
from steering.sae.autoencoder import SAE
from steering.spans import split_spans
from tests.conftest import tiny_lm

TEXT = ("The rain fell on the quiet harbour.\n\nShe read the letter again and again.\n\n"
        "Gulls cried over the boats. The wind rose.\n")


def engine() -> Engine:
    lm = tiny_lm("llama")
    eng = Engine(lm, layer=2)
    d = lm.d_model
    sae = SAE(d, d_sae=4 * d, architecture="topk", k=8, hook=eng.hook)
    w = torch.randn(4 * d, d, generator=torch.Generator().manual_seed(0))
    w /= w.norm(dim=-1, keepdim=True)
    sae.W_dec.data.copy_(w)
    sae.W_enc.data.copy_(w.T.contiguous())
    return Engine(lm, sae)


def spans_of(ann):
    return [(p.start, p.end) for p in ann.paragraphs]


def same_features(a, b, start: int, end: int) -> None:
    """Same tokens and features in [start, end); activations equal up to float rounding (a shorter input changes
    the order of float sums)."""
    ta = [t for t in a.tokens if start <= t.start < end]
    tb = [t for t in b.tokens if start <= t.start < end]
    assert [(t.start, t.end, [f.feature for f in t.features]) for t in ta] == \
        [(t.start, t.end, [f.feature for f in t.features]) for t in tb]
    assert [f.activation for t in ta for f in t.features] == pytest.approx(
        [f.activation for t in tb for f in t.features], abs=1e-5)


def test_edit_in_the_middle_reads_only_that_paragraph() -> None:
    eng = engine()
    before = eng.annotate(TEXT)
    new = TEXT.replace("read the letter", "read the long letter")
    the_plan = plan(before, new, "paragraph")
    assert the_plan is not None
    second = split_spans(new)[1]
    assert the_plan.dirty == (second,)
    assert [r[:2] for r in the_plan.reused] == [split_spans(new)[0], split_spans(new)[2]]
    fresh = eng.annotate(new[the_plan.start:the_plan.end])
    merged = merge(before, new, the_plan, fresh)
    full = eng.annotate(new)
    assert spans_of(merged) == spans_of(full) == split_spans(new)
    # the first paragraph and the edited one see the same input as in a full read: the same features
    for start, end in split_spans(new)[:2]:
        same_features(merged, full, start, end)
    for got, want in zip(merged.paragraphs[:2], full.paragraphs[:2], strict=True):
        assert [f.feature for f in got.features] == [f.feature for f in want.features]
        assert [f.total for f in got.features] == pytest.approx([f.total for f in want.features], abs=1e-4)
    # the last one moved with the edit: its tokens still point at its text
    for t in merged.tokens:
        assert new[t.start:t.end] == t.text
    assert [t.index for t in merged.tokens] == list(range(len(merged.tokens)))


def test_sentences_typing_at_the_end_and_deleting_a_paragraph() -> None:
    eng = engine()
    before = eng.annotate(TEXT, granularity="sentence")
    typed = TEXT + "Night came"
    the_plan = plan(before, typed, "sentence")
    assert the_plan is not None and the_plan.dirty == (split_spans(typed, "sentence")[-1],)
    merged = merge(before, typed, the_plan, eng.annotate(typed[the_plan.start:the_plan.end], granularity="sentence"))
    assert spans_of(merged) == split_spans(typed, "sentence")

    before = eng.annotate(TEXT)
    cut = TEXT.replace("She read the letter again and again.\n\n", "")
    the_plan = plan(before, cut, "paragraph")
    assert the_plan is not None
    fresh = eng.annotate(cut[the_plan.start:the_plan.end]) if the_plan.dirty else None
    merged = merge(before, cut, the_plan, fresh)
    assert spans_of(merged) == split_spans(cut)
    for t in merged.tokens:
        assert cut[t.start:t.end] == t.text


def test_nothing_to_reuse_or_nothing_changed() -> None:
    eng = engine()
    before = eng.annotate(TEXT)
    assert plan(before, TEXT, "paragraph") is None
    assert plan(before, "Something else entirely.", "paragraph") is None


def test_rereads_bring_a_stale_merge_back_to_a_full_read() -> None:
    eng = engine()
    before = eng.annotate(TEXT)
    new = "Dawn. " + TEXT  # an edit at the top: every later paragraph keeps features read after the old text
    the_plan = plan(before, new, "paragraph")
    assert the_plan is not None
    merged = merge(before, new, the_plan, eng.annotate(new[the_plan.start:the_plan.end]))
    steps = rereads(merged, budget=40)  # small jobs: one paragraph each here
    assert len(steps) == len(merged.paragraphs)
    for step in steps:
        merged = merge(merged, new, step, eng.annotate(new[step.start:step.end]))
    full = eng.annotate(new)
    assert spans_of(merged) == spans_of(full)
    for start, end in spans_of(full):
        same_features(merged, full, start, end)
