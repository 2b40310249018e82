"""Server parts that need no client: the engine worker's ordering and cancellation, and log forwarding from the
engine thread."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from types import SimpleNamespace
from typing import Any

import pytest

from lsp_server import worker as worker_module
from lsp_server.__main__ import LogForwarder
from lsp_server.completion import HEAL_CHARS, HEAL_STEP, heal_context
from lsp_server.server import TinymorphServer
from lsp_server.worker import ANNOTATE, INTERACTIVE, SUGGEST, EngineUnavailable, EngineWorker, settle_heap
from steering.config import EngineConfig


class FakeEngine:
    def info(self) -> Any:
        return "fake"


def test_worker_runs_urgent_jobs_first_and_skips_cancelled_ones(monkeypatch) -> None:
    worker = EngineWorker(lambda config, progress: FakeEngine())  # type: ignore[arg-type,return-value]
    assert worker.load(EngineConfig(), lambda s: None).result(timeout=10) == "fake"
    gate = threading.Event()
    order: list[str] = []
    blocker = worker.submit("block", lambda e: gate.wait(10), ANNOTATE)
    time.sleep(0.1)  # the blocker is running; the rest queue up behind it
    urgent = worker.urgent(ANNOTATE)  # what a background read asks between two blocks
    assert not urgent()
    late = worker.submit("annotate", lambda e: order.append("annotate"), ANNOTATE)
    assert urgent(), "a job as urgent as the read gets its turn once the read ran READ_SECONDS"
    monkeypatch.setattr(worker_module, "READ_SECONDS", 3600.0)
    assert not urgent(), "... and not before"
    assert not worker.urgent(SUGGEST)(), "a less urgent job waits"
    suggest = worker.submit("suggest", lambda e: order.append("suggest"), SUGGEST)
    dropped = worker.submit("dropped", lambda e: order.append("dropped"), INTERACTIVE)
    assert urgent()
    completion = worker.submit("completion", lambda e: order.append("completion"), INTERACTIVE)
    assert dropped.cancel()
    assert worker.queue_depth == 4
    gate.set()
    for f in (blocker, late, suggest, completion):
        f.result(timeout=10)
    assert order == ["completion", "suggest", "annotate"]
    assert set(worker.latency_ms) >= {"block", "annotate", "suggest", "completion"}
    worker.stop()


def test_worker_without_engine_says_why() -> None:
    def fail(config: EngineConfig, progress: Any) -> Any:
        raise RuntimeError("no such model")

    worker = EngineWorker(fail)
    with pytest.raises(RuntimeError):
        worker.load(EngineConfig(), lambda s: None).result(timeout=10)
    assert worker.state == "failed"
    with pytest.raises(EngineUnavailable, match="failed to load: no such model"):
        worker.submit("annotate", lambda e: None).result(timeout=10)
    worker.stop()


def test_log_records_from_the_engine_thread_reach_the_client_through_the_loop() -> None:
    server = TinymorphServer()
    sent: list[tuple[int, str]] = []
    server.window_log_message = lambda params: sent.append((threading.get_ident(), params.message))  # type: ignore
    handler = LogForwarder(server)
    logger = logging.getLogger("tests.forwarding")
    logger.addHandler(handler)
    try:
        logger.warning("before connecting")  # no loop yet: nothing is sent
        loop = asyncio.new_event_loop()
        server.loop, server.loop_thread = loop, threading.get_ident()
        thread = threading.Thread(target=lambda: logger.warning("from the engine thread"))
        thread.start()
        thread.join()
        assert sent == []  # not written from the engine thread itself
        loop.run_until_complete(asyncio.sleep(0.01))
        logger.error("from the loop")
        loop.close()
    finally:
        logger.removeHandler(handler)
        server.worker.stop()
    assert [m for _, m in sent] == ["from the engine thread", "from the loop"]
    assert all(ident == threading.get_ident() for ident, _ in sent)


def test_the_server_module_stays_small() -> None:
    """The server class holds typed state and shared plumbing; the rest lives in its own modules (the import rules
    between them: tests/test_imports.py)."""
    from pathlib import Path

    import lsp_server

    root = Path(lsp_server.__file__).parent
    assert len((root / "server.py").read_text(encoding="utf-8").splitlines()) < 250


def test_uri_paths() -> None:
    from pathlib import Path

    from lsp_server.text import uri_path

    assert uri_path("file:///tmp/a%20b/notes.md") == Path("/tmp/a b/notes.md")
    assert uri_path("untitled:Untitled-1") is None


def test_debounce_follows_the_typing_rhythm_within_bounds() -> None:
    from lsp_server.config import Settings
    from lsp_server.pipeline import debounce, typed
    from lsp_server.state import DocState
    from lsp_server.text import Document

    settings = Settings(debounce_ms=300)
    state = DocState(Document("file:///d.md", "markdown", 1, "", "utf-16"))
    assert debounce(settings, state) == pytest.approx(0.3)  # rhythm unknown
    for i in range(20):  # a fast typist: 0.12 s between keys
        typed(state, 100 + 0.12 * i)
    assert debounce(settings, state) == pytest.approx(0.18, abs=0.005)
    typed(state, 200)  # a long pause is not typing
    assert debounce(settings, state) == pytest.approx(0.18, abs=0.005)
    for i in range(20):  # a slow typist: 0.5 s between keys, capped at twice the setting
        typed(state, 300 + 0.5 * i)
    assert debounce(settings, state) == pytest.approx(0.6)
    for i in range(30):  # very fast: floored at half the setting
        typed(state, 400 + 0.02 * i)
    assert debounce(settings, state) == pytest.approx(0.15)


def test_a_long_document_is_read_from_just_above_the_view_and_its_visible_part_first() -> None:
    from lsp_server.config import Settings
    from lsp_server.pipeline import FIRST_SCREEN, visible_first, window
    from lsp_server.state import Annotated, DocState
    from lsp_server.text import Document
    from steering.features.annotate import Annotation

    text = "\n\n".join(f"{i}. The rain fell on the quiet harbour and the gulls cried." for i in range(800))
    settings = Settings(max_chars=12_000)
    state = DocState(Document("file:///long.md", "markdown", 1, text, "utf-16"))
    until = visible_first(settings, state)
    assert until == FIRST_SCREEN, "nothing shown yet: the first screen"
    lo, hi = window(settings, state, until)
    assert lo == 0 and FIRST_SCREEN <= hi < FIRST_SCREEN + 80 and text[hi : hi + 2] == "\n\n"
    assert window(settings, state) == (0, text.rfind("\n\n", 0, 12_000))

    state.visible = (20_000, 22_000)
    until = visible_first(settings, state)
    assert until == 22_000
    lo, hi = window(settings, state, until)
    assert text[lo - 2 : lo] == "\n\n" and 20_000 - 12_000 // 4 <= lo <= 20_000 and 22_000 <= hi < 22_080
    full = window(settings, state)
    assert full[0] == lo and full[1] - lo <= 12_000, "the rest of the window starts where the first part did"

    state.annotated = Annotated(1, full[0], len(text), Annotation(text[full[0] : full[1]], "blocks.1", (), ()))
    assert visible_first(settings, state) is None, "already read there"
    assert visible_first(Settings(max_chars=len(text)), state) is None, "read whole"


def test_the_prompt_window_keeps_its_start_while_typing_and_after_edits_outside_it() -> None:
    from lsp_server.generation import prompt_window

    sentences = [f"Sentence {i} is about the harbour and word{i}." for i in range(600)]
    text = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 600, 5))
    size = 2000
    assert prompt_window(text, 2500, size) == (text[:2500], ""), "a short text is read whole"

    offset = 20_000
    prompt, head = prompt_window(text, offset, size)
    start = offset - len(prompt)
    assert text[:offset].endswith(prompt) and size * 3 // 4 <= len(prompt) <= size
    assert text[start - 2 : start] == "\n\n" or text[start - 2 : start] == ". ", "it starts a paragraph or sentence"
    assert text.startswith(head, start)

    for typed in range(0, size // 2, 37):  # typing on at the cursor: the same start
        more = text[:offset] + "x" * typed
        assert prompt_window(more, offset + typed, size, head)[0] == prompt + "x" * typed

    above = "A new paragraph written far above. " * 20
    edited = text[:500] + above + text[500:]  # an edit above the window moves it, not its text
    assert prompt_window(edited, offset + len(above), size, head) == (prompt, head)
    inside = text[: start + 300] + "CHANGED" + text[start + 300 : offset]  # an edit inside keeps the start
    assert prompt_window(inside, offset + 7, size, head)[0] == inside[start:]

    far, far_head = prompt_window(text, 9_000, size, head)  # the cursor jumped up: a new window there
    assert far_head != head and text[:9_000].endswith(far) and size * 3 // 4 <= len(far) <= size
    assert prompt_window(text, offset + size, size, head)[1] != head, "typed on too far: the window moves on"

    # the fast path: a new window is smaller and grows as the writer types, up to 1.5 times the size
    prompt, head = prompt_window(text, offset, 2 * size, None, size)
    assert size * 3 // 4 <= len(prompt) <= size and text[:offset].endswith(prompt)
    for typed in (0, size, 2 * size - len(prompt)):
        assert prompt_window(text, offset + typed, 2 * size, head, size) == (text[offset - len(prompt):offset + typed],
                                                                          head)
    assert prompt_window(text, offset + 3 * size, 2 * size, head, size)[1] != head, "then it moves on"
    assert prompt_window(text, 2 * size, 2 * size, None, size)[1] != "", "a window where 1.5 fresh ones are before"


async def test_out_of_memory_in_a_generation_is_said_once_and_the_next_one_works() -> None:
    import torch

    from lsp_server import generation
    from lsp_server.config import Settings
    from lsp_server.state import DocState
    from lsp_server.text import Document

    answers: list[Any] = [torch.OutOfMemoryError("CUDA out of memory"), MemoryError(), "and then the sea"]
    told: list[str] = []

    class Server:
        settings = Settings()
        generations = 0

        def __init__(self) -> None:
            self.doc = DocState(Document("file:///oom.md", "markdown", 1, "Rain", "utf-16"))

        def state(self, uri: str) -> DocState:
            return self.doc

        def interventions_for(self, uri: str) -> list[Any]:
            return []

        def splices(self) -> bool:
            return False

        def tell(self, message: str, kind: Any = None) -> None:
            told.append(message)

        async def run_engine(self, kind: str, fn: Any, priority: int, cancel: Any) -> str:
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

    server = Server()
    for prompt in ("Rain", "Rain fell"):
        with pytest.raises(generation.OutOfMemory):
            await generation.generate(server, "file:///oom.md", prompt, kind="completion")
    assert len(told) == 1 and "ran out of memory" in told[0] and "hints still work" in told[0]
    assert await generation.generate(server, "file:///oom.md", "Rain, and", kind="completion") == \
        "and then the sea"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_is_tuned_unless_the_user_chose() -> None:
    """Two arenas and a fixed mapping threshold (`lsp_server.memory`); a variable the user set, or
    TINYMORPH_ALLOCATOR=system, is left as it is."""
    script = "import json; from lsp_server.memory import tune_allocator; print(json.dumps(tune_allocator()))"

    def applied(**env: str) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TINYMORPH_ALLOCATOR"))}
        out = subprocess.run([sys.executable, "-c", script], env={**base, **env}, capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)

    assert applied() == {"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert applied(MALLOC_ARENA_MAX="8") == {"MALLOC_MMAP_THRESHOLD_": 1 << 20}
    assert applied(TINYMORPH_ALLOCATOR="system") == {}


def _story(paragraphs: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    words = ["the", "rain", "boat", "harbour", "letter", "she", "read", "cried", "gulls", "over", "storm", "sail"]
    return "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(8, 120))).capitalize() + "."
                       for _ in range(paragraphs))


def test_a_long_document_is_cut_into_pieces_that_an_edit_changes_only_where_it_falls() -> None:
    from lsp_server.incremental import CONTEXT_CHARS
    from lsp_server.whole import LONGEST_PIECE, PIECE_CHARS, pieces

    for seed in range(5):
        text = _story(400, seed)
        cut = pieces(text)
        assert cut[0].start == 0 and cut[-1].end == len(text)
        for before, after in itertools.pairwise(cut):
            assert before.end == after.start and text[after.start - 2:after.start] == "\n\n"
        for p in cut:
            assert p.end - p.start <= LONGEST_PIECE and p.context <= p.start
            assert p.start - p.context >= min(p.start, CONTEXT_CHARS), "an overlap of the text before"
            assert p.context == 0 or text[p.context - 1] == "\n"
        assert len(text) / len(cut) > PIECE_CHARS / 2
        # an edit inside one piece: the pieces before it and from two after it on keep their text
        k = len(cut) // 2
        at = (cut[k].start + cut[k].end) // 2
        edited = text[:at] + " and the sea rose" + text[at:]
        old = [text[p.context:p.end] for p in cut]
        new = [edited[p.context:p.end] for p in pieces(edited)]
        assert new[:k] == old[:k] and new[-(len(cut) - k - 2):] == old[-(len(cut) - k - 2):]
    one = " ".join(["word"] * 10_000)  # no paragraph break at all
    assert all(p.end - p.start <= LONGEST_PIECE for p in pieces(one)) and pieces(one)[-1].end == len(one)
    assert pieces("") == [] and [(p.start, p.end) for p in pieces("Short.")] == [(0, 6)]


def test_the_pieces_annotations_compose_into_the_whole_at_document_offsets() -> None:
    from lsp_server.whole import Piece, compose
    from steering.features.annotate import Annotation, SpanFeatures, TokenFeatures

    text = "Alpha beta.\n\nGamma delta.\n\nEpsilon."

    def tok(start: int, end: int, local: str) -> TokenFeatures:
        return TokenFeatures(0, 0, local[start:end], start, end, ())

    def read(piece: Piece) -> Annotation:
        local = text[piece.context:piece.end]
        tokens = tuple(tok(i, i + 5, local) for i in range(0, len(local) - 4, 6))
        return Annotation(local, "h", tokens, (SpanFeatures(0, len(local), ()),) if piece.context == piece.start
                          else (SpanFeatures(0, piece.start - piece.context, ()),
                                SpanFeatures(piece.start - piece.context, len(local), ())))

    parts = [Piece(0, 0, 13), Piece(0, 13, 27), Piece(13, 27, len(text))]
    whole = compose(text, [(p, read(p)) for p in parts])
    assert [(s.start, s.end) for s in whole.paragraphs] == [(0, 13), (13, 27), (27, len(text))]
    assert all(text[t.start:t.end] == t.text for t in whole.tokens)
    assert [t.index for t in whole.tokens] == list(range(len(whole.tokens)))
    starts = [t.start for t in whole.tokens]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), "no token twice from the overlaps"


class _Windows:
    """A 27,000-character document of numbered sentences in paragraphs, and `prompt_at` on edited versions of it
    (`at`), on the fast path, splicing while `splices`."""

    def __init__(self) -> None:
        from lsp_server.state import DocState
        from lsp_server.text import Document

        sentences = [f"Sentence {i} is about the harbour and word{i}." for i in range(600)]
        self.text = "\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 600, 5))
        self.splices = True
        self.server: Any = SimpleNamespace(on_fast_path=lambda: True, splices=lambda: self.splices)
        self.state = DocState(Document("file:///w.md", "markdown", 1, self.text, "utf-16"))

    def at(self, new_text: str, offset: int) -> str:
        from lsp_server.generation import prompt_at
        from lsp_server.text import Document

        self.state.doc = Document("file:///w.md", "markdown", self.state.doc.version + 1, new_text, "utf-16")
        return prompt_at(self.server, self.state, offset)


def test_an_edit_far_up_inside_the_prompt_window_is_spliced_or_starts_a_smaller_window() -> None:
    from lsp_server.generation import FRESH_CHARS, WINDOW_CHARS

    case = _Windows()
    text, at = case.text, case.at

    offset = 20_000
    first = at(text, offset)
    assert len(first) <= FRESH_CHARS
    typed = text[:offset] + "y" * (WINDOW_CHARS - len(first))  # typing on: the window grows past a fresh one
    grown = at(typed, len(typed))
    assert grown == first + "y" * (WINDOW_CHARS - len(first))
    near = typed[:-500] + "CHANGED" + typed[-500:]  # an edit near the cursor: the window stays
    assert at(near, len(near)).startswith(first[:200])
    cut = len(near) - len(grown) + 100
    far = near[:cut] + "CHANGED" + near[cut:]  # a word far up: the cache splices over it, the window stays
    kept = at(far, len(far))
    assert kept.startswith(first[:100]) and far.endswith(kept)
    cut_head = len(far) - len(kept) + 10
    touched = far[:cut_head] + "ed" + far[cut_head:]  # an edit in the window's first characters: still that window
    again = at(touched, len(touched))
    assert len(again) > FRESH_CHARS and touched.endswith(again) and again.startswith(kept[:10])
    cut += len("ed")
    pasted = touched[:cut] + "A pasted paragraph. " * 30 + touched[cut:]  # too long to splice: a new, smaller one
    moved = at(pasted, len(pasted))
    assert not moved.startswith(first[:200]) and len(moved) <= FRESH_CHARS and pasted.endswith(moved)


def test_without_splicing_a_small_edit_far_up_moves_the_window_and_a_short_text_is_read_whole() -> None:
    from lsp_server.generation import FRESH_CHARS, WINDOW_CHARS, at_window_end

    case = _Windows()
    case.splices = False
    text, at, state = case.text, case.at, case.state

    offset = 20_000
    first = at(text, offset)
    # where a suggestion after the last edit moves the window on (typing at its end) or leaves it (an edit above)
    assert at_window_end(state, offset) and at_window_end(state, offset + 300)
    assert not at_window_end(state, offset - 500)
    typed = text[:offset] + "y" * (WINDOW_CHARS - len(first))
    grown = at(typed, len(typed))
    cut = len(typed) - len(grown) + 100
    far = typed[:cut] + "CHANGED" + typed[cut:]  # a model that cannot splice: a new, smaller window
    moved = at(far, len(far))
    assert not moved.startswith(first[:100]) and len(moved) <= FRESH_CHARS
    case.splices = True
    short = text[5000:8500]  # a window, then 800 characters deleted above: what is left fits, all of it is read
    assert len(at(short, len(short))) < len(short)
    shorter = short[:500] + short[1300:]
    assert at(shorter, len(shorter)) == shorter


@pytest.mark.parametrize(("selection", "generated", "before", "expected"), [
    # a sentence is replaced by as many sentences, never running into the next one
    ("The sea was calm.", " the waves rose high. Then a ship came and", " ", "The waves rose high."),
    ("The sea was calm. It was late.", " The waves rose. It grew dark. Then", " ", "The waves rose. It grew dark."),
    # its spacing on both sides is the selection's
    ("The sea was calm. ", " The waves rose high. Then", " ", "The waves rose high. "),
    (" The sea was calm.\n", "  The waves, “rose.” Then", "x", " The waves, “rose.”\n"),
    # a phrase stays a phrase
    ("the sea", " the ocean blue. It", " ", "the ocean blue"),
    # right after a word or a quote the model's own space is kept
    ("sea was calm", " wind rose", "e", " wind rose"),
])
def test_a_rewrite_keeps_the_sentence_boundaries(selection: str, generated: str, before: str, expected: str) -> None:
    from lsp_server.actions import fit_rewrite

    assert fit_rewrite(selection, generated, before) == expected


@pytest.mark.parametrize(("selection", "generated", "nll", "reason"), [
    ("The sea was calm.", " The 2018, the 35 years I was able to have a different way", (2.0, 2.0),
     "did not finish a sentence"),
    ("The sea was calm.", " Cow goat calf lamb chicken sheep.", (2.0, 2.0), "a list of words"),
    ("The sea was calm.", " The sea the sea the sea the sea the sea the sea.", (1.0, 2.0), "repeats itself"),
    ("The sea was calm.", " The ship sailed away at dawn.", (6.0, 3.0), "much less fluently than yours"),
])
def test_a_rewrite_that_is_not_fluent_is_refused_with_the_reason(selection: str, generated: str,
                                                                  nll: tuple[float, float], reason: str) -> None:
    from lsp_server.actions import RewriteRefused, check_fluent, fit_rewrite

    with pytest.raises(RewriteRefused, match=reason):
        check_fluent(fit_rewrite(selection, generated, " "), selection, nll)


def test_a_fluent_rewrite_passes() -> None:
    from lsp_server.actions import check_fluent, fit_rewrite

    text = fit_rewrite("The sea was calm.", " The ship sailed away at dawn. And", " ")
    check_fluent(text, "The sea was calm.", (3.2, 3.0))
    assert text == "The ship sailed away at dawn."


def test_healing_reads_a_local_context_whose_start_stays_put_while_the_writer_types() -> None:
    sentence = "The boats came in one by one while the harbour lights went on. "  # 63 characters
    text = sentence * 30
    assert heal_context(text[:200]) == text[:200], "a short prompt is read whole"
    starts = set()
    for n in range(1200, 1700):
        context = heal_context(text[:n])
        assert text[:n].endswith(context) and HEAL_CHARS // 2 <= len(context) <= HEAL_CHARS
        assert context.startswith("The boats"), "from a sentence start"
        starts.add(n - len(context))
    assert len(starts) <= 500 // len(sentence) + 2, "the start moves a sentence at a time, not with each letter"
    words = "the harbour was quiet and she walked along the water "  # no sentence ends: a list, a long line
    text = words * 40
    starts = set()
    for n in range(1200, 1700):
        context = heal_context(text[:n])
        assert text[:n].endswith(context) and HEAL_CHARS // 2 <= len(context) <= HEAL_CHARS
        assert text[n - len(context) - 1] == " ", "from a word start"
        starts.add(n - len(context))
    assert len(starts) <= 500 // HEAL_STEP + 2, "the start moves a step at a time, not with each letter"
    after_paragraph = sentence * 12 + "\n\nNight fell over the water and the wa"
    assert heal_context(after_paragraph).startswith("The boats"), "a new paragraph's few words read what precedes"


def test_settling_the_heap_freezes_what_lives_and_still_collects_what_comes_after() -> None:
    class Node:
        pass

    kept = [Node() for _ in range(50_000)]  # long-lived, as a loaded engine's objects
    try:
        settle_heap()
        assert gc.get_freeze_count() >= len(kept), "what was alive is left out of later passes"
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node)
        del node
        gc.collect()
        assert ref() is None, "a cycle made later is still collected"
    finally:
        gc.unfreeze()


async def test_a_completion_queued_behind_other_work_answers_at_once_when_its_document_is_edited() -> None:
    """An edit answers the document's waiting completion request with nothing right away (the editor asks again),
    and the engine never runs its continuation; without the edit the request waits and gets its text."""
    from lsprotocol import types

    from lsp_server import completion
    from lsp_server.generation import drop_stale
    from lsp_server.state import DocState
    from lsp_server.text import Document

    calls: list[str] = []

    class Engine:
        def info(self) -> Any:
            return SimpleNamespace(fast_path=False, splices=False, hook=None, model="fake")

        def complete_word(self, context: str, partial: str, session: str | None = None, steps: int = 4) -> str:
            calls.append("word")
            return "bour"

        def start(self, *args: Any, **kwargs: Any) -> None:
            return None

        def generate(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("continuation")
            yield " was quiet"

    server = TinymorphServer(lambda config, progress: Engine())  # type: ignore[arg-type,return-value]
    server.worker.load(EngineConfig(), lambda s: None).result(timeout=10)
    uri, text = "file:///queued.md", "The rain fell on the har"
    state = server.docs[uri] = DocState(Document(uri, "markdown", 1, text, "utf-16"))
    at = types.Position(line=0, character=len(text))
    try:
        for edited in (True, False):
            gate = threading.Event()
            blocker = server.worker.submit("read", lambda e, gate=gate: gate.wait(10), ANNOTATE)  # say, a cold read
            while server.worker.running != "read":
                await asyncio.sleep(0.01)
            asked = asyncio.ensure_future(completion.continuation(server, uri, at, "inline"))
            await asyncio.sleep(0.2)
            assert not asked.done()
            if edited:
                drop_stale(state)  # what a change to the document does
                assert await asyncio.wait_for(asked, 1) is None
                assert not blocker.done()
            gate.set()
            blocker.result(timeout=10)
            if edited:
                await asyncio.sleep(0.2)
                assert calls == [] and server.worker.queue_depth == 0
            else:
                assert await asyncio.wait_for(asked, 10) == ("bour was quiet", text.rfind("har"), len(text))
                assert calls == ["word", "continuation"]
    finally:
        server.worker.stop()
