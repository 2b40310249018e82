"""Training SAEs on a model's residual stream: TopK (+AuxK), ReLU + decoder-weighted L1, JumpReLU (STE).

Activations stream from the model over the corpus (the first position of every sequence is left out: its residual
norm is outsized) through a bounded shuffle buffer. Inputs are scaled so their mean norm is sqrt(d_in) while
training; the scale is folded into the biases on saving, so the saved SAE reads raw residuals and its decoder rows
keep their trained norms (unit norm for TopK). Runs under `torchrun` with DDP: each rank reads its own shard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from .corpus import Corpus, CorpusError
from .errors import TinymorphError
from .hooks import capture_residual
from .models import LoadedModel
from .sae import SAE, SAELENS_CFG, HookPoint

log = logging.getLogger(__name__)

TRAIN_ARCHS = ("topk", "relu", "jumprelu")
CHECKPOINT_SUFFIX = ".checkpoint"


class TrainError(TinymorphError):
    """Training cannot start or go on."""


class TrainingInterrupted(TinymorphError):
    """Ctrl-C: a checkpoint was saved and `--resume` continues."""


@dataclass
class TrainConfig:
    layer: int = 0
    """Block whose residual stream the SAE reads."""
    site: str = "resid_post"
    """`resid_post` (output of the block) or `resid_pre` (its input)."""
    arch: str = "topk"
    """`topk` (with AuxK), `relu` (L1 weighted by decoder norms) or `jumprelu` (straight-through threshold)."""
    k: int = 32
    """Active latents per token for TopK."""
    expansion: int = 8
    """d_sae = expansion * d_in."""
    tokens: int = 1_000_000
    """Activations to train on (all ranks together)."""
    context: int = 128
    """Tokens per sequence fed to the model."""
    batch_size: int = 4096
    """Activations per optimiser step (all ranks together)."""
    model_batch: int = 8
    """Sequences per model forward pass."""
    buffer_size: int = 65_536
    """Activations held in the shuffle buffer per rank; memory = buffer_size * d_in * 4 bytes."""
    lr: float | None = None
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 2**14) (TopK), 5e-4 otherwise."""
    sparsity: float | None = None
    """L1 coefficient (relu, default 5e-3) or L0 coefficient (jumprelu, default 2e-3)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (TopK)."""
    dead_tokens: int = 200_000
    """A latent is dead after this many training tokens without firing (AuxK revives dead latents)."""
    warmup_fraction: float = 0.05
    """Share of steps with a linear learning-rate (and sparsity-coefficient) warm-up."""
    decay_fraction: float = 0.2
    """Share of final steps over which the learning rate decays linearly to 0."""
    seed: int = 0
    """Seed for initialisation and shuffling."""
    stats_tokens: int = 100_000
    """Tokens of the corpus read after training for max_act, frequency and top contexts."""
    top_contexts: int = 8
    """Top activating contexts kept per feature in labels.json."""
    allow_repeat: bool = False
    """Cycle the corpus when it holds fewer tokens than requested (otherwise that is an error)."""
    log_every: int = 10
    """Steps between progress updates and history points."""

    def __post_init__(self) -> None:
        if self.arch not in TRAIN_ARCHS:
            raise TrainError(f"--arch must be one of {', '.join(TRAIN_ARCHS)}, not {self.arch!r}.")
        for name in ("k", "expansion", "tokens", "context", "batch_size", "model_batch", "buffer_size"):
            if getattr(self, name) <= 0:
                raise TrainError(f"{name} must be positive, not {getattr(self, name)}.")
        if self.context < 2:
            raise TrainError("context must be at least 2 tokens (the first position is left out).")
        if self.buffer_size < self.batch_size:
            raise TrainError(f"buffer_size ({self.buffer_size}) must be at least batch_size ({self.batch_size}).")


@dataclass
class TrainResult:
    sae: SAE
    history: list[dict[str, float]] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- distributed
def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_init_distributed(device: torch.device) -> bool:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# ----------------------------------------------------------------------------------------------- the model
class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); the threshold gets a straight-through gradient through a rectangle kernel."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = ((pre - threshold).abs() < bw / 2).to(grad.dtype) / bw
        grad_theta = (-threshold * kernel * grad).reshape(-1, pre.shape[-1]).sum(0)
        return grad * (pre > threshold), grad_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta) for the L0 penalty, straight-through to the threshold only."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = ((pre - threshold).abs() < bw / 2).to(grad.dtype) / bw
        return None, (-kernel * grad).reshape(-1, pre.shape[-1]).sum(0), None


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: squared error over the variance of x about its batch mean."""
    return (x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


class TrainingSAE(nn.Module):
    """Trainable weights and the loss of one architecture; works on normalised inputs."""

    def __init__(self, d_in: int, d_sae: int, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_in, self.d_sae = d_in, d_sae
        w_dec = torch.randn(d_sae, d_in)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        if cfg.arch == "relu":
            w_dec *= 0.1
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if cfg.arch == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(0.001)))
        self.bandwidth = 0.001
        self.sparsity_scale = 1.0  # warm-up factor for the sparsity coefficient

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        if self.cfg.arch == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
        if self.cfg.arch == "jumprelu":
            return pre * (pre > self.log_threshold.exp())
        return torch.relu(pre)

    def forward(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pre = self.pre_acts(x)
        if cfg.arch == "topk":
            top = pre.topk(cfg.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            x_hat = acts @ self.W_dec + self.b_dec  # dense beats gathering k rows per token on CPU and GPU
            fired = (acts > 0).any(0)
            l0 = (acts > 0).sum(-1).float().mean()
            recon = fvu(x, x_hat)
            loss = recon + cfg.aux_coefficient * self._aux_loss(x, x_hat, pre, dead)
        else:
            if cfg.arch == "jumprelu":
                threshold = self.log_threshold.exp()
                acts = _JumpReLU.apply(pre, threshold, self.bandwidth)
                penalty = _Step.apply(pre, threshold, self.bandwidth).sum(-1).mean()
                coefficient = 2e-3 if cfg.sparsity is None else cfg.sparsity
            else:
                acts = torch.relu(pre)
                penalty = (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
                coefficient = 5e-3 if cfg.sparsity is None else cfg.sparsity
            x_hat = acts @ self.W_dec + self.b_dec
            fired = (acts > 0).any(0)
            l0 = (acts > 0).sum(-1).float().mean()
            recon = fvu(x, x_hat)
            loss = recon + coefficient * self.sparsity_scale * penalty
        return loss, {"fvu": recon.detach(), "l0": l0.detach(), "fired": fired}

    def _aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: the top k_aux dead latents reconstruct the residual error of the live ones."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return x.new_zeros(())
        k_aux = min(self.d_in // 2, n_dead)
        masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
        top = masked.topk(k_aux, dim=-1)
        err_hat = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values)) @ self.W_dec
        return fvu((x - x_hat).detach(), err_hat)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        if self.cfg.arch == "topk":
            self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Drop the gradient component along each (unit) decoder row, so the norm constraint is kept exactly."""
        if self.cfg.arch == "topk" and self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec.data
            g -= (g * w).sum(1, keepdim=True) * w

    def to_sae(self, hook: HookPoint, scale: float, metadata: dict[str, Any]) -> SAE:
        """An inference SAE reading raw residuals: the input scale s is folded into the biases (and threshold)."""
        arch = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}[self.cfg.arch]
        sae = SAE(self.d_in, self.d_sae, arch, k=self.cfg.k if arch == "topk" else None, hook=hook,
                  metadata=metadata)
        weights = {
            "W_enc": self.W_enc.detach().cpu(),
            "W_dec": self.W_dec.detach().cpu(),
            "b_enc": self.b_enc.detach().cpu() / scale,
            "b_dec": self.b_dec.detach().cpu() / scale,
        }
        if arch == "jumprelu":
            weights["threshold"] = self.log_threshold.detach().exp().cpu() / scale
        sae.load_weights(weights, "trained SAE")
        return sae


# ----------------------------------------------------------------------------------------------- activations
def activation_stream(
    lm: LoadedModel, hook: HookPoint, corpus: Corpus, cfg: TrainConfig, *, start: int = 0
) -> Iterator[tuple[int, torch.Tensor]]:
    """(next sequence position, activations `[model_batch * (context - 1), d]`) for this rank; position 0 dropped."""
    rank, world = dist_info()
    batch: list[torch.Tensor] = []
    for index, ids in corpus.sequences(cfg.context, start=start, rank=rank, world=world, repeat=cfg.allow_repeat):
        batch.append(ids)
        if len(batch) == cfg.model_batch:
            yield index + 1, _residuals(lm, hook, torch.stack(batch))
            batch = []
    if batch:
        yield corpus.n_sequences(cfg.context), _residuals(lm, hook, torch.stack(batch))


@torch.inference_mode()
def _residuals(lm: LoadedModel, hook: HookPoint, ids: torch.Tensor) -> torch.Tensor:
    resid = capture_residual(lm.model, lm.blocks, hook, ids.to(lm.device))
    return resid[:, 1:].reshape(-1, resid.shape[-1]).float()


class ShuffleBuffer:
    """A bounded pool of activations: filled, shuffled, half served as batches, refilled."""

    def __init__(self, source: Iterator[tuple[int, torch.Tensor]], capacity: int, d: int, device: torch.device,
                 generator: torch.Generator) -> None:
        self.source = source
        self.store = torch.empty(capacity, d, device=device)
        self.capacity = capacity
        self.size = 0
        self.generator = generator
        self.position = 0  # next unread sequence position of the source
        self.pending: torch.Tensor | None = None  # activations read but not yet in the store
        self.exhausted = False

    def _fill(self) -> None:
        while self.size < self.capacity:
            if self.pending is None or len(self.pending) == 0:
                try:
                    self.position, self.pending = next(self.source)
                except StopIteration:
                    self.exhausted = True
                    return
            n = min(len(self.pending), self.capacity - self.size)
            self.store[self.size : self.size + n] = self.pending[:n].to(self.store.device)
            self.pending = self.pending[n:]
            self.size += n

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        while True:
            self._fill()
            if self.size < batch_size:
                return
            perm = torch.randperm(self.size, generator=self.generator).to(self.store.device)
            self.store[: self.size] = self.store[perm]
            serve = max(batch_size, (self.size // 2) // batch_size * batch_size) if not self.exhausted else (
                self.size // batch_size * batch_size)
            for i in range(0, serve, batch_size):
                yield self.store[i : i + batch_size]
            remaining = self.size - serve
            self.store[:remaining] = self.store[serve : self.size].clone()
            self.size = remaining


# ----------------------------------------------------------------------------------------------- training
def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_fraction))
    decay = int(total * cfg.decay_fraction)
    if step < warm:
        return (step + 1) / warm
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


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


def train_on_activations(
    source: Callable[[int], Iterator[tuple[int, torch.Tensor]]],
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
    """The training loop over any activation source: `source(start)` yields (next position, activations [n, d_in])."""
    rank, world = dist_info()
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = TrainingSAE(d_in, cfg.expansion * d_in, cfg).to(device)
    lr = cfg.lr or (2e-4 / math.sqrt(model.d_sae / 2**14) if cfg.arch == "topk" else 5e-4)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    step, tokens_seen, start, scale = 0, 0, 0, 0.0
    since_fired = torch.zeros(model.d_sae, dtype=torch.long, device=device)
    history: list[dict[str, float]] = []
    if resume:
        if checkpoint is None or not (checkpoint / "state.json").is_file():
            raise TrainError(f"Nothing to resume: no checkpoint at {checkpoint}.")
        step, tokens_seen, start, scale, history = _load_checkpoint(checkpoint, model, optimiser, since_fired, cfg)
    per_rank_batch = max(1, cfg.batch_size // world)
    total_steps = max(1, cfg.tokens // (per_rank_batch * world))
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank + step)
    buffer = ShuffleBuffer(source(start), cfg.buffer_size, d_in, device, generator)
    log.info("shuffle buffer: %s activations x %s x 4 B = %.0f MB per rank", f"{cfg.buffer_size:,}", d_in,
             cfg.buffer_size * d_in * 4 / 2**20)
    if scale == 0.0:
        buffer._fill()
        if buffer.size == 0:
            raise CorpusError("The corpus gave no activations.")
        sample = buffer.store[: buffer.size]
        stats = _all_reduce(torch.stack([sample.norm(dim=1).sum(), torch.tensor(float(len(sample)), device=device)]))
        scale = math.sqrt(d_in) / float(stats[0] / stats[1])
        mean = _all_reduce(sample.mean(0) * scale) / world
        with torch.no_grad():
            model.b_dec.copy_(mean)
            for p in model.parameters():  # identical start on every rank
                if dist.is_initialized():
                    dist.broadcast(p.data, 0)
    ddp: nn.Module = model
    if dist.is_initialized():
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    began = time.perf_counter()
    batches = buffer.batches(per_rank_batch)
    # Tiny gradients underflow into denormals, which make CPU matmuls many times slower: flush them to zero.
    flushed = torch.set_flush_denormal(True)
    try:
        while step < total_steps:
            try:
                x = next(batches) * scale
            except StopIteration:
                break
            for group in optimiser.param_groups:
                group["lr"] = lr * _lr_factor(step, total_steps, cfg)
            model.sparsity_scale = min(1.0, (step + 1) / max(1, int(total_steps * cfg.warmup_fraction)))
            dead = since_fired >= cfg.dead_tokens
            loss, metrics = ddp(x, dead)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            model.project_decoder_grad()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            model.normalise_decoder()
            fired = _all_reduce(metrics["fired"].to(torch.int32), dist.ReduceOp.MAX if dist.is_initialized() else None)
            since_fired += per_rank_batch * world
            since_fired[fired.bool()] = 0
            step += 1
            tokens_seen += per_rank_batch * world
            if step % cfg.log_every == 0 or step == total_steps:
                point = {"step": step, "tokens": tokens_seen, "loss": float(loss.detach()), "fvu": float(metrics["fvu"]),
                         "l0": float(metrics["l0"]), "dead": float((since_fired >= cfg.dead_tokens).float().mean()),
                         "lr": optimiser.param_groups[0]["lr"]}
                history.append(point)
                if progress is not None and rank == 0:
                    progress(point)
    except KeyboardInterrupt:
        if checkpoint is not None and rank == 0:
            _save_checkpoint(checkpoint, model, optimiser, since_fired, cfg, step, tokens_seen,
                             buffer.position, scale, history)
        raise TrainingInterrupted(
            f"Interrupted after {tokens_seen:,} tokens; checkpoint saved to {checkpoint}. Run again with --resume."
        ) from None
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    if step < total_steps and not cfg.allow_repeat:
        log.warning("The corpus ran out after %s tokens (of %s requested).", f"{tokens_seen:,}", f"{cfg.tokens:,}")
    dead_fraction = float((since_fired >= cfg.dead_tokens).float().mean())
    meta = dict(metadata or {})
    meta["tinymorph"] = {
        **meta.get("tinymorph", {}),
        "training": {**asdict(cfg), "lr": lr, "input_scale": scale, "world_size": world},
        "tokens_seen": tokens_seen,
        "seed": cfg.seed,
        "final": history[-1] if history else {},
        "dead_fraction_at_end": dead_fraction,
        "seconds": round(time.perf_counter() - began, 1),
    }
    sae = model.to_sae(hook, scale, meta)
    return TrainResult(sae, history, tokens_seen, time.perf_counter() - began)


# ----------------------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(folder: Path, model: TrainingSAE, optimiser: torch.optim.Optimizer, since_fired: torch.Tensor,
                     cfg: TrainConfig, step: int, tokens_seen: int, position: int, scale: float,
                     history: list[dict[str, float]]) -> None:
    """Weights and Adam moments in safetensors, counters in JSON; written to a temporary folder, then renamed."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = optimiser.state_dict()
    names = [n for n, _ in model.named_parameters()]
    for idx, st in state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"adam.{names[idx]}.{key}"] = value.detach().cpu().reshape(-1) if value.ndim == 0 else (
                    value.detach().cpu().contiguous())
    tensors["since_fired"] = since_fired.cpu()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({
        "step": step, "tokens_seen": tokens_seen, "position": position, "scale": scale, "history": history,
        "config": asdict(cfg),
    }))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_checkpoint(folder: Path, model: TrainingSAE, optimiser: torch.optim.Optimizer, since_fired: torch.Tensor,
                     cfg: TrainConfig) -> tuple[int, int, int, float, list[dict[str, float]]]:
    state = json.loads((folder / "state.json").read_text())
    saved = state["config"]
    for key in ("arch", "layer", "site", "expansion", "k", "context"):
        if saved.get(key) != getattr(cfg, key):
            raise TrainError(f"The checkpoint was made with {key}={saved.get(key)!r}, not {getattr(cfg, key)!r}.")
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    names = [n for n, _ in model.named_parameters()]
    opt_state = optimiser.state_dict()
    opt_state["state"] = {}
    for idx, name in enumerate(names):
        entry = {key: tensors[f"adam.{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq")
                 if f"adam.{name}.{key}" in tensors}
        if entry:
            if "step" in entry:
                entry["step"] = entry["step"].reshape(())
            opt_state["state"][idx] = entry
    optimiser.load_state_dict(opt_state)
    since_fired.copy_(tensors["since_fired"])
    return state["step"], state["tokens_seen"], state["position"], state["scale"], state["history"]


def out_folder_has_sae(folder: Path) -> bool:
    return (folder / SAELENS_CFG).is_file()
