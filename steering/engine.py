"""The engine: one model, at most one SAE, and the operations the language server and the CLI call.

The engine keeps no per-user state: steering sets are passed in with each call.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from steering.fast.batched import Batcher, Request
from steering.fast.cache import Encoder, PrefixCache, SessionCaches
from steering.fast.decode import decode, fast_token_ids
from steering.fast.family import unsupported_reason
from steering.fast.linear import whole_rows
from steering.fast.model import FastModel
from steering.features.annotate import (
    Annotation,
    Codes,
    annotate,
    annotation_of,
    encode_codes,
    encode_document,
)
from steering.features.featuremap import FeatureMap, build_map
from steering.features.labels import (
    LogitLens,
    corpus_words,
    feature_label,
    is_word_token,
    load_labels,
    logit_lens,
    readable_label,
    search_labels,
)
from steering.features.ranking import H, Specificity, pick_hints, rank_passage
from steering.features.selfexplain import SelfExplanation, self_explain
from steering.runtime.decode import CancelToken, decode_token_ids, prompt_ids, text_pieces
from steering.runtime.guidance import joining, steers
from steering.runtime.hooks import capture_residual
from steering.runtime.interventions import (
    CALIBRATION_TEXT,
    DIFFMEAN_MULTIPLE,
    Intervention,
    Plan,
    SteeringHook,
    compile_plan,
)
from steering.runtime.models import LoadedModel, Progress, _no_progress, load_model, module_device
from steering.runtime.presets import StyleVector, style_vector
from steering.sae.autoencoder import SAE, HookPoint
from steering.sae.codes import SparseCodes
from steering.sae.layouts import load_sae
from steering.sae.releases import resolve as resolve_release

from .config import EngineConfig, SamplingConfig
from .errors import NoSAEError, SAELoadError, ShapeMismatchError, TinymorphError

DEFAULT_SAE_DIR = Path(__file__).parent / "data" / "default_sae"
READ_MIN_TOKENS = 16
"""The fewest tokens a timed `read_ahead` piece reads."""


def resolve_sae_path(spec: str) -> Path | None:
    """`none` gives None; `default` the SAE shipped for the default model; a path that exists, itself; a SAELens
    name `RELEASE/ID` its folder in the local Hugging Face cache (`sae.releases`); anything else a path."""
    if spec in ("none", ""):
        return None
    if spec == "default":
        if not (DEFAULT_SAE_DIR / "cfg.json").is_file():
            raise SAELoadError(f"The default SAE is missing from this installation (expected in {DEFAULT_SAE_DIR}): "
                               "reinstall tinymorph, or pass --sae PATH (or --sae none).")
        return DEFAULT_SAE_DIR
    path = Path(spec).expanduser()
    if not path.exists() and (found := resolve_release(spec)) is not None:
        return found[0]
    return path


class Spellings:
    """Token ids by their text as it reads after other text (its leading space included), to spell a word out
    (`Engine.complete_word`) by lookups instead of a pass over the whole vocabulary (20 ms a step on the default
    model's 49,152 tokens)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.by_text: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if text:
                self.by_text.setdefault(text, []).append(i)
        self.sorted = sorted(self.by_text)

    def fitting(self, left: str) -> list[int]:
        """The ids, in order, of the tokens whose text starts with `left` or is a beginning of it."""
        lo = bisect.bisect_left(self.sorted, left)
        hi = bisect.bisect_left(self.sorted, left + "\U0010ffff")
        ids = [i for text in self.sorted[lo:hi] for i in self.by_text[text]]
        ids += [i for n in range(1, len(left)) for i in self.by_text.get(left[:n], ())]
        return sorted(ids)


@dataclass(frozen=True)
class EngineInfo:
    model: str
    model_source: str
    layers: int
    d_model: int
    device: str
    dtype: str
    sae: str | None
    sae_layout: str | None
    sae_architecture: str | None
    d_sae: int | None
    hook: str | None
    feature_stats: bool
    steering_scale: str
    fast_path: bool = False
    int8_decode: bool = False
    int4_weights: int = 0
    """Decode weights held in 4 bits (the rest of a quantised decode is int8)."""
    splices: bool = False
    """Whether a continuation's cache splices over edits above the cursor (`fast.model.FastModel.splice`)."""
    labels: bool = False
    """The SAE has a labels.json (words for its features)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureCard:
    """What an editor shows of a feature next to the text: its label, the tokens it promotes, and how well Amplify
    carries it into the text (`SAE.steerability`; None: not measured)."""

    label: str
    promoted: tuple[str, ...]
    steerability: float | None = None
    names: tuple[str, ...] = ()
    """The label's words that are names: a hint shows them only where its text mentions them."""
    explanation: str = ""
    """A written explanation the label was shortened from (imported from Neuronpedia), and `source`: whose."""
    source: str = ""


def card_names(cards: Mapping[int, FeatureCard]) -> dict[int, tuple[str, ...]]:
    """Per feature, its label's names (`pick_hints`' `names`)."""
    return {f: c.names for f, c in cards.items() if c.names}


@dataclass(frozen=True)
class FeatureExplanation:
    feature: int
    label: str
    max_act: float | None
    frequency: float | None
    lens: LogitLens
    contexts: tuple[tuple[str, float], ...] = ()
    steerability: float | None = None
    """The share of calibration prompts on which Amplify carried it fluently (None: not measured)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "label": self.label,
            "max_act": self.max_act,
            "frequency": self.frequency,
            "steerability": self.steerability,
            "amplify": steers(self.steerability),
            "promoted": [{"token": t.token, "score": round(t.score, 4)} for t in self.lens.promoted],
            "suppressed": [{"token": t.token, "score": round(t.score, 4)} for t in self.lens.suppressed],
            "contexts": [{"text": text, "activation": act} for text, act in self.contexts],
        }


class SearchHit(NamedTuple):
    """A feature `Engine.search` found: how well its label or contexts match, its label, and how well Amplify
    carries it (None: not measured)."""

    feature: int
    score: float
    label: str
    steerability: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "score": round(self.score, 4), "label": self.label,
                "steerability": self.steerability, "amplify": steers(self.steerability)}


@dataclass(frozen=True)
class ExampleFeature:
    """A feature specific to a passage (`Engine.features_by_example`), with what a writer needs to judge it."""

    feature: int
    label: str
    score: float
    share: float
    """The share of its density inside the passage (1: it fires only there; 1/2: as much around it)."""
    peak: float
    examples: tuple[str, ...]
    """Where it fires most in the corpus, the peak token in «»."""
    promoted: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "label": self.label, "score": round(self.score, 3),
                "share": round(self.share, 3), "peak": round(self.peak, 3), "examples": list(self.examples),
                "promoted": list(self.promoted)}


EXAMPLES = 3
"""Corpus examples shown per feature."""


def _encoder(sae: SAE) -> Encoder:
    """The SAE's encoder (to nonzeros) over residuals in the model's dtype and device."""
    return lambda r: sae.encode_sparse(r.to(sae.device, sae.dtype))


class Engine:
    """A loaded model and SAE. Not thread-safe: one worker thread should own it."""

    def __init__(self, lm: LoadedModel, sae: SAE | None = None, *, layer: int | None = None, fast: bool = True,
                 int8: bool = True, int4: bool = True, cache_mb: int = 256) -> None:
        self.lm = lm
        self.joins = joining(lm.tokenizer)
        """The tokens whose repeat guidance does not count as a loop (`runtime.guidance.joining`)."""
        self.sae = sae
        if sae is not None:
            if sae.d_in != lm.d_model:
                raise ShapeMismatchError(
                    f"The SAE reads vectors of size {sae.d_in}, but {lm.name} has hidden size {lm.d_model}."
                )
            if sae.hook is None:
                raise SAELoadError("The SAE does not say which layer it reads; pass its layer (--sae-layer).")
            if sae.hook.layer >= lm.n_layers:
                raise ShapeMismatchError(
                    f"The SAE reads layer {sae.hook.layer}, but {lm.name} has layers 0 to {lm.n_layers - 1}."
                )
            sae.to(module_device(lm.blocks[sae.hook.layer], lm.device))  # where the hooked block computes
            self.hook = sae.hook
        else:
            chosen = lm.n_layers // 2 if layer is None else layer
            if not 0 <= chosen < lm.n_layers:
                raise ShapeMismatchError(f"Layer {chosen} is out of range: {lm.name} has layers 0 to {lm.n_layers - 1}.")
            self.hook = HookPoint(chosen, "resid_post")
        self.slow_reason = "switched off" if not fast else unsupported_reason(lm.model, self.hook)
        """Why generation and annotation use the transformers forward, or None on the fast path."""
        self.fast = None if self.slow_reason else FastModel(lm.model, self.hook, int8=int8, int4=int4)
        self.caches = None if self.fast is None else SessionCaches(self.fast, cache_mb << 20)
        """The fast path's prefix caches, one per session (a document)."""
        self._read_cost = 5e-4
        """Seconds per token of the last `read_ahead` pieces (lower blocks and SAE codes)."""
        self._last_read: tuple[str, list[int]] | None = None
        self._batcher: Batcher | None = None
        self._fallback_scale: float | None = None
        self._specificity: Specificity | None = None
        self._corpus_words: frozenset[str] | None = None
        self._spelled: Spellings | None = None
        self._labels: dict[str, Any] | None = None

    @classmethod
    def load(cls, config: EngineConfig, progress: Progress = _no_progress) -> Engine:
        lm = load_model(config.model, config.device, config.dtype, trust_remote_code=config.trust_remote_code,
                        device_map=config.device_map, max_memory=config.max_memory,
                        offload_folder=config.offload_folder, progress=progress)
        sae = None
        sae_path = resolve_sae_path(config.sae)
        if sae_path is not None:
            progress(f"loading SAE {sae_path}")
            sae = load_sae(sae_path, layer=config.sae_layer)
            if config.sae_layer is not None and sae.hook is not None and sae.hook.layer != config.sae_layer:
                sae.hook = HookPoint(config.sae_layer, sae.hook.site)
        return cls(lm, sae, layer=config.layer, fast=config.fast, int8=config.int8, int4=config.int4,
                   cache_mb=config.cache_mb)

    # -------------------------------------------------------------------------------------------- queries
    def info(self) -> EngineInfo:
        sae = self.sae
        if sae is None:
            scale = "no SAE: only vector steering"
        elif sae.diffmean is not None:
            scale = (f"add follows each feature's DiffMean direction; strength 1 = its norm x a calibrated multiple "
                     f"for {sae.calibrated_count()} features, x {DIFFMEAN_MULTIPLE:g} for the rest (row mode: the "
                     "decoder row x max_act); on the fast path add is guided: its vector at 0.75 of that for an uncalibrated "
                     "feature, the decode loop preferring next tokens the feature fires on")
        elif sae.max_act is not None:
            scale = (f"max_act from the SAE's feature statistics (the seeds' rule), x a calibrated multiple for "
                     f"{sae.calibrated_count()} features")
        else:
            scale = (f"fallback: no max_act statistics, so add uses the mean residual norm at {self.hook} "
                     f"({self.fallback_scale():.3g}) as every feature's scale")
        return EngineInfo(
            model=self.lm.name,
            model_source=self.lm.source.location,
            layers=self.lm.n_layers,
            d_model=self.lm.d_model,
            device=str(self.lm.device),
            dtype=str(self.lm.dtype).removeprefix("torch."),
            sae=sae.source if sae else None,
            sae_layout=sae.layout if sae else None,
            sae_architecture=sae.architecture if sae else None,
            d_sae=sae.d_sae if sae else None,
            hook=self.hook.name,
            feature_stats=bool(sae is not None and sae.max_act is not None),
            steering_scale=scale,
            fast_path=self.slow_reason is None,
            int8_decode=self.fast is not None and self.fast.int8,
            int4_weights=self.fast.int4 if self.fast is not None else 0,
            splices=self.fast is not None and self.fast.can_splice,
            labels=bool(sae is not None and (self.labels() or {}).get("features")),
        )

    def require_sae(self, what: str) -> SAE:
        if self.sae is None:
            raise NoSAEError(f"{what} needs an SAE: pass --sae PATH (a SAELens, sparsify or Gemma Scope SAE).")
        return self.sae

    def warm_up(self) -> None:
        """Run the fast path once over a short text, in a cache of its own: a process's first decode steps cost more
        than later ones (TorchScript's first runs of the scripted step, oneDNN's first kernels: on a 2-core CPU the
        first step after a 512-token prompt took 65-77 ms in a fresh process, 15-19 ms after this; 0.36 s here),
        which the server pays while it loads rather than inside the writer's first completion."""
        if self.fast is None:
            return
        ids = prompt_ids(self.lm, CALIBRATION_TEXT * 4)[0].tolist()[:self.fast.max_positions - 4]
        with torch.inference_mode():
            steps = decode(self.fast, PrefixCache(self.fast), ids, None, None)
            next(steps)
            for token in ids[:3]:
                steps.send(token)
            steps.close()

    def specificity(self) -> Specificity:
        if self._specificity is None:
            sae = self.require_sae("ranking features")
            self._specificity = Specificity(sae, (self.labels() or {}).get("features"))
        return self._specificity

    def annotate(self, text: str, *, top_k: int = 5, paragraph_top: int = 8, granularity: str = "paragraph",
                 session: str | None = None, watch: Sequence[int] = ()) -> Annotation:
        """Features of `text`; `paragraphs` of the result holds spans at `granularity` (paragraph, sentence, line).
        With a `session` (a document's name) the fast path reads only the tokens after the first one that changed
        since that session's last call. The features in `watch` are kept on every token where they fire."""
        sae = self.require_sae("annotate")
        return annotate(self.lm, sae, text, top_k=top_k, paragraph_top=paragraph_top, granularity=granularity,
                        specificity=self.specificity(), codes=self._codes(sae, session), watch=watch)

    def features_by_example(self, text: str, start: int = 0, end: int | None = None, *, top: int = 8,
                            session: str | None = None) -> list[ExampleFeature]:
        """The labelled features most specific to `text[start:end]` (`ranking.rank_passage`: against the rest of
        `text` and the corpus), at most `top`, each with examples of where it fires in the corpus. A feature
        whose label only repeats words of a better-ranked one is left out, as in hints."""
        sae = self.require_sae("features by example")
        end = len(text) if end is None else end
        if not 0 <= start < end <= len(text) or not text[start:end].strip():
            raise TinymorphError("The example is empty: give (or select) some text.")
        _, offsets, feats = encode_document(self.lm, sae, text, codes=self._codes(sae, session))
        inside = torch.tensor([s < end and e > start and e > s for s, e in offsets], dtype=torch.bool)
        if len(inside):
            inside[0] = False  # the first token's features are never reported
        ranked = rank_passage(feats, inside, self.specificity(), top=4 * top + 8)
        cards = self.cards([r.feature for r in ranked], lens_limit=len(ranked))
        picked = pick_hints(ranked, {f: c.label for f, c in cards.items()}, top, names=card_names(cards),
                            text=text[start:end])
        return [ExampleFeature(r.feature, label, r.score, r.share, r.peak, self.examples(r.feature),
                               cards[r.feature].promoted) for r, label in picked]

    def hints(self, features: Sequence[H], text: str, count: int = 3) -> list[tuple[H, str]]:
        """The hint of a span as an editor shows it: its first `count` hintable `features` (ranked, as
        `annotate` gives them) with a label in words (`ranking.pick_hints`), names only where `text` (the span's
        text) mentions them."""
        hinted = [f.feature for f in features if f.hintable]
        cards = self.cards(hinted, lens_limit=len(hinted))
        return pick_hints(features, {f: c.label for f, c in cards.items()}, count, names=card_names(cards), text=text)

    def examples(self, feature: int, limit: int = EXAMPLES) -> tuple[str, ...]:
        """Where the feature fires most in the SAE's corpus (labels.json's top contexts), peak token in «»."""
        contexts = self._entry(feature).get("contexts", [])
        return tuple(" ".join(str(c.get("text", "")).split()) for c in contexts[:limit] if isinstance(c, dict))

    def feature_map(self, text: str, *, title: str = "document", per_paragraph: int = 4,
                    session: str | None = None) -> FeatureMap:
        """The feature map of `text` (`steering.features.featuremap`): its paragraphs' most specific labelled features and
        where each fires, token by token."""
        sae = self.require_sae("feature map")
        if not text.strip():
            annotation = annotate(self.lm, sae, text)
            feats = torch.zeros(0, sae.d_sae)
        else:
            ids, offsets, codes = encode_codes(self.lm, sae, text, codes=self._codes(sae, session))
            annotation = annotation_of(sae, text, ids, offsets, codes, paragraph_top=per_paragraph + 8,
                                       specificity=self.specificity())
            feats = codes.dense(len(ids))
        wanted = [f.feature for p in annotation.paragraphs for f in p.features]
        wanted += [f.feature for t in annotation.tokens for f in t.features]
        cards = self.cards(list(dict.fromkeys(wanted)), lens_limit=512)
        labels = {f: c.label for f, c in cards.items() if c.label}
        source = f"{self.lm.name} · SAE at {self.hook} ({sae.d_sae:,} features)"
        return build_map(title, source, annotation, feats, labels, {f: c.promoted for f, c in cards.items()},
                         self.examples, per_paragraph=per_paragraph, names=card_names(cards))

    def _codes(self, sae: SAE, session: str | None) -> Codes | None:
        """The SAE codes of a token list through the session's cache: only tokens after the first changed one are
        read and encoded."""
        caches = self.caches
        if caches is None:
            return None

        def read(ids: list[int]) -> SparseCodes | None:
            got = caches.read(session, ids)
            if got is None:
                return None
            with torch.inference_mode():
                return got[0].codes_for(len(ids), sae.d_sae, _encoder(sae))

        return read

    def read_ahead(self, text: str, session: str, tokens: int = 128, *, seconds: float | None = None,
                   pause: Callable[[], bool] | None = None) -> bool:
        """Read up to `tokens` more tokens of `text` into the session's cache and encode their SAE codes (the slow
        part of `annotate`, in pieces a completion can wait for); True once all of it is read (or there is no fast
        path). With `seconds`, as many tokens as take about that long at the cost per token the last reads took
        (it grows along a document, with the attention's span), rounded down to a row count the reduced-precision
        passes do not pad: a piece then costs about the same on any machine and anywhere in the text. With `pause`
        too (a test that more urgent work waits), a pass as long as one *block* of it takes about `seconds`,
        stopping between two blocks once `pause()` is true and going on from there at the next call
        (`fast.model.FastModel.lower`): a 2,048-token document in short pieces took three times as long as in one
        pass (each piece reads every weight again), and more urgent work still waits one block at most."""
        if self.caches is None or not text:
            return True
        ids = self._read_ids(text)
        if len(ids) > self.caches.fast.max_positions:
            return True
        if seconds is not None:
            # a block of a pass: aimed at 3/4 of `seconds`, as the cost per token grows along the text
            budget = seconds if pause is None else 0.75 * seconds * self.caches.fast.split
            tokens = whole_rows(max(READ_MIN_TOKENS, int(budget / self._read_cost)))
        started = time.perf_counter()
        got = self.caches.read(session, ids, tokens, pause=pause)
        if got is None:
            return True
        cache, done, read = got
        if self.sae is not None and (pause is None or not pause()):  # else the next call (or `annotate`) encodes
            with torch.inference_mode():
                cache.encode(cache.low, self.sae.d_sae, _encoder(self.sae))
        if read >= READ_MIN_TOKENS:
            self._read_cost = 0.3 * self._read_cost + 0.7 * (time.perf_counter() - started) / read
        return done

    def refresh(self, session: str, *, seconds: float = 0.05) -> bool:
        """Read the tokens of the session's cache that a continuation spliced over (`fast.model.FastModel.splice`)
        again, exactly, in the background: about `seconds` of reading a call (every block: the cost per token of
        `read_ahead`'s lower blocks, scaled to all of them); True when the cache is exact (or there is no fast
        path)."""
        if self.caches is None:
            return True
        done = self.caches.refresh(session, self._block_tokens(seconds))
        self.caches.trim()
        return done

    def prefetch(self, prompt: str, session: str, *, seconds: float = 0.05) -> bool:
        """Read a continuation's prompt into the session's cache before it is asked for, about `seconds` of reading
        a call (as `refresh`), unsteered where the cache holds no steering yet; True when all of it is read (or there
        is no fast path). The continuation then reads only what changed since."""
        fast = self.fast
        if self.caches is None or fast is None or not prompt:
            return True
        ids = prompt_ids(self.lm, prompt)[0].tolist()
        if len(ids) > fast.max_positions:
            return True
        with torch.inference_mode():
            cache = self.caches.get(session)
            fast.follow(cache, ids)
            done = fast.read(cache, self._block_tokens(seconds))
        self.caches.trim()
        return done

    def _block_tokens(self, seconds: float) -> int:
        """Tokens that take about `seconds` through every block: `read_ahead`'s cost per token of the lower blocks,
        scaled to all of them, rounded as its pieces are."""
        fast = self.fast
        assert fast is not None
        return whole_rows(max(READ_MIN_TOKENS, int(seconds * fast.split / (self._read_cost * fast.n_layers))))

    def _read_ids(self, text: str) -> list[int]:
        """`text`'s token ids; the last text's kept, as a document is read in many pieces of one version."""
        last = self._last_read
        if last is None or last[0] != text:
            last = self._last_read = (text, list(self.lm.tokenizer(text)["input_ids"]))
        return last[1]

    def forget(self, session: str) -> None:
        """Drop what the fast path keeps for `session` (a closed document)."""
        if self.caches is not None:
            self.caches.drop(session)

    def explain(self, feature: int, *, top: int = 10) -> FeatureExplanation:
        sae = self.require_sae("features explain")
        lens = logit_lens(self.lm, sae, sae.check_feature(feature), top)
        entry = self._entry(feature)
        return FeatureExplanation(
            feature=feature,
            label=feature_label(entry, lens),
            max_act=None if sae.max_act is None else float(sae.max_act[feature]),
            frequency=None if sae.frequency is None else float(sae.frequency[feature]),
            lens=lens,
            contexts=tuple((c["text"], float(c["activation"])) for c in entry.get("contexts", [])),
            steerability=sae.steerability(feature),
        )

    def self_explain(self, feature: int) -> SelfExplanation:
        """The model's own words for the feature (`steering.features.selfexplain`): the decoder direction on a placeholder
        token, at the scale with the best composite score over a sweep."""
        sae = self.require_sae("features explain --self")
        return self_explain(self.lm, sae, feature, self.fallback_scale())

    def labels(self) -> dict[str, Any] | None:
        """The SAE's labels.json (top contexts and labels per feature), when it has one."""
        if self._labels is None and self.sae is not None and self.sae.source:
            self._labels = load_labels(self.sae.source) or {}
        return self._labels or None

    def corpus_words(self) -> frozenset[str]:
        """The words of the texts the SAE's labels quote (what a promoted token must be to be shown as a word)."""
        if self._corpus_words is None:
            self._corpus_words = corpus_words(self.labels())
        return self._corpus_words

    def _entry(self, feature: int) -> dict[str, Any]:
        entry = (self.labels() or {}).get("features", {}).get(str(feature))
        return entry if isinstance(entry, dict) else {}

    def cards(self, features: Sequence[int], *, lens_limit: int = 256) -> dict[int, FeatureCard]:
        """Label and promoted tokens of each feature: from labels.json, else from the logit lens (computed for at
        most `lens_limit` features; the others are left out, for a later call)."""
        sae = self.require_sae("feature labels")
        cards: dict[int, FeatureCard] = {}
        for feature in features:
            entry = self._entry(sae.check_feature(feature))
            steerability = sae.steerability(feature)
            if entry.get("label"):
                promoted = tuple(t for t in entry.get("promoted", ()) if is_word_token(t, self.corpus_words()))[:5]
                label = readable_label(entry["label"], self.corpus_words())
                cards[feature] = FeatureCard(label, promoted, steerability, tuple(entry.get("names", ())),
                                             str(entry.get("explanation", "")), str(entry.get("source", "")))
            elif lens_limit > 0:
                lens_limit -= 1
                lens = logit_lens(self.lm, sae, feature, 5)
                cards[feature] = FeatureCard(feature_label(entry, lens), tuple(
                    t.token for t in lens.promoted if is_word_token(t.token, self.corpus_words())), steerability)
        return cards

    def label(self, feature: int) -> str:
        """A short label: from labels.json, else the top promoted tokens."""
        return self.cards([feature])[feature].label

    def search(self, query: str, limit: int = 20) -> list[SearchHit]:
        """The features whose labels or contexts mention `query`, best first."""
        sae = self.require_sae("features search")
        labels = self.labels()
        if labels is None:
            raise NoSAEError("features search needs the SAE's labels.json (written by `tinymorph train-sae`).")
        return [SearchHit(f, score, labels["features"][str(f)]["label"], sae.steerability(f))
                for f, score in search_labels(labels, query, limit)]

    # -------------------------------------------------------------------------------------------- steering
    def nll(self, prompt: str, texts: Sequence[str]) -> list[float]:
        """Per text, the unsteered model's mean NLL per token (nats) of `prompt + text` over the text's tokens: how
        fluently each reads after the same prompt (a rewrite against the sentence it replaces)."""
        head = prompt_ids(self.lm, prompt)[0].tolist()
        out = []
        with torch.inference_mode():
            for text in texts:
                ids = prompt_ids(self.lm, prompt + text)[0].tolist()
                common = 0
                while common < min(len(head), len(ids)) and head[common] == ids[common]:
                    common += 1
                common = max(1, min(common, len(head)))
                if common >= len(ids):
                    out.append(float("inf"))
                    continue
                batch = torch.tensor([ids], device=self.lm.device)
                logits = self.lm.model(input_ids=batch).logits[0, common - 1 : -1].float()
                logp = torch.log_softmax(logits, -1).gather(1, batch[0, common:, None])
                out.append(float(-logp.mean()))
        return out

    def residual(self, text: str) -> torch.Tensor:
        """The residual `[seq, d]` of `text` at the engine's hook point."""
        with torch.inference_mode():
            return capture_residual(self.lm.model, self.lm.blocks, self.hook, prompt_ids(self.lm, text).to(
                self.lm.device))[0].float()

    def fallback_scale(self) -> float:
        """Mean residual norm at the hook point over a fixed calibration text (first token left out)."""
        if self._fallback_scale is None:
            self._fallback_scale = float(self.residual(CALIBRATION_TEXT)[1:].norm(dim=-1).mean())
        return self._fallback_scale

    def contrast_vector(self, positive: str, negative: str) -> torch.Tensor:
        """Mean residual of `positive` minus mean residual of `negative` (first tokens left out)."""
        pos, neg = self.residual(positive), self.residual(negative)
        return (pos[1:] if len(pos) > 1 else pos).mean(0) - (neg[1:] if len(neg) > 1 else neg).mean(0)

    def style_vector(self, text: str, start: int, end: int) -> StyleVector:
        """The "write more like this" vector of `text[start:end]` against the rest of `text` (`steering.runtime.presets`)."""
        return style_vector(self.lm, self.hook, text, start, end, CALIBRATION_TEXT)

    def plan(self, steering: Sequence[Intervention]) -> Plan | None:
        """The steering set compiled for this engine's SAE and hook (None for none); bad steering raises here."""
        if not steering:
            return None
        needs_fallback = self.sae is not None and self.sae.max_act is None and any(
            i.mode in ("add", "row") for i in steering)
        return compile_plan(steering, self.sae, self.lm.d_model, self.fallback_scale() if needs_fallback else None)

    def steering_hook(self, steering: Sequence[Intervention]) -> SteeringHook | None:
        """The steering set as a hook of the transformers forward (None for none)."""
        plan = self.plan(steering)
        return None if plan is None else SteeringHook.from_plan(plan)

    def generate(
        self,
        prompt: str,
        steering: Sequence[Intervention] = (),
        sampling: SamplingConfig | None = None,
        cancel: CancelToken | None = None,
        session: str | None = None,
    ) -> Iterator[str]:
        """Stream the continuation of `prompt` under a steering set. Bad steering raises here, before any work.
        With a `session` (a document's name) the fast path reads only the prompt tokens that session has not
        read yet under the same steering; a prompt longer than the model's positions goes through the transformers
        forward."""
        plan = self.plan(steering)
        sampling = sampling or SamplingConfig()
        ids = prompt_ids(self.lm, prompt)
        tokens: Iterator[int]
        if self.fast is not None and self.caches is not None and \
                ids.shape[1] + sampling.max_tokens <= self.fast.max_positions:
            with torch.inference_mode():
                cache = self.caches.get(session)
            self.caches.trim()
            tokens = fast_token_ids(self.fast, cache, ids[0].tolist(), sampling, self.lm.eos_token_ids, plan=plan,
                                    cancel=cancel, joins=self.joins)
        else:
            hook = None if plan is None else SteeringHook.from_plan(plan)
            tokens = decode_token_ids(self.lm, ids, sampling, steering=hook, hook=self.hook, cancel=cancel)
        return text_pieces(self.lm.tokenizer, ids[0].tolist(), tokens, sampling, self.lm.eos_token_ids)

    def complete_word(self, prompt: str, partial: str, session: str | None = None, steps: int = 4) -> str:
        """The letters that finish the word `partial` at the end of `prompt`, as the unsteered model would write it
        (token healing: the prompt is read without the partial word, and the next tokens must spell it out, so a
        pause in `thun` gives `der`, not a new token glued on, `thunbergers`). "" when the word is complete as it
        stands or the model spells no word from it."""
        if not partial or not prompt.endswith(partial):
            return ""
        base = prompt[: len(prompt) - len(partial)].rstrip(" ")
        target = prompt[len(base):]  # the partial word with the spaces before it: how its tokens begin
        spellings = self._spellings()
        texts = spellings.texts
        ids = prompt_ids(self.lm, base)[0].tolist()
        written = ""
        with torch.inference_mode():
            if self.fast is not None and self.caches is not None and len(ids) + steps <= self.fast.max_positions:
                cache = self.caches.get(session)
                self.caches.trim()
                read = decode(self.fast, cache, ids, None, None)
                logits = next(read)
                advance = read.send
            else:
                read = None
                context = list(ids)

                def advance(token: int) -> torch.Tensor:
                    context.append(token)
                    return self.lm.model(input_ids=torch.tensor([context], device=self.lm.device)).logits[0, -1]

                logits = self.lm.model(input_ids=torch.tensor([context], device=self.lm.device)).logits[0, -1]
            try:
                for _ in range(steps):
                    left = target[len(written):]
                    allowed = spellings.fitting(left)
                    if not allowed:
                        return ""
                    choice = torch.tensor(allowed, device=logits.device)
                    token = int(choice[logits[choice].float().argmax()])
                    written += texts[token]
                    if len(written) >= len(target):
                        extra = written[len(target):]
                        return extra if extra.isalpha() else ""
                    logits = advance(token)
            finally:
                if read is not None:
                    read.close()
        return ""

    def _spellings(self) -> Spellings:
        if self._spelled is None:
            tokenizer = self.lm.tokenizer
            self._spelled = Spellings([tokenizer.decode([i]) for i in range(len(tokenizer))])
        return self._spelled

    def start(self, prompt: str, steering: Sequence[Intervention] = (), sampling: SamplingConfig | None = None,
              cancel: CancelToken | None = None, session: str | None = None) -> Request | None:
        """Queue the continuation of `prompt` for decoding together with the others (`step`), reading the prompt
        through `session`'s cache; None where it cannot join a batch (no fast path, more tokens than the model's
        positions): use `generate`. Bad steering raises here."""
        plan = self.plan(steering)
        sampling = sampling or SamplingConfig()
        if self.fast is None or self.caches is None:
            return None
        ids = prompt_ids(self.lm, prompt)[0].tolist()
        if len(ids) + sampling.max_tokens > self.fast.max_positions:
            return None
        with torch.inference_mode():
            cache = self.caches.get(session)
        self.caches.trim()
        request = Request(ids, sampling, plan, cache=cache, cancel=cancel)
        self._batch().add(request)
        return request

    def step(self) -> list[Request]:
        """One decode step of the continuations `start` queued; those that finished."""
        return self._batch().step() if self._batcher is not None else []

    @property
    def batching(self) -> bool:
        """Whether continuations queued by `start` are still decoding."""
        return self._batcher is not None and self._batcher.busy

    def drop_batch(self) -> None:
        """Forget every queued or decoding continuation (after a failed step)."""
        self._batcher = None

    def _batch(self, rows: int | None = None) -> Batcher:
        """The batcher (a new one with `rows` rows, 8 by default, when there is none or, idle, it has another
        size)."""
        assert self.fast is not None
        if self._batcher is None or (rows is not None and self._batcher.rows != rows and not self._batcher.busy):
            self._batcher = Batcher(self.fast, self.sae, self.lm.eos_token_ids, self.lm.tokenizer, rows=rows or 8,
                                    joins=self.joins)
        return self._batcher

    def generate_batch(self, prompts: Sequence[str], steering: Sequence[Sequence[Intervention]],
                       sampling: SamplingConfig | None = None, *, rows: int = 8) -> list[str]:
        """The continuations of many prompts, prompt i under `steering[i]`: on the fast path decoded together, up
        to `rows` at a time (`steering.fast.batched`); otherwise, and for the ones `start` cannot batch, one after
        another. Bad steering raises before any work."""
        if len(prompts) != len(steering):
            raise ValueError(f"{len(prompts)} prompts but {len(steering)} steering sets.")
        sampling = sampling or SamplingConfig()
        for s in steering:
            self.plan(s)
        if self.fast is not None:
            self._batch(rows)
        requests = [self.start(p, s, sampling) for p, s in zip(prompts, steering, strict=True)]
        while self.batching:
            self.step()
        return [r.text if r is not None else "".join(self.generate(p, s, sampling))
                for r, p, s in zip(requests, prompts, steering, strict=True)]
