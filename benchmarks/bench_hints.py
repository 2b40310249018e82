"""What the writer sees: do the hints name what each paragraph is about? One JSON object on stdout.

On sets of paragraphs on distinct everyday topics (`--topics FILE ...`; by default `hint_topics.json`, the set the
ranking was first tuned on, `steering_topics.json`, and three held-out sets: `hint_topics_heldout.json`,
`hint_topics_final.json` and `hint_topics_unseen.json`, each written after the one before had been looked at), each
paragraph is annotated on its own and gets the hints the language server would show: its top `--slots` features that
may be hinted and have a label in words. Reported per set, for the ranking the server uses and, in the same run, for
ranking by summed activation with every feature allowed (what the server did first):

- `topic_share`: the share of paragraphs with a hint label naming the topic (a label word and an accepted topic word
  match when they are equal, or when one starts with the other and both have four letters at least; goal >= 3/4);
- `shared_slot_share`: the share of hint slots taken by a feature that is in the top slots of at least a quarter of
  the paragraphs (features that fire everywhere; goal <= 0.10);
- `without_hint`: paragraphs with no hint at all (goal 0);
- the hints of every paragraph, and those of a set's short story, as the editor shows them.

    python benchmarks/bench_hints.py [--model default] [--sae default] [--slots 3] [--topics FILE ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import TOPICS, emit, hint_topics, machine, names_topic

from steering.config import EngineConfig
from steering.engine import Engine
from steering.features.annotate import Annotation, annotate
from steering.features.ranking import Specificity


def hints(engine: Engine, annotation: Annotation, slots: int) -> list[list[tuple[int, str]]]:
    """Per span: (feature, label) of the hints, as the server picks them."""
    return [[(f.feature, label) for f, label in engine.hints(span.features, annotation.text[span.start:span.end],
                                                             slots)]
            for span in annotation.paragraphs]


def score(per_paragraph: list[list[tuple[int, str]]], accepts: list[list[str]]) -> dict[str, Any]:
    in_top = Counter(f for hinted in per_paragraph for f in {f for f, _ in hinted})
    shared = {f for f, n in in_top.items() if n >= len(per_paragraph) / 4}
    slots = [f for hinted in per_paragraph for f, _ in hinted]
    named = [names_topic([label for _, label in hinted], accept) for hinted, accept in zip(per_paragraph, accepts,
                                                                                          strict=True)]
    return {"topic_share": round(sum(named) / max(1, len(named)), 4),
            "shared_slot_share": round(sum(f in shared for f in slots) / max(1, len(slots)), 4),
            "without_hint": sum(not hinted for hinted in per_paragraph),
            "slots_filled": len(slots), "named": named}


def shown(hinted: list[tuple[int, str]]) -> str:
    return "⟨" + " · ".join(label for _, label in hinted) + "⟩" if hinted else "(no hint)"


DEFAULT_TOPICS = [TOPICS, *(TOPICS.with_name(n) for n in ("steering_topics.json", "hint_topics_heldout.json",
                                                           "hint_topics_final.json",
                                                           "hint_topics_unseen.json"))]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--slots", type=int, default=3, help="hints per paragraph (the server's hintCount)")
    ap.add_argument("--topics", nargs="+", default=[str(p) for p in DEFAULT_TOPICS])
    ap.add_argument("--out", help="also write the JSON here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    began = time.perf_counter()
    engine = Engine.load(EngineConfig(model=args.model, sae=args.sae, device=args.device))
    sae = engine.require_sae("the hints benchmark")
    result: dict[str, Any] = {"benchmark": "hints", "model": engine.info().model, "sae": engine.info().sae,
                              "hook": engine.hook.name, "slots": args.slots,
                              **machine(engine.lm.device, engine.lm.dtype), "texts": {}}
    for path in args.topics:
        data = hint_topics(path)
        paragraphs, story = data["paragraphs"], data.get("story", "")
        accepts = [p["accept"] for p in paragraphs]
        text: dict[str, Any] = {"paragraphs": len(paragraphs)}
        # the ranking the server uses, and the first one (summed activation, every feature may be hinted)
        for name, specificity in (("specific", engine.specificity()), ("summed_activation", Specificity.neutral(sae))):

            def read(t: str, specificity: Specificity = specificity) -> Annotation:
                return annotate(engine.lm, sae, t, paragraph_top=12, specificity=specificity)

            per_paragraph = [(hints(engine, a, args.slots) or [[]])[0] for a in map(read, (p["text"] for p in
                                                                                         paragraphs))]
            text[name] = {**score(per_paragraph, accepts),
                          "hints": {p["topic"]: shown(h) for p, h in zip(paragraphs, per_paragraph, strict=True)}}
            if story:
                text[name]["story"] = [shown(h) for h in hints(engine, read(story), args.slots)]
        result["texts"][Path(path).stem] = text
    result["seconds"] = round(time.perf_counter() - began, 1)
    emit(result, args.out, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
