"""The engine jobs that read a document for the server: one annotate call (`read`), and the job that reads all of
a text or only its edited spans, merged into the annotation before (`read_job`), with the cards of new features.
"""

from __future__ import annotations

from collections.abc import Callable

from steering.engine import FeatureCard
from steering.features.annotate import Annotation

from .cards import cards_for
from .config import Settings
from .incremental import Plan, merge
from .worker import EngineAPI

ReadResult = tuple[Annotation, dict[int, FeatureCard]]


def read(engine: EngineAPI, settings: Settings, text: str, granularity: str, session: str | None = None,
         watch: tuple[int, ...] = ()) -> Annotation:
    """The one annotate call of the server (runs on the worker): enough span features for hints and tooltips, and
    the watched features wherever they fire."""
    return engine.annotate(text, top_k=5, paragraph_top=max(8, settings.hint_count + 5), granularity=granularity,
                           session=session, watch=watch)


def read_job(settings: Settings, text: str, step: Plan | None, old: Annotation | None, granularity: str,
             known: set[int], session: str | None = None, watch: tuple[int, ...] = (),
             ) -> Callable[[EngineAPI], ReadResult]:
    """The engine job that annotates `text` (all of it without `step`, through the fast path's cache of
    `session`; else only `text[step.start:step.end]`, merged into `old`), with the cards of the features not in
    `known`."""

    def job(engine: EngineAPI) -> ReadResult:
        fresh = None
        if step is None or step.dirty:
            fresh = read(engine, settings, text if step is None else text[step.start:step.end], granularity,
                         session if step is None or step.start == 0 else None, watch)
        cards = cards_for(engine, fresh, known)
        if step is None:
            assert fresh is not None
            return fresh, cards
        assert old is not None
        return merge(old, text, step, fresh), cards

    return job
