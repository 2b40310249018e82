"""`tinymorph`: the engine on the command line. Every command takes `--json`; errors are one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import (
    POSITIONS,
    STEERED_REPETITION_PENALTY,
    EngineConfig,
    SamplingConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
)
from .errors import TinymorphError

EXIT_USAGE = 2


NOT_FOR_TRAINING = ("sae", "sae_layer", "layer", "fast", "int8", "int4", "cache_mb")
"""EngineConfig fields `train-sae` has no flag for: it loads the model without an SAE or the fast path, and its
`--layer` is TrainConfig's (the block the new SAE reads)."""


def _common(parser: argparse.ArgumentParser, *, sae: bool = True) -> None:
    """The model and SAE flags (one per EngineConfig field, `_engine` reads them back), `--json` and `-v`."""
    add_arguments(parser.add_argument_group("model and SAE" if sae else "model"), EngineConfig,
                  skip=() if sae else NOT_FOR_TRAINING)
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def build_parser() -> argparse.ArgumentParser:
    from steering.runtime.interventions import SPEC_HELP

    parser = argparse.ArgumentParser(prog="tinymorph", description=__doc__, epilog=(
        "tinymorph serve [--tcp --port P] [--log-file F] [-v] starts the language server (python -m lsp_server)."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="model, SAE, layer, device and steering scale")
    _common(p)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("annotate", help="features that fire in a text file, per paragraph and token")
    p.add_argument("file", help="a text or Markdown file, or - for standard input")
    p.add_argument("--top-k", type=int, default=5, help="features kept per token")
    p.add_argument("--paragraph-top", type=int, default=5, help="features shown per paragraph")
    p.add_argument("--html", metavar="OUT.html",
                   help="also write a feature map: one self-contained page where a click on a feature colours the "
                        "text by it")
    p.add_argument("--png", metavar="OUT.png", help="also write a heat map of the strongest features by paragraph")
    _common(p)
    p.set_defaults(run=cmd_annotate)

    p = sub.add_parser("generate", help="continue a prompt, optionally steered")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt")
    what.add_argument("--batch", metavar="FILE",
                      help="many prompts, decoded together: one per line, or JSON lines {\"prompt\": ..., \"steer\": "
                           "[SPEC, ...]}; - for standard input. Prints one JSON line per prompt.")
    p.add_argument("--rows", type=int, default=8, help="with --batch: continuations decoded at once")
    p.add_argument("--steer", action="append", default=[], metavar="SPEC",
                   help=f"steering by feature, repeatable: {SPEC_HELP}".replace("%", "%%"))
    p.add_argument("--contrast", nargs=2, metavar=("POSITIVE", "NEGATIVE"),
                   help="steer along mean(residual of POSITIVE) - mean(residual of NEGATIVE)")
    p.add_argument("--contrast-strength", type=float, default=4.0)
    p.add_argument("--positions", choices=POSITIONS, default="all", help="where steering applies")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=STEERED_REPETITION_PENALTY,
                   help="penalty on tokens already generated (1 is off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--compare", action="store_true", help="also print the unsteered continuation")
    _common(p)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("features", help="feature labels")
    fsub = p.add_subparsers(dest="features_command", required=True, metavar="SUBCOMMAND")
    e = fsub.add_parser("explain", help="label, top contexts and logit-lens tokens of a feature")
    e.add_argument("feature", type=int)
    e.add_argument("--top", type=int, default=10)
    e.add_argument("--self", dest="self_explain", action="store_true",
                   help="also let the model say what the feature means (self-explanation, a sweep of scales)")
    _common(e)
    e.set_defaults(run=cmd_explain)
    q = fsub.add_parser("search", help="features whose labels or top contexts mention a word, or that are "
                                       "specific to an example text (--example)")
    q.add_argument("query", nargs="?", help="a word or phrase")
    q.add_argument("--example", metavar="FILE",
                   help="instead of a query: the features most specific to this text (a file, or - for standard "
                        "input), ranked as the hints are")
    q.add_argument("--limit", type=int, default=20)
    _common(q)
    q.set_defaults(run=cmd_search)

    t = sub.add_parser("train-sae", help="train an SAE on the model's residual stream over your text")
    t.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="text/Markdown files, folders, globs")
    t.add_argument("--out", required=True, help="output folder (SAELens layout + feature stats + labels.json)")
    t.add_argument("--overwrite", action="store_true", help="replace an SAE already in --out")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint an interrupted run left")
    t.add_argument("--plot", metavar="PNG", help="also write training curves to this PNG (and into --out)")
    t.add_argument("--half", action="store_true", help="store weights in float16")
    add_arguments(t.add_argument_group("training (TrainConfig)"), TrainConfig, required=("layer",))
    _common(t, sae=False)
    t.set_defaults(run=cmd_train)

    s = sub.add_parser("sae-stats", help="feature statistics and labels of an SAE over your text, saved beside it")
    s.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    s.add_argument("--tokens", type=int, default=200_000, help="tokens read (spread over the whole corpus)")
    s.add_argument("--context", type=int, default=128)
    s.add_argument("--labels-only", action="store_true",
                   help="rewrite labels.json only; keep the statistics (and the steering calibrated on them)")
    s.add_argument("--wordnet", metavar="DIR",
                   help="WordNet's files (index.*, data.noun, cntlist.rev): which label words are nouns; default "
                        "$TINYMORPH_WORDNET, then /usr/share/wordnet (Debian's wordnet-base); labels work without")
    _common(s)
    s.set_defaults(run=cmd_sae_stats)

    il = sub.add_parser("import-labels", help="labels from a Neuronpedia explanation export (JSON or JSON lines, "
                                              "gzipped or not) into the SAE's labels.json")
    il.add_argument("export", nargs="+", help="the export file(s)")
    il.add_argument("--sae", required=True,
                    help="the SAE the explanations are for: a folder or file, or a SAELens name RELEASE/ID (then the "
                         "export's entries for its Neuronpedia id are taken)")
    il.add_argument("--sae-layer", type=int, default=None, help="the layer, for a file holding several")
    il.add_argument("--sae-id", default=None,
                    help="which SAE's explanations to take from an export holding several (e.g. 20-gemmascope-res-16k)")
    il.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    il.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    il.set_defaults(run=cmd_import_labels)

    pr = sub.add_parser("prepare", help="everything the editor needs of an SAE trained elsewhere, over your own text: "
                                        "feature statistics, DiffMean directions, labels, steerability (resumes)")
    pr.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="your own text files")
    pr.add_argument("--tokens", type=int, default=200_000, help="tokens read for statistics and labels")
    pr.add_argument("--redo", action="store_true", help="compute again what an earlier run computed")
    _common(pr)
    pr.set_defaults(run=cmd_prepare)

    c = sub.add_parser("calibrate", help="per-feature steering strength and steerability of an SAE, measured and "
                                         "saved beside it (resumes where an interrupted run stopped)")
    c.add_argument("--features", default="hintable", metavar="WHICH",
                   help="`hintable` (features hints can show: their label is confident enough), `all` (every alive "
                        "feature, the hintable ones first), `sample:N` (N alive features, seeded) or a comma-separated "
                        "list of feature ids")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--reference", nargs="+", metavar="PATH",
                   help="human prose whose NLL is the fluency bound (default: a built-in paragraph, stricter)")
    c.add_argument("--batch", type=int, default=48, help="continuations decoded together")
    c.add_argument("--redo", action="store_true", help="measure again the features an earlier run measured")
    _common(c)
    c.set_defaults(run=cmd_calibrate)

    lv = sub.add_parser("eval-labels", help="how well the SAE's labels pick out their features on held-out text")
    lv.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    lv.add_argument("--tokens", type=int, default=50_000, help="held-out tokens read for the top contexts")
    lv.add_argument("--features", type=int, default=200, help="labelled features sampled (seeded)")
    lv.add_argument("--contexts", type=int, default=20, help="contexts per feature on each side")
    lv.add_argument("--seed", type=int, default=0)
    lv.add_argument("--self", dest="self_explain", type=int, default=0, metavar="N",
                    help="also score the model's self-explanations of the first N sampled features beside their labels")
    _common(lv)
    lv.set_defaults(run=cmd_eval_labels)

    w = sub.add_parser("write-corpus", help="the model's own text on 280 everyday topics x 6 genres, a part of the "
                                            "default SAE's corpus (OUT/train/written, OUT/heldout/written; resumes)")
    w.add_argument("out", type=Path, metavar="OUT", help="the corpus folder (`make default-sae-corpus` uses "
                                                         ".cache/default-sae-corpus)")
    w.add_argument("--max-tokens", type=int, default=160, help="tokens written from each opening")
    w.add_argument("--rows", type=int, default=16, help="openings decoded together")
    _common(w, sae=False)
    w.set_defaults(run=cmd_write_corpus)

    v = sub.add_parser("eval-sae", help="FVU, L0, dead latents and CE-loss recovered on held-out text")
    v.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    v.add_argument("--tokens", type=int, default=20_000)
    v.add_argument("--context", type=int, default=128)
    _common(v)
    v.set_defaults(run=cmd_eval)
    return parser


# ------------------------------------------------------------------------------------------------ helpers
def _progress_bar(enabled: bool) -> tuple[Callable[[str], None], Callable[[], None]]:
    if not enabled:
        return (lambda _s: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, bar_format="{desc} [{elapsed}]", leave=False)

    def update(stage: str) -> None:
        bar.set_description_str(f"tinymorph: {stage}")

    return update, bar.close


def _engine(args: argparse.Namespace) -> Any:
    from .engine import Engine

    config = from_arguments(EngineConfig, args)
    update, close = _progress_bar(sys.stderr.isatty())
    try:
        return Engine.load(config, progress=update)
    finally:
        close()


def _say(line: str) -> None:
    """A progress line on stderr (stdout is for results)."""
    sys.stderr.write(f"tinymorph: {line}\n")


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------ commands
def cmd_info(args: argparse.Namespace) -> int:
    info = _engine(args).info()
    if args.json:
        _emit(info.to_dict())
    else:
        for key, value in info.to_dict().items():
            print(f"{key:17} {value}")
    return 0


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise TinymorphError(f"No such file: {path}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TinymorphError(f"{path} is not UTF-8 text.") from None


def cmd_annotate(args: argparse.Namespace) -> int:
    from steering.features.featuremap import check_output, write_html, write_png

    text = _read_text(args.file)
    for path, suffix in ((args.html, ".html"), (args.png, ".png")):
        if path is not None:
            check_output(path, suffix)  # before the model loads: a bad path fails fast
    engine = _engine(args)
    if args.html or args.png:
        title = "standard input" if args.file == "-" else Path(args.file).name
        fmap = engine.feature_map(text, title=title, session=None)
        written = [str(write_html(fmap, args.html))] if args.html else []
        written += [str(write_png(fmap, args.png))] if args.png else []
        if args.json:
            _emit({"written": written, "paragraphs": len(fmap.paragraphs), "features": len(fmap.features)})
        else:
            for path in written:
                print(f"wrote {path}")
        return 0
    ann = engine.annotate(text, top_k=args.top_k, paragraph_top=args.paragraph_top)
    cards = engine.cards(list(dict.fromkeys(f.feature for p in ann.paragraphs for f in p.features)),
                         lens_limit=10_000)
    labels = {f: c.label for f, c in cards.items()}
    if args.json:
        _emit({**ann.to_dict(), "labels": {str(k): v for k, v in labels.items()}})
        return 0
    if not ann.paragraphs:
        print("(no text to annotate)")
    for para in ann.paragraphs:
        snippet = text[para.start : para.end].replace("\n", " ")
        print(f"¶ {snippet[:72]}{'…' if len(snippet) > 72 else ''}")
        for f in para.features:
            label = labels[f.feature] or "(no word names it)"
            kind = "" if f.hintable else "  [dense, punctuation or position: never a hint]"
            print(f"   #{f.feature:<6} ⟨{label}⟩  score {f.score:6.1f}  max {f.max:6.2f}  on {f.count:3} tokens{kind}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from steering.runtime.interventions import Intervention, parse_steer

    steering = [parse_steer(s) for s in args.steer]
    sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                              seed=args.seed, stop=tuple(args.stop), steer_positions=args.positions,
                              repetition_penalty=args.repetition_penalty)
    if args.batch is not None:
        jobs = _batch_jobs(_read_text(args.batch), steering)
        if args.rows < 1:
            raise TinymorphError("--rows must be at least 1.")
    engine = _engine(args)
    if args.contrast:
        vector = engine.contrast_vector(*args.contrast)
        steering.append(Intervention("vector", vector=vector, strength=args.contrast_strength))
        if args.batch is not None:
            jobs = [(prompt, [*own, steering[-1]]) for prompt, own in jobs]
    if args.batch is not None:
        texts = engine.generate_batch([p for p, _ in jobs], [s for _, s in jobs], sampling, rows=args.rows)
        for (prompt, own), text in zip(jobs, texts, strict=True):
            sys.stdout.write(json.dumps({"prompt": prompt, "steering": [s.to_dict() for s in own], "text": text},
                                        ensure_ascii=False) + "\n")
        return 0
    pieces_steered = engine.generate(args.prompt, steering, sampling)  # validates steering before any output
    result: dict[str, Any] = {"prompt": args.prompt, "steering": [s.to_dict() for s in steering],
                              "hook": engine.hook.name}
    if args.compare:
        plain = "".join(engine.generate(args.prompt, (), sampling))
        result["unsteered"] = plain
        if not args.json:
            print(f"--- unsteered\n{args.prompt}{plain}\n--- steered ({', '.join(map(str, steering)) or 'none'})")
    if args.json:
        result["text"] = "".join(pieces_steered)
        _emit(result)
        return 0
    sys.stdout.write(args.prompt)
    for piece in pieces_steered:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _batch_jobs(text: str, steering: list[Any]) -> list[tuple[str, list[Any]]]:
    """(prompt, steering) per non-empty line of a `--batch` file: a JSON object with `prompt` and optional `steer`
    (specs as for --steer, replacing the command line's), or the line itself as the prompt."""
    from steering.runtime.interventions import parse_steer

    jobs: list[tuple[str, list[Any]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            jobs.append((line, list(steering)))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TinymorphError(f"--batch line {number} is not valid JSON: {exc.msg}.") from None
        prompt, specs = item.get("prompt"), item.get("steer")
        if not isinstance(prompt, str):
            raise TinymorphError(f"--batch line {number} needs a \"prompt\" string.")
        if specs is not None and (not isinstance(specs, list) or not all(isinstance(x, str) for x in specs)):
            raise TinymorphError(f"--batch line {number}: \"steer\" must be a list of specs like \"12=+4\".")
        jobs.append((prompt, list(steering) if specs is None else [parse_steer(x) for x in specs]))
    if not jobs:
        raise TinymorphError("The --batch file has no prompts.")
    return jobs


def cmd_explain(args: argparse.Namespace) -> int:
    engine = _engine(args)
    explanation = engine.explain(args.feature, top=args.top)
    data = explanation.to_dict()
    if args.self_explain:
        data["self"] = engine.self_explain(args.feature).to_dict()
    if args.json:
        _emit(data)
        return 0
    print(f"feature {data['feature']}: ⟨{data['label']}⟩ (Amplify {data['amplify']})")
    if data["max_act"] is not None:
        print(f"max activation {data['max_act']:.3f}, fires on {100 * (data['frequency'] or 0):.3f}% of tokens")
    print("promotes:   " + "  ".join(repr(t["token"]) for t in data["promoted"]))
    print("suppresses: " + "  ".join(repr(t["token"]) for t in data["suppressed"]))
    for ctx in data["contexts"]:
        print(f"  {ctx['activation']:7.2f}  {ctx['text']}")
    if "self" in data:
        own = data["self"]
        print(f"in the model's words: {own['text']!r} (scale {own['scale']:g} x the mean residual norm; "
              f"self-similarity {own['self_similarity']:.3f}, first-token entropy {own['entropy']:.3f})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from steering.runtime.guidance import steers

    if (args.query is None) == (args.example is None):
        raise TinymorphError("features search takes a query or --example FILE (one of them).")
    if not 1 <= args.limit <= 200:
        raise TinymorphError("--limit must be between 1 and 200.")
    if args.example is not None:
        return _search_by_example(args)
    hits = _engine(args).search(args.query, args.limit)
    if args.json:
        _emit({"query": args.query, "results": [hit.to_dict() for hit in hits]})
        return 0
    if not hits:
        print(f"no feature mentions {args.query!r}")
    for hit in hits:
        print(f"#{hit.feature:<6} {hit.score:5.1f}  ⟨{hit.label}⟩  Amplify {steers(hit.steerability)}")
    return 0


def _search_by_example(args: argparse.Namespace) -> int:
    text = _read_text(args.example)
    if not text.strip():
        raise TinymorphError(f"The example {args.example} is empty.")
    found = _engine(args).features_by_example(text, top=args.limit)
    if args.json:
        _emit({"example": args.example, "results": [f.to_dict() for f in found]})
        return 0
    if not found:
        print("no labelled feature is specific to this text")
    for f in found:
        print(f"#{f.feature:<6} ⟨{f.label}⟩  score {f.score:6.1f}  peak {f.peak:5.2f}")
        for example in f.examples:
            print(f"         {example}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from steering.training.train import train_sae

    cfg = from_arguments(TrainConfig, args)
    update, close = _progress_bar(sys.stderr.isatty())
    bar: Any = None

    def on_step(point: dict[str, float]) -> None:
        nonlocal bar
        if bar is None:
            close()
            bar = tqdm(total=cfg.tokens, unit="tok", unit_scale=True, file=sys.stderr, leave=False)
        bar.n = int(point["tokens"])
        bar.set_postfix(loss=f"{point['loss']:.4f}", fvu=f"{point['fvu']:.3f}", l0=f"{point['l0']:.1f}",
                        dead=f"{point['dead']:.3f}", refresh=False)
        bar.refresh()

    try:
        summary = train_sae(cfg, args.corpus, args.out, model=args.model, device=args.device, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code, overwrite=args.overwrite, resume=args.resume,
                            plot=args.plot, half=args.half, on_load=update, on_step=on_step,
                            say=_say)
    finally:
        close()
        if bar is not None:
            bar.close()
    if summary is None:  # not rank 0 of a torchrun job
        return 0
    if args.json:
        _emit(asdict(summary))
    else:
        print(f"saved {summary.out}: {summary.tokens_seen:,} tokens in {summary.seconds:.0f} s; final FVU "
              f"{summary.final.get('fvu', float('nan')):.3f}, L0 {summary.final.get('l0', float('nan')):.1f}")
    return 0


def cmd_write_corpus(args: argparse.Namespace) -> int:
    from steering.training.recipe import write

    args.sae = "none"
    count = write(args.out, max_tokens=args.max_tokens, rows=args.rows, engine=_engine(args))
    _say(f"{count} topics written into {args.out}")
    return 0


def cmd_sae_stats(args: argparse.Namespace) -> int:
    """Statistics (for ranking and steering) and word labels of an SAE, written beside its weights: what `train-sae`
    writes, for an SAE trained elsewhere or on other text."""
    from steering.features.labels import write_stats_and_labels
    from steering.features.wordnet import WordNet
    from steering.training.corpus import load_corpus

    wordnet = WordNet.find(args.wordnet)
    if args.wordnet and wordnet is None:
        raise TinymorphError(f"{args.wordnet} has no WordNet files (index.noun and data.noun).")
    engine = _engine(args)
    sae = engine.require_sae("sae-stats")
    stream = load_corpus(engine.lm.tokenizer, args.corpus, separator=engine.lm.first_eos_id).tokens
    done = write_stats_and_labels(engine.lm, sae, stream, tokens=args.tokens, context=args.context, wordnet=wordnet,
                                  labels_only=args.labels_only)
    if args.json:
        _emit(done.to_dict())
    else:
        print(f"{done.folder}: statistics over {done.tokens:,} tokens; {done.labelled_in_words:,} of "
              f"{done.features:,} features have a label in words, {done.hintable_labels:,} good enough to hint")
    return 0


def cmd_import_labels(args: argparse.Namespace) -> int:
    """Neuronpedia's written explanations of an SAE's features as its labels (`steering.features.neuronpedia`),
    merged into the labels.json beside it (replaced atomically; nothing is written when the export is for another
    SAE)."""
    from steering.atomic import write_bytes
    from steering.engine import resolve_sae_path
    from steering.features.labels import LABELS_FILE, load_labels
    from steering.features.neuronpedia import check_matches, merge_labels, read_export
    from steering.sae.layouts import load_sae
    from steering.sae.releases import lookup

    path = resolve_sae_path(args.sae)
    if path is None:
        raise TinymorphError("import-labels needs an SAE: pass --sae PATH.")
    sae = load_sae(path, layer=args.sae_layer)
    named = None if Path(args.sae).expanduser().exists() else lookup(args.sae)
    on_neuronpedia = named.neuronpedia or "" if named is not None else ""
    model, _, sae_id = on_neuronpedia.partition("/")
    export = read_export(args.export, args.sae_id or sae_id or None)
    if model and export.model_id != model:
        raise TinymorphError(f"the export is for {export.model_id}/{export.sae_id}; {args.sae} is {on_neuronpedia} "
                             "on Neuronpedia. Nothing was written.")
    check_matches(export, sae.d_sae, sae.hook.layer if sae.hook is not None else None)
    merged, count = merge_labels(load_labels(path), export)
    target = (path if path.is_dir() else path.parent) / LABELS_FILE
    write_bytes(target, json.dumps(merged, ensure_ascii=False).encode())
    if args.json:
        _emit({"labels": str(target), "features": count, "source": merged["imported"]["source"]})
    else:
        print(f"{target}: {count:,} features labelled from {merged['imported']['source']}")
    return 0


PREPARE_MIN_TOKENS = 20_000
"""Corpus tokens `prepare` needs at least: below that, most features never fire in it and stay without words."""


def cmd_prepare(args: argparse.Namespace) -> int:
    """`sae-stats` (statistics, DiffMean directions, labels) then `calibrate --features hintable`, each step skipped
    when an earlier run did it (calibration resumes block by block), with an estimate of the first step's time."""
    import time

    from steering.evaluation.calibrate import calibrate_folder
    from steering.features.labels import load_labels, write_stats_and_labels
    from steering.sae.layouts import stats_folder
    from steering.training.corpus import load_corpus

    engine = _engine(args)
    sae = engine.require_sae("prepare")
    folder = stats_folder(sae)
    if folder is None:
        raise TinymorphError("prepare writes beside an SAE's files; this SAE was not read from files.")
    say = (lambda _m: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    summary: dict[str, Any] = {"sae": str(folder)}
    if args.redo or sae.max_act is None or load_labels(folder) is None:
        stream = load_corpus(engine.lm.tokenizer, args.corpus, separator=engine.lm.first_eos_id).tokens
        if len(stream) < PREPARE_MIN_TOKENS:
            raise TinymorphError(f"the corpus has {len(stream):,} tokens; prepare needs at least "
                                 f"{PREPARE_MIN_TOKENS:,} (about {PREPARE_MIN_TOKENS * 3 // 4:,} words) for features to "
                                 "fire often enough to be described. Nothing was written.")
        tokens = min(args.tokens, len(stream))
        t0 = time.perf_counter()
        engine.annotate(engine.lm.tokenizer.decode(stream[:512].tolist()))
        estimate = (time.perf_counter() - t0) * tokens / 512 * 1.5
        say(f"tinymorph: statistics and labels over {tokens:,} tokens, about {estimate / 60:.0f} min here; then "
            "the steerability of the features hints can show (it resumes if stopped)")
        done = write_stats_and_labels(engine.lm, sae, stream, tokens=tokens)
        summary.update(statistics="computed", **{k: v for k, v in done.to_dict().items() if k != "sae"})
    else:
        summary["statistics"] = "kept (computed before; --redo computes them again)"
    update, close = _progress_bar(not args.json and sys.stderr.isatty())
    try:
        calibrated = calibrate_folder(engine.lm, sae, "hintable", fast=engine.fast, redo=args.redo,
                                      progress=lambda n, total: update(f"steerability: {n:,}/{total:,} features"))
    except TinymorphError as exc:
        if "No features" not in str(exc):
            raise
        summary["steerability"] = "no feature is labelled well enough to be hinted"
    else:
        summary["steerability"] = {"features": calibrated.measured, "kept_from_before": calibrated.skipped}
    finally:
        close()
    if args.json:
        _emit(summary)
    else:
        print(f"{folder}: ready for the editor ({summary['statistics']}; steerability {summary['steerability']})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrated `add` strength per feature (`steering.evaluation.calibrate`), stored as `steer_scale` in the SAE's
    feature_stats.safetensors (other features keep theirs)."""
    from steering.evaluation.calibrate import calibrate_folder

    engine = _engine(args)
    sae = engine.require_sae("calibrate")
    update, close = _progress_bar(not args.json and sys.stderr.isatty())
    try:
        done = calibrate_folder(engine.lm, sae, args.features, fast=engine.fast, seed=args.seed,
                                reference=args.reference, batch=args.batch, redo=args.redo,
                                progress=lambda n, total: update(f"calibrating: {n:,}/{total:,} features"))
    finally:
        close()
    summary = done.to_dict()
    if args.json:
        _emit(summary)
    else:
        print(f"{done.folder}: {summary['carried_while_fluent']:,} of {summary['features']:,} features carry into "
              f"the text while it stays fluent at one of the strengths tried; {summary['cannot_steer']:,} cannot be "
              f"carried fluently (Amplify says so); {done.skipped:,} measured before were left as they were "
              f"(--redo measures them again); {done.measured:,} measured in all")
    return 0


def cmd_eval_labels(args: argparse.Namespace) -> int:
    from steering.evaluation.labels import evaluate_labels
    from steering.training.corpus import load_corpus

    engine = _engine(args)
    sae = engine.require_sae("eval-labels")
    labels = engine.labels()
    if labels is None:
        raise TinymorphError("eval-labels needs the SAE's labels.json (written by train-sae or sae-stats).")
    corpus = load_corpus(engine.lm.tokenizer, args.corpus, separator=engine.lm.first_eos_id)
    try:
        result = evaluate_labels(engine.lm, sae, labels, corpus.tokens, tokens=args.tokens, features=args.features,
                                 per_side=args.contexts, seed=args.seed,
                                 explain=lambda f: engine.self_explain(f).text, explain_features=args.self_explain)
    except ValueError as exc:
        raise TinymorphError(str(exc)) from None
    data = {"model": engine.lm.name, "sae": sae.source, **result.to_dict()}
    if args.json:
        _emit(data)
    else:
        for key, value in data.items():
            if key == "self_explanation":
                value = {k: v for k, v in value.items() if k != "examples"}
            print(f"{key:18} {value}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from steering.evaluation.reconstruction import evaluate
    from steering.training.corpus import load_corpus

    engine = _engine(args)
    sae = engine.require_sae("eval-sae")
    corpus = load_corpus(engine.lm.tokenizer, args.corpus, separator=engine.lm.first_eos_id,
                         max_tokens=args.tokens * 2 + args.context)
    result = evaluate(engine.lm, sae, corpus, tokens=args.tokens, context=args.context)
    data = {"model": engine.lm.name, "sae": sae.source, "hook": sae.hook.name if sae.hook else None,
            **result.to_dict()}
    if args.json:
        _emit(data)
    else:
        for key, value in data.items():
            print(f"{key:14} {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="tinymorph: %(message)s")
    try:
        return int(args.run(args))
    except BrokenPipeError:  # the reader went away (`tinymorph annotate F | head -1`): stop quietly
        _silence_stdout()
        return 0
    except TinymorphError as exc:
        sys.stderr.write(f"tinymorph: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("tinymorph: interrupted\n")
        return 130
    except Exception as exc:  # a bug, not bad input: one line, and the traceback with -v
        if args.verbose:
            raise
        sys.stderr.write(f"tinymorph: internal error: {type(exc).__name__}: {exc} (run with -v for details)\n")
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
