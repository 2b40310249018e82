"""What the writer reads: feature statistics, labels in words, the specificity ranking, and the corpus recipe's
text clean-up."""

from __future__ import annotations

import torch

from steering.features.annotate import annotate
from steering.features.labels import Context, context_at, feature_label, is_label_word, word_label
from steering.features.ranking import Ranked, Specificity, Weight, pick_hints, rank
from steering.features.stats import EARLY_POSITIONS, feature_statistics, is_filler
from steering.sae.autoencoder import SAE, HookPoint
from steering.training.corpus import Corpus
from steering.training.recipe import paragraphs, without_gutenberg_frame
from tests.conftest import ByteTokenizer

COUNTS = {"rain": 20, "storm": 6, "storms": 3, "wind": 10, "the": 1000, "clouds": 5, "fell": 9, "roofs": 2,
          "cold": 10, "heavy": 8, "and": 900, "coat": 2, "of": 800}


def test_label_names_the_word_at_the_peaks_weighted_against_common_words() -> None:
    contexts = [Context("The clouds gathered and the ", "rain", " fell on the roofs", 5.0),
                Context("a cold ", "rain", " and wind", 4.0),
                Context("heavy ", "storm", " and rain", 3.0),
                Context("the ", "rain", "coat of", 2.0),
                Context("a ", "storm", " of the", 2.0)]
    label = word_label(contexts, COUNTS)
    words = label.split(", ")
    assert words[0] == "rain" and "storm" in words and len(words) <= 3
    assert not any(w in ("the", "and", "of") for w in words)  # stopwords never name a feature


def test_no_label_when_no_real_word_stands_out() -> None:
    contexts = [Context("x = ", "(", "a, b)", 3.0), Context("f", "(", ")", 2.0), Context("", "((", "", 1.0)]
    assert word_label(contexts, COUNTS) == ""
    assert word_label([], COUNTS) == ""
    assert not is_label_word("ing") or is_label_word("ing")  # a fragment may look like a word: contexts decide
    assert not is_label_word("a1") and not is_label_word("--") and not is_label_word("the")


def test_context_never_crosses_a_document_separator() -> None:
    tok = ByteTokenizer()
    ids = tok("old harbour")["input_ids"] + [2] + tok("Rain fell")["input_ids"]
    stream = torch.tensor(ids)
    peak = len(tok("old harbour")["input_ids"]) + 1  # the "R" of "Rain"
    c = context_at(tok, stream, peak, context=64, separators={2}, activation=1.0)
    assert (c.left, c.token) == ("", "R") and c.right.startswith("ain") and "harbour" not in c.marked()
    c = context_at(tok, stream, 8, context=64, separators={2})  # an "o" of "harbour": the right side stops at "ur"
    assert (c.token, c.right) == ("o", "ur")


def test_a_fallback_label_is_words_or_nothing() -> None:
    from steering.features.labels import LogitLens, TokenScore

    lens = LogitLens(1, (TokenScore("ing", 3.0), TokenScore(" Rain", 2.0), TokenScore("##", 1.0),
                         TokenScore(" storms", 0.5)), ())
    assert feature_label({}, lens) == "ing, rain"
    assert feature_label({"label": ""}, lens) == ""  # labels.json said no word names it
    assert feature_label({"label": "prices"}, lens) == "prices"


def test_ranking_prefers_what_is_specific_and_keeps_dense_features_out_of_hints() -> None:
    sae = SAE(8, 40, "topk", k=2, hook=HookPoint(0))
    frequency, punct = torch.full((40,), 0.01), torch.zeros(40)
    frequency[0], frequency[1], punct[2] = 0.30, 0.001, 0.9
    sae.set_feature_stats(max_act=torch.ones(40), frequency=frequency, mean_act=torch.full((40,), 2.0),
                          punct_share=punct, early_share=torch.zeros(40))
    spec = Specificity(sae)
    weights = {f: spec.weight(f) for f in range(4)}
    assert [w.hintable for w in weights.values()] == [False, True, False, True]
    ranked = rank({0: 40.0, 1: 2.0, 2: 30.0, 3: 2.0}, weights, top=2)
    # features 1 and 3 each fired once at their usual strength; 1 almost never fires elsewhere, so it leads; the
    # loud dense feature 0 and the punctuation feature 2 come after the hints, for the tooltip
    assert [r.feature for r in ranked] == [1, 3, 2, 0] and [r.hintable for r in ranked] == [True, True, False, False]
    assert rank({5: 1.0, 6: 3.0}, {}, top=5) == [rank({6: 3.0}, {}, top=1)[0], rank({5: 1.0}, {}, top=1)[0]]
    assert Weight(1.0, True) == Specificity.neutral(sae).weight(0)


def test_statistics_of_a_pass_over_a_corpus(llama) -> None:
    torch.manual_seed(0)
    sae = SAE(64, 32, "standard", hook=HookPoint(1))
    sae.W_enc.data.normal_(0, 0.5)
    sae.W_dec.data.normal_(0, 0.1)
    tok = llama.tokenizer
    stream = torch.tensor(tok("The rain fell, and fell; then: silence... " * 40)["input_ids"])
    stats = feature_statistics(llama, sae, stream, context=32, tokens=10_000, top=4)
    fired = stats.frequency > 0
    assert fired.any() and stats.tokens == (len(stream) // 32) * 31
    assert torch.all(stats.mean_act[fired] <= stats.max_act[fired] + 1e-6) and torch.all(stats.mean_act[fired] > 0)
    for share in (stats.punct_share, stats.early_share):
        assert torch.all((share >= 0) & (share <= 1 + 1e-6))
    assert EARLY_POSITIONS == 3 and is_filler(" ,;") and not is_filler(" rain")
    # DiffMean: activation-weighted mean residual where a feature fires minus the mean where it does not
    from steering.runtime.hooks import capture_residual

    seqs = torch.stack([stream[i * 32:(i + 1) * 32] for i in range(len(stream) // 32)])
    resid = capture_residual(llama.model, llama.blocks, sae.hook, seqs)[:, 1:].reshape(-1, 64).float()
    acts = sae.encode(resid).float()
    f = int(torch.nonzero(fired & (stats.frequency < 1))[0])
    on = acts[:, f] > 0
    expected = (acts[on, f, None] * resid[on]).sum(0) / acts[on, f].sum() - resid[~on].mean(0)
    assert stats.diffmean is not None
    torch.testing.assert_close(stats.diffmean[f], expected, atol=1e-3, rtol=1e-3)
    assert not stats.diffmean[~fired].any()
    # the statistics go with the SAE and rank the spans of an annotation
    sae.set_feature_stats(**stats.tensors())
    ann = annotate(llama, sae, "The rain fell.\n\nThen: silence...", paragraph_top=3)
    assert ann.paragraphs and all(f.feature in ann.weights for p in ann.paragraphs for f in p.features)
    scores = [f.score for f in ann.paragraphs[0].features if f.hintable]
    assert scores == sorted(scores, reverse=True)


def test_shuffled_sequences_visit_every_sequence_once() -> None:
    corpus = Corpus(torch.arange(1000), [])
    plain = [int(ids[0]) for _, ids in corpus.sequences(100)]
    mixed = [int(ids[0]) for _, ids in corpus.sequences(100, shuffle=7)]
    assert plain == list(range(0, 1000, 100)) and sorted(mixed) == plain and mixed != plain
    assert mixed == [int(ids[0]) for _, ids in corpus.sequences(100, shuffle=7)]  # seeded: resumable
    assert mixed[4:] == [int(ids[0]) for _, ids in corpus.sequences(100, shuffle=7, start=4)]


def test_recipe_text_clean_up() -> None:
    wrapped = "It was a dark\nand stormy night.\n\n  The rain fell\r\nin torrents.\n"
    assert paragraphs(wrapped) == "It was a dark and stormy night.\n\nThe rain fell in torrents.\n"
    framed = ("header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe story.\n"
              "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nlicence")
    assert without_gutenberg_frame(framed).strip() == "The story."
    assert without_gutenberg_frame("no frame at all") == "no frame at all"


def test_self_explanation_sweeps_scales_and_keeps_the_best(llama) -> None:
    from steering.features.selfexplain import (
        PROMPT,
        SCALES,
        PlaceholderEdit,
        placeholder_positions,
        self_explain,
    )

    ids, positions = placeholder_positions(llama, PROMPT)
    assert [PROMPT[i] for i in positions] == ["X", "X"]  # the byte tokenizer: one token per character
    edit = PlaceholderEdit(positions, torch.ones(64))
    h = torch.zeros(1, len(ids), 64)
    out = edit(h)
    assert out is not None and out[0, positions].eq(1).all() and out[0, 0].eq(0).all()
    assert edit(torch.zeros(1, 1, 64)) is None  # decode steps after the prompt are left alone
    torch.manual_seed(0)
    sae = SAE(64, 16, "standard", hook=HookPoint(1))
    sae.W_dec.data.normal_()
    result = self_explain(llama, sae, 3, unit=5.0, max_tokens=4)
    assert [s.scale for s in result.sweep] == list(SCALES)
    best = max(result.sweep, key=lambda s: s.composite)
    assert (result.scale, result.self_similarity, result.entropy) == (best.scale, best.self_similarity, best.entropy)
    for s in result.sweep:
        assert -1 <= s.self_similarity <= 1 and 0 <= s.entropy <= 1
        assert abs(s.composite - (0.5 * s.self_similarity - 0.5 * s.entropy)) < 1e-9
    assert isinstance(result.text, str) and result.to_dict()["feature"] == 3


def test_a_feature_of_punctuation_gets_no_label_from_its_neighbours() -> None:
    contexts = [Context("rain and ", "++", "++ storm", 3.0), Context("the rain", ";", " storm", 2.0),
                Context("rain storm", "--", "", 2.0), Context("storm ", "rain", "", 1.0)]
    assert word_label(contexts, COUNTS) == ""


def test_hints_never_repeat_a_word_and_pass_the_slot_on() -> None:
    ranked = [Ranked(1, 9.0, True), Ranked(2, 8.0, False), Ranked(3, 7.0, True), Ranked(4, 6.0, True),
              Ranked(5, 5.0, True), Ranked(6, 4.0, True), Ranked(7, 3.0, True)]
    labels = {1: "pay, money", 2: "commas", 3: "", 4: "pay", 5: "money, bank", 6: "market", 7: "horse"}
    shown = pick_hints(ranked, labels, 3)
    # 2 is never hinted, 3 has no words, 4 says nothing new; 5 keeps only its new word
    assert [(r.feature, label) for r, label in shown] == [(1, "pay, money"), (5, "bank"), (6, "market")]
    assert pick_hints(ranked, labels, 0) == []
    assert [r.feature for r, _ in pick_hints(ranked, dict.fromkeys(labels, "Rain"), 3)] == [1]


def test_calibration_keeps_the_smallest_multiple_that_carries_while_fluent() -> None:
    from steering.evaluation.calibrate import choose

    fluent, loud, looping = (0.3, 2.0, 0.9), (0.4, 5.0, 0.9), (0.5, 1.0, 0.2)
    quiet = (0.0, 1.5, 0.95)
    assert choose({0.5: [quiet, quiet], 1.0: [fluent, quiet], 2.0: [fluent, fluent], 3.0: [fluent, fluent]},
                  3.0) == (1.0, 0.5, 1.75)
    assert choose({1.0: [quiet, quiet], 2.0: [loud, loud], 3.0: [looping, looping]}, 3.0)[0] == 0.0
    assert choose({1.0: [quiet], 2.0: [loud]}, 6.0)[0] == 2.0
    assert choose({}, 3.0)[0] == 0.0


def test_guided_calibration_tries_stronger_when_the_feature_does_not_show_and_weaker_when_it_breaks_the_text():
    from steering.evaluation.calibrate import Run, choose_factor, next_factor

    good = Run(0.4, 2.0, (1, 2, 3, 4), "The sea was calm and the boats came home.")
    quiet = Run(0.05, 1.5, (1, 2, 3, 4), "It was a fine day in the town.")
    salad = Run(0.6, 6.0, (1, 2, 3, 4), "sea boat ship ocean waves sail harbour")
    bound = 4.0
    assert next_factor({1.0: [good, good, quiet]}, bound) is None  # carried fluently on two of three: done
    assert next_factor({1.0: [quiet, quiet, good]}, bound) == 4 / 3  # too weak: stronger
    assert next_factor({1.0: [quiet] * 3, 4 / 3: [quiet] * 3}, bound) == 2.0
    assert next_factor({1.0: [quiet] * 3, 4 / 3: [quiet] * 3, 2.0: [quiet] * 3}, bound) is None  # nothing left
    assert next_factor({1.0: [salad, salad, good]}, bound) == 2 / 3  # carries but breaks the text: weaker
    assert next_factor({1.0: [salad] * 3, 2 / 3: [salad] * 3}, bound) is None
    chosen = choose_factor(7, {1.0: [quiet, quiet, good], 4 / 3: [good, good, quiet]}, bound, default=1.125)
    assert chosen.multiple == 4 / 3 * 1.125 and chosen.steerability == 2 / 3
    failed = choose_factor(7, {1.0: [quiet, salad, good], 4 / 3: [salad] * 3}, bound, default=1.125)
    assert failed.multiple == 0.0 and failed.steerability == 1 / 3  # the best share seen, at the default
    assert choose_factor(7, {1.0: [salad] * 3, 2 / 3: [quiet] * 3}, bound, default=1.0).steerability == 0.0
