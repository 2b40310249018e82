"""The SAE while it trains: its weights, encoder and losses for TopK (+AuxK), ReLU + decoder-weighted L1 and
JumpReLU (straight-through threshold). It works on normalised inputs; `to_sae` folds the input scale back in."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from steering.config import TrainConfig
from steering.sae.autoencoder import SAE, HookPoint

BANDWIDTH = 0.001
"""Width of the rectangle kernel of the JumpReLU straight-through estimator."""


class _Step(torch.autograd.Function):
    """H(pre - theta). The threshold gets the straight-through gradient -K(pre - theta) / bandwidth (K a rectangle
    of that width); `pre` gets none."""

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


def jump_relu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pre * H(pre - theta), H(pre - theta)) with one straight-through kernel for both: the activations pass
    gradient to `pre` where they fire and -theta K / bandwidth to the threshold; the step (the L0 penalty) passes
    -K / bandwidth to the threshold."""
    step = _Step.apply(pre, threshold, bandwidth)
    gate = step.detach()
    # value: pre * H; gradient to theta: theta * d(step)/d(theta), through the zero-valued (step - gate) term
    acts = pre * gate + threshold.detach() * (step - gate)
    return acts, step


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
        self.sparsity_scale = 1.0  # warm-up factor for the sparsity coefficient

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def forward(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        pre = self.pre_acts(x)
        if cfg.arch == "topk":
            top = pre.topk(cfg.k, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            x_hat = acts @ self.W_dec + self.b_dec  # dense beats gathering k rows per token on CPU and GPU
            recon = fvu(x, x_hat)
            loss = recon + cfg.aux_coefficient * self._aux_loss(x, x_hat, pre, dead)
        else:
            if cfg.arch == "jumprelu":
                acts, step = jump_relu(pre, self.log_threshold.exp(), BANDWIDTH)
                penalty = step.sum(-1).mean()
                coefficient = 2e-3 if cfg.sparsity is None else cfg.sparsity
            else:
                acts = torch.relu(pre)
                penalty = (acts * self.W_dec.norm(dim=1)).sum(-1).mean()
                coefficient = 5e-3 if cfg.sparsity is None else cfg.sparsity
            x_hat = acts @ self.W_dec + self.b_dec
            recon = fvu(x, x_hat)
            loss = recon + coefficient * self.sparsity_scale * penalty
        fired = acts > 0
        return loss, {"fvu": recon.detach(), "l0": fired.sum(-1).float().mean().detach(), "fired": fired.any(0)}

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
