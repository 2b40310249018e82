"""The SAE training loop over any source of activations, and its checkpoints.

Inputs are scaled so their mean norm is sqrt(d_in) while training; the scale is folded into the biases on saving,
so the saved SAE reads raw residuals and its decoder rows keep their trained norms (unit norm for TopK). Under
DDP every rank starts from rank 0's weights and reads its own activations.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from steering.atomic import replacing
from steering.config import TrainConfig
from steering.errors import TrainError, TrainingInterrupted
from steering.sae.autoencoder import SAE, HookPoint

from .activations import ShuffleBuffer
from .corpus import CorpusError
from .distributed import all_max, all_reduce, broadcast_, dist_info, is_distributed
from .trainable import TrainingSAE

log = logging.getLogger(__name__)

SourceFactory = Callable[[int], Iterator[tuple[int, torch.Tensor]]]
"""`source(start)` yields (next position, activations [n, d_in]) from sequence position `start` on."""


@dataclass
class TrainResult:
    sae: SAE
    history: list[dict[str, float]] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0


@dataclass
class _Progress:
    """Where training stands: what a checkpoint keeps besides the weights and Adam moments."""

    step: int = 0
    tokens_seen: int = 0
    position: int = 0
    scale: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_fraction))
    decay = int(total * cfg.decay_fraction)
    if step < warm:
        return (step + 1) / warm
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def _input_scale(buffer: ShuffleBuffer, model: TrainingSAE, d_in: int, device: torch.device) -> float:
    """The factor that gives inputs a mean norm of sqrt(d_in), from the first buffer; sets b_dec to their mean and
    gives every rank rank 0's initial weights."""
    buffer.fill()
    if buffer.size == 0:
        raise CorpusError("The corpus gave no activations.")
    sample = buffer.store[: buffer.size]
    stats = all_reduce(torch.stack([sample.norm(dim=1).sum(), torch.tensor(float(len(sample)), device=device)]))
    scale = math.sqrt(d_in) / float(stats[0] / stats[1])
    mean = all_reduce(sample.mean(0) * scale) / dist_info()[1]
    with torch.no_grad():
        model.b_dec.copy_(mean)
        for p in model.parameters():
            broadcast_(p.data)
    return scale


def train_on_activations(
    source: SourceFactory,
    d_in: int,
    hook: HookPoint,
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train an SAE on `source`. Ctrl-C saves `checkpoint` and raises TrainingInterrupted; `resume` continues."""
    rank, world = dist_info()
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = TrainingSAE(d_in, cfg.expansion * d_in, cfg).to(device)
    lr = cfg.lr or (2e-4 / math.sqrt(model.d_sae / 2**14) if cfg.arch == "topk" else 5e-4)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(model.d_sae, dtype=torch.long, device=device)
    at = _Progress()
    if resume:
        if checkpoint is None or not (checkpoint / "state.json").is_file():
            raise TrainError(f"Nothing to resume: no checkpoint at {checkpoint}.")
        at = _load_checkpoint(checkpoint, model, optimiser, since_fired, cfg)
    per_rank_batch = max(1, cfg.batch_size // world)
    total_steps = max(1, cfg.tokens // (per_rank_batch * world))
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + at.step)
    buffer = ShuffleBuffer(source(at.position), cfg.buffer_size, d_in, device, generator)
    log.info("shuffle buffer: %s activations x %s x 4 B = %.0f MB per rank", f"{cfg.buffer_size:,}", d_in,
             cfg.buffer_size * d_in * 4 / 2**20)
    if at.scale == 0.0:
        at.scale = _input_scale(buffer, model, d_in, device)
    ddp: nn.Module = model
    if is_distributed():
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    began = time.perf_counter()
    batches = buffer.batches(per_rank_batch)
    # Tiny gradients underflow into denormals, which make CPU matmuls many times slower: flush them to zero.
    flushed = torch.set_flush_denormal(True)
    try:
        while at.step < total_steps:
            try:
                x = next(batches) * at.scale
            except StopIteration:
                break
            for group in optimiser.param_groups:
                group["lr"] = lr * _lr_factor(at.step, total_steps, cfg)
            model.sparsity_scale = min(1.0, (at.step + 1) / max(1, int(total_steps * cfg.warmup_fraction)))
            loss, metrics = ddp(x, since_fired >= cfg.dead_tokens)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            model.project_decoder_grad()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            model.normalise_decoder()
            fired = all_max(metrics["fired"].to(torch.int32))
            since_fired += per_rank_batch * world
            since_fired[fired.bool()] = 0
            at.step += 1
            at.tokens_seen += per_rank_batch * world
            if at.step % cfg.log_every == 0 or at.step == total_steps:
                point = {"step": at.step, "tokens": at.tokens_seen, "loss": float(loss.detach()),
                         "fvu": float(metrics["fvu"]), "l0": float(metrics["l0"]),
                         "dead": float((since_fired >= cfg.dead_tokens).float().mean()),
                         "lr": optimiser.param_groups[0]["lr"]}
                at.history.append(point)
                if progress is not None and rank == 0:
                    progress(point)
    except KeyboardInterrupt:
        if checkpoint is not None and rank == 0:
            at.position = buffer.position
            _save_checkpoint(checkpoint, model, optimiser, since_fired, cfg, at)
        raise TrainingInterrupted(
            f"Interrupted after {at.tokens_seen:,} tokens; checkpoint saved to {checkpoint}. Run again with --resume."
        ) from None
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    if at.step < total_steps and not cfg.allow_repeat:
        log.warning("The corpus ran out after %s tokens (of %s requested).", f"{at.tokens_seen:,}", f"{cfg.tokens:,}")
    meta = dict(metadata or {})
    meta["tinymorph"] = {
        **meta.get("tinymorph", {}),
        "training": {**asdict(cfg), "lr": lr, "input_scale": at.scale, "world_size": world},
        "tokens_seen": at.tokens_seen,
        "seed": cfg.seed,
        "final": at.history[-1] if at.history else {},
        "dead_fraction_at_end": float((since_fired >= cfg.dead_tokens).float().mean()),
        "seconds": round(time.perf_counter() - began, 1),
    }
    sae = model.to_sae(hook, at.scale, meta)
    return TrainResult(sae, at.history, at.tokens_seen, time.perf_counter() - began)


# ----------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(folder: Path, model: TrainingSAE, optimiser: torch.optim.Optimizer, since_fired: torch.Tensor,
                     cfg: TrainConfig, at: _Progress) -> None:
    """Weights and Adam moments in safetensors, counters in JSON, written atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for idx, st in optimiser.state_dict()["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"adam.{names[idx]}.{key}"] = value.detach().cpu().reshape(-1) if value.ndim == 0 else (
                    value.detach().cpu().contiguous())
    tensors["since_fired"] = since_fired.cpu()
    with replacing(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**asdict(at), "config": asdict(cfg)}))


def _load_checkpoint(folder: Path, model: TrainingSAE, optimiser: torch.optim.Optimizer, since_fired: torch.Tensor,
                     cfg: TrainConfig) -> _Progress:
    state = json.loads((folder / "state.json").read_text())
    saved = state["config"]
    for key in ("arch", "layer", "site", "expansion", "k", "context"):
        if saved.get(key) != getattr(cfg, key):
            raise TrainError(f"The checkpoint was made with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}.")
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = optimiser.state_dict()
    opt_state["state"] = {}
    for idx, (name, _) in enumerate(model.named_parameters()):
        entry = {key: tensors[f"adam.{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")
                 if f"adam.{name}.{key}" in tensors}
        if entry:
            if "step" in entry:
                entry["step"] = entry["step"].reshape(())
            opt_state["state"][idx] = entry
    optimiser.load_state_dict(opt_state)
    since_fired.copy_(tensors["since_fired"])
    return _Progress(state["step"], state["tokens_seen"], state["position"], state["scale"], state["history"])
