"""Training an SAE for a model on a corpus, from the output checks to the saved folder: the library function
behind `tinymorph train-sae` (`train_sae`), and `train`, the loop over the model's activations.

The pieces live beside it: the training SAE and its losses in `training_sae`, the activation stream and shuffle
buffer in `activations`, the loop and its checkpoints in `trainer`, the rank helpers in `distributed`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steering.atomic import write_bytes
from steering.config import TrainConfig
from steering.errors import TinymorphError, TrainError
from steering.runtime.models import LoadedModel, Progress, _no_progress, load_model
from steering.sae.autoencoder import HookPoint
from steering.sae.layouts import SAELENS_CFG

from .activations import activation_stream
from .corpus import Corpus, CorpusError, load_corpus
from .distributed import dist_info, leave_distributed, maybe_init_distributed
from .trainer import TrainResult, train_on_activations

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".checkpoint"


def train(
    lm: LoadedModel,
    corpus: Corpus,
    cfg: TrainConfig,
    *,
    progress: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train an SAE on `lm`'s residual stream over `corpus`. Ctrl-C saves `checkpoint` and raises TrainingInterrupted."""
    if not 0 <= cfg.layer < lm.n_layers:
        raise TrainError(f"Layer {cfg.layer} is out of range: {lm.name} has layers 0 to {lm.n_layers - 1}.")
    available = corpus.n_sequences(cfg.context) * (cfg.context - 1)
    if available < cfg.tokens and not cfg.allow_repeat:
        raise CorpusError(
            f"The corpus gives {available:,} training tokens ({corpus.n_tokens:,} tokens in sequences of "
            f"{cfg.context}, first positions left out), fewer than the {cfg.tokens:,} requested. Add text, lower "
            "--tokens, or pass --allow-repeat to cycle through it."
        )
    hook = HookPoint(cfg.layer, cfg.site)
    return train_on_activations(
        lambda start: activation_stream(lm, hook, corpus, cfg, start=start), lm.d_model, hook, cfg,
        device=lm.device, progress=progress, checkpoint=checkpoint, resume=resume, metadata=metadata)


@dataclass(frozen=True)
class TrainSummary:
    """What a finished `train_sae` reports."""

    out: str
    tokens_seen: int
    seconds: float
    tokens_per_second: float
    final: dict[str, float]
    dead_fraction_at_end: float


def recipe_sources(corpus_paths: list[str]) -> dict[str, Any] | None:
    """The packages (with licences and hashes) of a corpus built by `steering.training.recipe`, from the `sources.json`
    beside or above the corpus folder, when there is one."""
    from .recipe import SOURCES

    for spec in corpus_paths:
        for folder in (Path(spec), Path(spec).parent):
            path = folder / SOURCES
            if path.is_file():
                try:
                    packages = json.loads(path.read_text(encoding="utf-8")).get("packages")
                except (OSError, ValueError, AttributeError):
                    return None
                return packages if isinstance(packages, dict) else None
    return None


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an output that is a file, or a folder holding an SAE that `overwrite` does not allow to replace."""
    if out.exists() and not out.is_dir():
        raise TinymorphError(f"{out} exists and is not a folder.")
    if (out / SAELENS_CFG).is_file() and not overwrite:
        raise TinymorphError(f"{out} already holds an SAE; pass --overwrite to replace it.")


def train_sae(
    cfg: TrainConfig,
    corpus_paths: list[str],
    out: str | Path,
    *,
    model: str = "default",
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    plot: str | Path | None = None,
    half: bool = False,
    on_load: Progress = _no_progress,
    on_step: Callable[[dict[str, float]], None] | None = None,
    say: Callable[[str], None] = log.info,
) -> TrainSummary | None:
    """Train an SAE and save it to `out` (SAELens layout, feature statistics, labels.json, training curves when
    `plot` names a PNG), atomically; the checkpoint beside `out` is removed once it is saved. Under `torchrun`
    every rank trains and rank 0 saves; the other ranks return None."""
    out = Path(out)
    check_output(out, overwrite=overwrite)
    if plot is not None:
        from .plot import require_matplotlib

        require_matplotlib()
    lm = load_model(model, device, dtype, trust_remote_code=trust_remote_code, progress=on_load)
    maybe_init_distributed(lm.device)
    rank, world = dist_info()
    corpus = load_corpus(lm.tokenizer, corpus_paths, separator=lm.first_eos_id)
    say(f"{corpus.n_tokens:,} corpus tokens from {len(corpus.files)} files; training {cfg.arch} {cfg.expansion}x "
        f"({cfg.expansion * lm.d_model:,} latents) on blocks.{cfg.layer}.hook_{cfg.site} for {cfg.tokens:,} tokens; "
        f"shuffle buffer {cfg.buffer_size:,} x {lm.d_model} x 4 B = {cfg.buffer_size * lm.d_model * 4 / 2**20:.0f} "
        f"MB per rank ({world} rank{'s' * (world > 1)})")
    model_spec = lm.source.location if model != "default" else \
        f"default ({lm.name}, {Path(lm.source.location).name})"
    about: dict[str, Any] = {"model": model_spec, "corpus": corpus.provenance()}
    sources = recipe_sources(corpus_paths)
    if sources is not None:
        about["sources"] = sources
    meta = {"model_name": lm.name, "tinymorph": about}
    checkpoint = out.with_name(out.name + CHECKPOINT_SUFFIX)
    result = train(lm, corpus, cfg, progress=on_step, checkpoint=checkpoint, resume=resume, metadata=meta)
    leave_distributed()  # the rest is rank 0's alone
    if rank != 0:
        return None
    from steering.features.labels import LABELS_FILE, describe_sae
    from steering.features.wordnet import WordNet

    sae = result.sae.to(lm.device)
    say(f"feature statistics and labels over {cfg.stats_tokens:,} tokens")
    labels = describe_sae(lm, sae, corpus.tokens, context=cfg.context, tokens=cfg.stats_tokens,
                          top=cfg.top_contexts, wordnet=WordNet.find())
    extra = {LABELS_FILE: json.dumps(labels, ensure_ascii=False).encode()}
    if plot is not None:
        from .plot import curves_png

        png = curves_png(result.history, f"{lm.name} · {sae.hook} · {cfg.arch}")
        extra["training_curves.png"] = png
        write_bytes(plot, png)
    sae.metadata.setdefault("tinymorph", {})["stats_tokens"] = labels["tokens"]
    sae.save(out, dtype=torch.float16 if half else None, overwrite=True, extra=extra)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return TrainSummary(str(out), result.tokens_seen, round(result.seconds, 1),
                        round(result.tokens_seen / max(result.seconds, 1e-9), 1),
                        result.history[-1] if result.history else {},
                        sae.metadata["tinymorph"]["dead_fraction_at_end"])
