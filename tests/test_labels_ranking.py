"""What the writer reads: feature statistics, labels in words, the specificity ranking, and the corpus recipe's
text clean-up."""

from __future__ import annotations

import numpy as np
import torch

from steering.features.annotate import annotate
from steering.features.labels import context_at, feature_label, token_label
from steering.features.ranking import CONFIDENCE_FLOOR, Ranked, Specificity, Weight, pick_hints, rank
from steering.features.separation import NO_LABEL, Background, Vocabulary, is_label_word, separating_label
from steering.features.stats import EARLY_POSITIONS, feature_statistics, is_filler
from steering.features.wordnet import WordNet
from steering.sae.autoencoder import SAE, HookPoint
from steering.training.corpus import Corpus
from steering.training.recipe import paragraphs, without_gutenberg_frame
from tests.conftest import ByteTokenizer


def background(*texts: str) -> list[frozenset[str]]:
    return [frozenset(t.split()) for t in texts]


def test_the_label_is_the_word_that_separates_where_the_feature_fires_from_the_rest() -> None:
    vocab = Vocabulary({w: 50 for w in ["rain", "storm", "wind", "cloud", "the", "coat", "harbour", "ship", "sea", "wet", "emma"]},
                       {"emma": 50})
    # the feature fires around storms and rain; "wet" is there too but as often in the background
    positives = background("rain wet", "rain cloud wet", "storm wind wet", "storm", "rain emma", "storm cloud")
    pool = Background(background("harbour ship", "sea wet", "ship wet", "coat wet", "sea ship", "harbour",
                                 "rain cloud", "wind sea"))
    silent = np.ones(pool.size, dtype=bool)
    label = separating_label(positives, silent, pool, vocab)
    # "storm" separates best; "rain" detects the firing contexts it misses, so it is added; "wet" never
    assert label.words == ("storm", "rain")
    assert 0.5 < label.confidence <= 1.0
    # where the feature also fires in the background contexts holding "rain", those do not count against it
    silent_where = np.array([True] * 6 + [False, True])
    assert separating_label(positives, silent_where, pool, vocab).confidence > label.confidence
    # a word the corpus hardly knows is no label a writer reads; nothing separates: no label
    assert "emma" not in label.words
    rare = Vocabulary({"rain": 2})
    assert separating_label(positives, silent, pool, rare) == NO_LABEL
    assert separating_label([], silent, pool, vocab) == NO_LABEL


def test_names_are_marked_and_the_label_prefers_what_the_corpus_writes_in_lower_case() -> None:
    vocab = Vocabulary.of_text(["Emma walked. Emma said yes. Then Emma ran, and Emma sat. " * 6,
                                "the rain fell; rain again, and rains. Ships and a ship. Baked, bake. " * 6])
    assert vocab.is_name("emma") and not vocab.is_name("rain") and not vocab.is_name("then")
    assert vocab.lemma("ships") == "ship" and vocab.lemma("rains") == "rain" and vocab.lemma("baked") == "bake"
    assert vocab.lemma("walked") == "walked"  # no "walk" in this corpus: the word stays as it is
    positives = background("emma", "emma walked", "emma", "emma sat")
    pool = Background(background("rain", "ship", "rain fell", "bake"))
    named = separating_label(positives, np.ones(4, dtype=bool), pool,
                             Vocabulary({"emma": 30, "walked": 30, "sat": 30}, {"emma": 30}))
    assert named.words[0] == "emma" and named.names == ("emma",)


def test_a_feature_no_word_separates_says_what_its_tokens_are() -> None:
    assert token_label(["8", "9", "7"]) == "numbers"
    assert token_label(["--", "++"]) == "punctuation"
    assert token_label([" of", " in"]) == "“of”, “in”"
    assert token_label(["  "]) == "spaces and layout" and token_label([]) == ""
    assert is_label_word("storm") and not is_label_word("a1") and not is_label_word("--")
    assert not is_label_word("the") and not is_label_word("genus")


def test_wordnet_broader_words_and_parts_of_speech(tmp_path) -> None:
    # a three-synset WordNet in its own file format: livestock > cattle, sheep; and the verb "graze"
    head = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
    (tmp_path / "data.noun").write_text(head + (
        "00000001 03 n 01 livestock 0 002 ~ 00000002 n 0000 ~ 00000003 n 0000 | farm animals\n"
        "00000002 03 n 02 cattle 0 cows 0 001 @ 00000001 n 0000 | bovines\n"
        "00000003 03 n 01 sheep 0 001 @ 00000001 n 0000 | woolly\n"), encoding="latin-1")
    (tmp_path / "index.noun").write_text(head + "cattle n 1 1 @ 1 0 00000002\nlivestock n 1 1 ~ 1 0 00000001\n"
                                         "sheep n 1 1 @ 1 0 00000003\ngraze n 1 0 1 0 00000003\n",
                                         encoding="latin-1")
    (tmp_path / "index.verb").write_text("graze v 1 0 1 0 00000009\n", encoding="latin-1")
    (tmp_path / "index.adj").write_text("", encoding="latin-1")
    (tmp_path / "index.adv").write_text("", encoding="latin-1")
    (tmp_path / "cntlist.rev").write_text("graze%2:34:00:: 1 12\ngraze%1:04:00:: 1 1\n", encoding="latin-1")
    wn = WordNet.find(tmp_path)
    assert wn is not None and WordNet.find(tmp_path / "missing") is None
    assert wn.broader("sheep") == ["livestock"] and wn.broader("cattle") == ["livestock"]
    assert wn.covers("livestock") == {"livestock", "cattle", "cows", "sheep"}
    assert wn.is_noun("sheep") is True and wn.is_noun("graze") is False and wn.is_noun("zzz") is None
    # as a label: the broader word separates where neither narrow one alone does, when asked for
    vocab = Vocabulary({w: 60 for w in ("cattle", "sheep", "livestock", "road")})
    positives = background("cattle", "sheep", "cattle", "sheep")
    pool = Background(background("road", "road", "road", "road"))
    plain = separating_label(positives, np.ones(4, dtype=bool), pool, vocab, wordnet=wn)
    broad = separating_label(positives, np.ones(4, dtype=bool), pool, vocab, wordnet=wn, broader=True)
    assert plain.words == ("cattle", "sheep") and plain.noun is True
    assert broad.words == ("livestock",) and broad.confidence == 1.0

    # a label is an English word WordNet knows (inflected too) or a name: never an identifier such as `sklearn`
    (tmp_path / "verb.exc").write_text("grazed graze\nfled flee\n", encoding="latin-1")
    wn = WordNet.find(tmp_path)
    assert wn is not None and wn.knows("sheep") and wn.knows("grazing") and wn.knows("grazes") and wn.knows("fled")
    assert wn.knows("Cattle") and not wn.knows("sklearn") and not wn.knows("dev")
    vocab = Vocabulary({w: 60 for w in ("sklearn", "sheep", "road")})
    positives = background("sklearn sheep", "sklearn", "sklearn", "sklearn sheep")
    assert separating_label(positives, np.ones(4, dtype=bool), pool, vocab).words[0] == "sklearn"
    assert separating_label(positives, np.ones(4, dtype=bool), pool, vocab, wordnet=wn).words == ("sheep",)


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
    # with its labels: a feature whose label separates poorly is not hinted; a better label ranks higher; an
    # everyday verb ranks lower than a noun of the same confidence
    labels = {"1": {"confidence": CONFIDENCE_FLOOR - 0.01}, "3": {"confidence": 0.9, "noun": True, "common": 0.01},
              "4": {"confidence": 0.9, "noun": False, "common": 0.01}, "5": {"confidence": 0.6, "noun": True}}
    spec = Specificity(sae, labels)
    assert not spec.weight(1).hintable and spec.weight(3).hintable and spec.weight(6).hintable  # 6: no label info
    assert spec.weight(3).per_unit > spec.weight(5).per_unit > 0
    assert abs(spec.weight(4).per_unit - 0.5 * spec.weight(3).per_unit) < 1e-6


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
    # for labels: a sample of where each feature fires, and a background pool with who fires there
    labelled = feature_statistics(llama, sae, stream, context=32, tokens=10_000, top=4, sample=3, pool=40)
    torch.testing.assert_close(labelled.max_act, stats.max_act)  # the other statistics do not change
    assert labelled.sample_tokens is not None and labelled.pool_tokens is not None and labelled.pool_fired is not None
    positions = torch.tensor([i * 32 + p for i in range(len(stream) // 32) for p in range(1, 32)])
    act_at = dict(zip(positions.tolist(), acts, strict=True))
    drawn = labelled.sample_tokens[f][labelled.sample_tokens[f] >= 0].tolist()
    assert drawn and all(act_at[p][f] > 0 for p in drawn) and len(set(drawn)) == len(drawn)
    assert not (labelled.sample_tokens[~fired] >= 0).any()
    assert 30 <= len(labelled.pool_tokens) <= 50
    for p, row in zip(labelled.pool_tokens.tolist(), labelled.pool_fired, strict=True):
        assert torch.equal(row, act_at[p] > 0)
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


def test_hints_never_repeat_a_word_and_pass_the_slot_on() -> None:
    ranked = [Ranked(1, 9.0, True), Ranked(2, 8.0, False), Ranked(3, 7.0, True), Ranked(4, 6.0, True),
              Ranked(5, 5.0, True), Ranked(6, 4.0, True), Ranked(7, 3.0, True)]
    labels = {1: "pay, money", 2: "commas", 3: "", 4: "pay", 5: "money, bank", 6: "market", 7: "horse"}
    shown = pick_hints(ranked, labels, 3)
    # 2 is never hinted, 3 has no words, 4 says nothing new; 5 keeps only its new word
    assert [(r.feature, label) for r, label in shown] == [(1, "pay, money"), (5, "bank"), (6, "market")]
    assert pick_hints(ranked, labels, 0) == []
    assert [r.feature for r, _ in pick_hints(ranked, dict.fromkeys(labels, "Rain"), 3)] == [1]


def test_a_hint_shows_a_name_only_where_the_text_mentions_it_and_the_sense_the_text_is_about() -> None:
    ranked = [Ranked(1, 9.0, True), Ranked(2, 8.0, True), Ranked(3, 7.0, True)]
    labels = {1: "knightley", 2: "cloud, file", 3: "sea"}
    names = {1: ("knightley",)}
    text = "Dark clouds rolled over the sea."
    assert [label for _, label in pick_hints(ranked, labels, 3, names=names, text=text)] == ["cloud", "sea"]
    about = "Mr. Knightley saved the files before the storm."
    assert [label for _, label in pick_hints(ranked, labels, 3, names=names, text=about)] == ["knightley", "file",
                                                                                           "sea"]
    # a label of several words, none of them in the text: its first word, the one that tells most
    assert pick_hints(ranked[1:2], labels, 1, text="A grey sky.")[0][1] == "cloud"
    # without the text (no span to check against) names are never shown, every word of a label is
    assert [label for _, label in pick_hints(ranked, labels, 3, names=names)] == ["cloud, file", "sea"]


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


def test_promoted_tokens_shown_are_whole_words_of_the_corpus() -> None:
    from steering.features.labels import corpus_words, is_word_token, readable_label

    labels = {"features": {"1": {"label": "sea", "contexts": [{"text": "ean the «sea» was calm to", "activation": 2.0}]},
                           "2": {"label": "ship", "contexts": [{"text": "pean a ship sailed from Buenos Aires today"}]}}}
    words = corpus_words(labels)
    assert {"sea", "calm", "ship", "aires"} <= words and "«sea»" not in words
    assert not {"ean", "pean", "to", "today"} & words, "a context's first and last words may be cut: not words"
    shown = [t for t in (" sea", " sailed", " incorpor", " pean", "ship", " Aires", " 2018", " se") if
             is_word_token(t, words)]
    assert shown == [" sea", " sailed"]
    # without a corpus: lower-case word starts of three letters or more
    assert [t for t in (" sea", " Sea", " pathlib", "x", " ab") if is_word_token(t, frozenset())] == [" sea", " pathlib"]
    # a label quoting the tokens a feature fires on keeps the ones that are words
    assert readable_label("\u201cship\u201d, \u201car\u201d", words) == "\u201cship\u201d"
    assert readable_label("\u201cchers\u201d, \u201cges\u201d", words) == ""
    assert readable_label("sea, ship", words) == "sea, ship"
