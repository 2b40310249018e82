"""Feature cards: what hints, hover and code actions show of a feature (its label and the tokens it promotes).

The server keeps the cards of the features it has seen (`TinymorphServer.cards`); an annotation job asks the engine
for the cards of the features that are new to it, on the worker thread, so the editor's requests only read them.
"""

from __future__ import annotations

from steering.engine import FeatureCard
from steering.features.annotate import Annotation

from .worker import EngineAPI

LENS_LIMIT = 256
"""Features without a labels.json entry explained (logit lens) per annotation; the rest wait for the next one."""


def new_features(annotation: Annotation, known: set[int]) -> list[int]:
    """Features of `annotation` (spans first, then tokens) that have no card yet, each once."""
    wanted = [f.feature for span in annotation.paragraphs for f in span.features]
    wanted += [f.feature for token in annotation.tokens for f in token.features]
    return [f for f in dict.fromkeys(wanted) if f not in known]


def cards_for(engine: EngineAPI, annotation: Annotation | None, known: set[int]) -> dict[int, FeatureCard]:
    """The cards of the features in `annotation` that `known` lacks (runs on the worker)."""
    if annotation is None:
        return {}
    return engine.cards(new_features(annotation, known), lens_limit=LENS_LIMIT)


def card(cards: dict[int, FeatureCard], feature: int) -> FeatureCard:
    """The feature's card, or an empty one (no label, so no hint) until its card arrives."""
    return cards.get(feature) or FeatureCard("", ())


def promoted(c: FeatureCard, markdown: bool = True, limit: int = 5) -> str:
    """The words a feature leads to (the engine keeps only promoted tokens that are whole words of the corpus), as
    Markdown code spans or plain, comma-separated."""
    words = [t.strip() for t in c.promoted if t.strip()][:limit]
    if not markdown:
        return ", ".join(words)
    return ", ".join(f"`{w}`" for w in words) or "—"
