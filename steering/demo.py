"""`python -m steering.demo [--sae PATH]`: a tour of the engine on the default model, for `make demo`.

Loads the model and SAE once, then: what is loaded; the features of each paragraph of a sample text; what one
feature means; a continuation steered toward it next to the unsteered one; and a contrastive steering vector.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from steering.features.annotate import Annotation
from steering.runtime.interventions import Intervention

from .config import STEERED_REPETITION_PENALTY, EngineConfig, SamplingConfig
from .engine import Engine
from .errors import TinymorphError

SAMPLE = Path(__file__).parent / "data" / "sample.md"


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run(sae: str, model: str) -> None:
    engine = Engine.load(EngineConfig(model=model, sae=sae))
    info = engine.info()
    say(f"== model {info.model} ({info.layers} layers, {info.device}, {info.dtype}); SAE: "
        f"{info.sae or 'none'} at {info.hook}")
    sampling = SamplingConfig(max_tokens=32, repetition_penalty=STEERED_REPETITION_PENALTY)
    if engine.sae is not None:
        text = SAMPLE.read_text(encoding="utf-8")
        ann = engine.annotate(text)
        say(f"\n== what each paragraph of {SAMPLE.name} is about: its most specific features, as editor hints")
        for para in ann.paragraphs:
            snippet = text[para.start : para.end].replace("\n", " ")
            say(f"¶ {snippet[:70]}…")
            named = engine.hints(para.features, text[para.start:para.end], 3)
            say("    ⟨" + " · ".join(label for _, label in named) + "⟩   (features "
                + ", ".join(f"#{f.feature}" for f, _ in named) + ")")
        prompt = "The afternoon in the town was"
        plain = "".join(engine.generate(prompt, (), sampling)).strip()
        feature, strength, steered = pick_steering(engine, ann, prompt, sampling, plain)
        ex = engine.explain(feature, top=6)
        say(f"\n== feature {feature}: ⟨{ex.label}⟩")
        say("promotes: " + " ".join(repr(t.token) for t in ex.lens.promoted))
        for context, act in ex.contexts[:4]:
            say(f"  {act:6.2f}  {context}")
        say(f"\n== greedy continuation of {prompt!r}, unsteered vs steered toward feature {feature} (+{strength:g})")
        say("unsteered: " + plain)
        say("steered:   " + steered)
    else:
        say("\n(no SAE: feature annotation skipped; pass --sae PATH)")
    prompt = "The morning by the harbour was"
    vector = engine.contrast_vector(
        "A violent storm: thunder, lightning, howling wind, crashing waves, torrential rain.",
        "A calm, sunny, peaceful morning: still water, blue sky, warm light.")
    say(f"\n== {prompt!r}, unsteered vs along a contrastive calm → stormy vector (+1.5)")
    say("unsteered: " + "".join(engine.generate(prompt, (), sampling)).strip())
    say("steered:   " + "".join(engine.generate(prompt, [Intervention("vector", vector=vector, strength=1.5)],
                                               sampling)).strip())
    say("\n== In your editor: `.venv/bin/tinymorph serve` is the language server (hints, hover, steering actions,"
        "\n   steered completions); set-ups for Neovim, VS Code and Emacs are in editor-configs/ (see the README).")


def pick_steering(engine: Engine, ann: Annotation, prompt: str, sampling: SamplingConfig, plain: str,
                  ) -> tuple[int, float, str]:
    """A feature of the sample (top features first) and a strength whose steered continuation is readable text
    that differs from the unsteered one: steering a small model far enough often gives repetition or nothing."""
    body = [p for p in ann.paragraphs if not ann.text[p.start:p.end].startswith("#")]  # not the heading
    candidates = list(dict.fromkeys(f.feature for p in body for f in p.features if f.hintable))[:12]
    first: tuple[int, float, str] | None = None
    for feature in candidates:
        for strength in (1.0, 1.5):
            out = "".join(engine.generate(prompt, [Intervention("add", feature, strength=strength)],
                                          sampling)).strip()
            first = first or (feature, strength, out)
            words = out.split()
            prose = sum(bool(re.fullmatch(r"[\"'(]?[A-Za-z][a-z'’-]*[.,;:!?\"')]*", w)) for w in words)
            if out != plain and len(words) >= 8 and len(set(words)) >= 0.5 * len(words) and prose >= 0.8 * len(words):
                return feature, strength, out
    assert first is not None
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sae", default="default")
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    try:
        run(args.sae, args.model)
    except TinymorphError as exc:
        sys.stderr.write(f"tinymorph: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
