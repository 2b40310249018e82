"""Evaluating an SAE on held-out text: reconstruction (FVU, L0, dead latents) and downstream CE loss.

The first position of every sequence is left out of all metrics and is never replaced: its residual norm is
outsized in most models. CE loss is measured three times per batch: clean, with the SAE's reconstruction spliced in
at the hook, and with the hook's residual zero-ablated; CE recovered = (CE_ablated - CE_sae) / (CE_ablated - CE_clean).

FVU over all tokens is dominated by the few tokens with massive residual norms (beyond the first position, models
keep some at delimiter tokens), which SAEs reconstruct well; `fvu_typical` leaves out tokens whose norm is above
`MASSIVE` times the median and says how many (`massive_tokens`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from steering.runtime.hooks import capture_residual, residual_hook
from steering.runtime.models import LoadedModel
from steering.sae.autoencoder import SAE
from steering.training.corpus import Corpus, CorpusError

MASSIVE = 5.0
"""A token's residual norm above this multiple of the median counts as a massive activation."""


@dataclass(frozen=True)
class EvalResult:
    tokens: int
    fvu: float
    mse: float
    l0: float
    dead_fraction: float
    ce_clean: float
    ce_sae: float
    ce_ablated: float
    ce_recovered: float
    fvu_typical: float = float("nan")
    massive_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token CE over predictions made from positions 1.. (the first position's is left out)."""
    pred = logits[:, 1:-1].float()
    target = ids[:, 2:]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
    return float(loss), target.numel()


@torch.inference_mode()
def evaluate(lm: LoadedModel, sae: SAE, corpus: Corpus, *, tokens: int = 20_000, context: int = 128,
             batch: int = 8) -> EvalResult:
    assert sae.hook is not None
    if corpus.n_sequences(context) == 0:
        raise CorpusError(f"The evaluation corpus holds {corpus.n_tokens} tokens, less than one sequence of {context}.")
    hook = sae.hook
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    sq_err = total_var_num = l0_sum = 0.0
    x_sum = torch.zeros(sae.d_in, dtype=torch.float64)
    x_sq = 0.0
    n = 0
    ce = {"clean": 0.0, "sae": 0.0, "ablated": 0.0}
    ce_n = 0
    rows: list[torch.Tensor] = []
    errors: list[torch.Tensor] = []
    seqs = [ids for _i, ids in corpus.sequences(context)]
    for first in range(0, len(seqs), batch):
        if n >= tokens:
            break
        ids = torch.stack(seqs[first : first + batch]).to(lm.device)
        resid = capture_residual(lm.model, lm.blocks, hook, ids)
        x = resid[:, 1:].float()
        acts = sae.encode(x.to(sae.device, sae.dtype))
        x_hat = sae.decode(acts, scale=sae.input_scale(x.to(sae.dtype))).float().to(x.device)
        flat, flat_hat = x.reshape(-1, x.shape[-1]).double().cpu(), x_hat.reshape(-1, x.shape[-1]).double().cpu()
        per_token = (flat - flat_hat).pow(2).sum(-1)
        sq_err += float(per_token.sum())
        rows.append(flat.float())
        errors.append(per_token)
        x_sum += flat.sum(0)
        x_sq += float(flat.pow(2).sum())
        l0_sum += float((acts > 0).sum())
        fired |= (acts > 0).reshape(-1, sae.d_sae).any(0).cpu()
        n += flat.shape[0]

        def splice(h: torch.Tensor, replacement: torch.Tensor = x_hat) -> torch.Tensor:
            out = h.clone()
            out[:, 1:] = replacement.to(h.dtype)
            return out

        clean, count = _ce(lm.model(input_ids=ids).logits, ids)
        with residual_hook(lm.blocks, hook, splice):
            spliced, _ = _ce(lm.model(input_ids=ids).logits, ids)
        with residual_hook(lm.blocks, hook, lambda h: splice(h, torch.zeros_like(h[:, 1:]))):
            ablated, _ = _ce(lm.model(input_ids=ids).logits, ids)
        ce["clean"] += clean
        ce["sae"] += spliced
        ce["ablated"] += ablated
        ce_n += count
    total_var_num = x_sq - float(x_sum.pow(2).sum()) / max(1, n)
    ce_clean, ce_sae, ce_abl = (ce[k] / max(1, ce_n) for k in ("clean", "sae", "ablated"))
    recovered = (ce_abl - ce_sae) / (ce_abl - ce_clean) if ce_abl != ce_clean else float("nan")
    xs, errs = torch.cat(rows), torch.cat(errors)
    norms = xs.norm(dim=-1)
    typical = norms <= MASSIVE * norms.median()
    kept = xs[typical].double()
    typical_var = float((kept - kept.mean(0)).pow(2).sum()) if len(kept) else 0.0
    return EvalResult(
        fvu_typical=float(errs[typical].sum()) / max(typical_var, 1e-12),
        massive_tokens=int((~typical).sum()),
        tokens=n,
        fvu=sq_err / max(total_var_num, 1e-12),
        mse=sq_err / max(1, n * sae.d_in),
        l0=l0_sum / max(1, n),
        dead_fraction=float((~fired).float().mean()),
        ce_clean=ce_clean,
        ce_sae=ce_sae,
        ce_ablated=ce_abl,
        ce_recovered=recovered,
    )
