"""SAE layouts on disk, as a table: each entry says whether a path holds its layout and reads it.

- SAELens: `cfg.json` + `sae_weights.safetensors` (v6 and pre-6 config keys);
- sparsify (EleutherAI): `cfg.json` + `sae.safetensors` in a `layers.L` folder (output of block L);
- Gemma Scope: `params.npz` (JumpReLU, no `b_dec` subtraction on the input), read with `allow_pickle=False`;
- Llama Scope (OpenMOSS): `hyperparams.json` + `checkpoints/final.safetensors` in a `…-L{layer}R-…` folder
  (JumpReLU with one threshold for all features, inputs scaled to norm sqrt(d_model) by a dataset-wide factor).

`load_sae` walks `LAYOUTS` in order and reads the first that recognises the path: a new layout is one `Layout` entry
(and its test). The file names of each layout are here; the SAELens ones come from `steering.sae.autoencoder`, whose
`SAE.save` writes that layout.
"""

from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from steering.errors import SAELoadError

from .autoencoder import FEATURE_STATS, SAE, SAELENS_CFG, SAELENS_WEIGHTS, HookPoint

__all__ = ["FEATURE_STATS", "GEMMASCOPE_PARAMS", "LAYOUTS", "LLAMASCOPE_CFG", "LLAMASCOPE_WEIGHTS", "SAELENS_CFG",
           "SAELENS_WEIGHTS", "SPARSIFY_WEIGHTS", "Layout", "load_sae", "saelens_folder", "stats_folder"]

log = logging.getLogger(__name__)

SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMASCOPE_PARAMS = "params.npz"
LLAMASCOPE_CFG = "hyperparams.json"
LLAMASCOPE_WEIGHTS = "checkpoints/final.safetensors"


@dataclass(frozen=True)
class Layout:
    """One on-disk format of SAEs: how to recognise it at a path, and how to read it."""

    name: str
    """`SAE.layout` of the SAEs it reads."""
    expects: str
    """What a folder of this layout holds (the message for a folder of no layout lists them)."""
    named_by: tuple[str, ...]
    """Files a path may name instead of the folder (the message for a file of no layout lists them)."""
    detect: Callable[[Path, int | None], Path | None]
    """The file or folder to read at `path` (an existing file or folder; `layer` picks one of several hook points),
    or None when `path` does not hold this layout."""
    load: Callable[[Path, int | None, torch.device | str, torch.dtype], SAE]
    """Read what `detect` found; `layer` sets the hook layer when the files do not say it."""


def load_sae(
    path: str | Path,
    *,
    layer: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SAE:
    """Load an SAE from a SAELens, sparsify or Gemma Scope folder or file, detecting the layout (`LAYOUTS`).

    `layer` picks one hook point in a sparsify or Llama Scope folder holding several, and sets the layer of a Gemma
    Scope file whose path does not say it.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise SAELoadError(f"SAE path not found: {p}")
    for layout in LAYOUTS:
        found = layout.detect(p, layer)
        if found is not None:
            return layout.load(found, layer, device, dtype)
    if p.is_file():
        names = dict.fromkeys(name for layout in LAYOUTS for name in layout.named_by)
        raise SAELoadError(f"{p} is not an SAE file: expected {_either(list(names))}.")
    raise SAELoadError(f"No SAE found in {p}: expected {_either([layout.expects for layout in LAYOUTS])}.")


def _either(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + f" or {items[-1]}" if len(items) > 1 else "".join(items)


def saelens_folder(sae: SAE) -> Path | None:
    """The folder `sae` was read from when it is in the SAELens layout, else None."""
    folder = Path(sae.source or "")
    return folder if sae.layout == "saelens" and (folder / SAELENS_CFG).is_file() else None


def stats_folder(sae: SAE) -> Path | None:
    """Where the statistics and labels of `sae` are kept, beside its weights: its SAELens, sparsify or Llama Scope
    folder, the folder of a Gemma Scope `params.npz`; None for an SAE that was not read from files."""
    if not sae.source:
        return None
    path = Path(sae.source)
    folder = path.parent if path.is_file() else path
    return folder if folder.is_dir() else None


# --------------------------------------------------------------------------------------------------- detecting
def _folder_named(path: Path, names: tuple[str, ...]) -> Path:
    """`path`, or the folder of the file it names when that is one of `names`."""
    return path.parent if path.is_file() and path.name in names else path


def _detect_saelens(path: Path, layer: int | None) -> Path | None:
    folder = _folder_named(path, (SAELENS_WEIGHTS, SAELENS_CFG))
    return folder if (folder / SAELENS_WEIGHTS).is_file() else None


def _detect_sparsify(path: Path, layer: int | None) -> Path | None:
    """A sparsify folder, or the `layers.L` folder `layer` picks in a folder of several (sparsify's output)."""
    folder = _folder_named(path, (SPARSIFY_WEIGHTS, SAELENS_CFG))
    if (folder / SPARSIFY_WEIGHTS).is_file():
        return folder
    if not folder.is_dir():
        return None
    hookpoints = [
        (int(m.group(1)), d) for d in folder.iterdir()
        if d.is_dir() and (m := re.fullmatch(r"layers\.(\d+)", d.name)) and (d / SPARSIFY_WEIGHTS).is_file()
    ]
    return _pick_layer(folder, hookpoints, layer, "layers.{}")


def _pick_layer(folder: Path, found: list[tuple[int, Path]], layer: int | None, what: str) -> Path | None:
    """The one of several per-layer folders `layer` picks (the only one when `layer` is None and there is one)."""
    if not found:
        return None
    if layer is None and len(found) == 1:
        return found[0][1]
    chosen = [d for n, d in sorted(found) if n == layer]
    if not chosen:
        names = ", ".join(what.format(n) for n, _ in sorted(found))
        raise SAELoadError(f"{folder} holds SAEs for several hook points ({names}); choose one with a layer.")
    return chosen[0]


def _detect_gemmascope(path: Path, layer: int | None) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".npz" else None
    return path / GEMMASCOPE_PARAMS if (path / GEMMASCOPE_PARAMS).is_file() else None


_LLAMASCOPE_FOLDER = re.compile(r".*-L(\d+)([A-Z]+)-.*")
"""A Llama Scope SAE's folder name, e.g. `Llama3_1-8B-Base-L15R-8x`: layer 15, residual stream (R)."""


def _detect_llamascope(path: Path, layer: int | None) -> Path | None:
    """A Llama Scope SAE's folder (or its `hyperparams.json` / `final.safetensors`), or the `…-L{layer}R-…` folder
    `layer` picks in a folder of several (a whole Llama Scope repository)."""
    if path.is_file():
        if path.name == LLAMASCOPE_CFG:
            path = path.parent
        elif path.name == Path(LLAMASCOPE_WEIGHTS).name and path.parent.name == Path(LLAMASCOPE_WEIGHTS).parent.name:
            path = path.parent.parent
        else:
            return None
    if (path / LLAMASCOPE_CFG).is_file():
        return path
    if not path.is_dir():
        return None
    found = [(int(m.group(1)), d) for d in path.iterdir()
             if d.is_dir() and (m := _LLAMASCOPE_FOLDER.fullmatch(d.name)) and (d / LLAMASCOPE_CFG).is_file()]
    return _pick_layer(path, found, layer, "L{}")


# --------------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAELoadError(f"{path} is missing.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAELoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SAELoadError(f"{path} must hold a JSON object.")
    return data


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAELoadError(f"{path} is not a readable safetensors file: {exc}") from None


def _int(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SAELoadError(f"{where}: {key!r} must be an integer, got {value!r}.")
    return value


def _saelens_architecture(cfg: dict[str, Any]) -> tuple[str, int | None]:
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn") or cfg.get("activation_fn_str")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch in (None, "standard") and act == "topk":
        arch = "topk"
    if arch is None:
        arch = "standard"
    if arch == "standard" and act not in (None, "relu", "topk"):
        raise SAELoadError(f"Unsupported activation function {act!r} for a standard SAE.")
    return str(arch), (int(k) if isinstance(k, (int, float)) else None)


def _load_saelens(folder: Path, layer: int | None, device: torch.device | str, dtype: torch.dtype) -> SAE:
    cfg_path = folder / SAELENS_CFG
    cfg = _read_json(cfg_path)
    arch, k = _saelens_architecture(cfg)
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    if not isinstance(meta, dict):
        meta = {}
    hook_name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook = HookPoint.parse(str(hook_name)) if hook_name else None
    factor = cfg.get("norm_scaling_factor", cfg.get("scaling_factor"))
    weights = _read_safetensors(folder / SAELENS_WEIGHTS)
    if factor is None and "scaling_factor" in weights:
        factor = float(weights.pop("scaling_factor").float().reshape(-1)[0])
    normalize = cfg.get("normalize_activations") or "none"
    if normalize == "expected_average_only_in" and factor is None:
        log.warning("%s: expected_average_only_in without a stored factor; assuming it was folded into the weights.",
                    folder)
    sae = SAE(
        _int(cfg, "d_in", cfg_path),
        _int(cfg, "d_sae", cfg_path),
        arch,
        k=k,
        hook=hook,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=str(normalize),
        norm_scaling_factor=None if factor is None else float(factor),
        metadata={**meta, **({"tinymorph": cfg["tinymorph"]} if "tinymorph" in cfg else {})},
        dtype=dtype,
        device=device,
    )
    sae.load_weights(weights, str(folder / SAELENS_WEIGHTS))
    _read_stats(sae, folder)
    sae.layout, sae.source = "saelens", str(folder)
    return sae


def _read_stats(sae: SAE, folder: Path) -> None:
    """The feature statistics kept beside the SAE's weights (`tinymorph sae-stats` / `prepare`), if any."""
    stats_path = folder / FEATURE_STATS
    if stats_path.is_file():
        sae.set_feature_stats(**_read_safetensors(stats_path))


def _load_sparsify(folder: Path, layer: int | None, device: torch.device | str, dtype: torch.dtype) -> SAE:
    cfg_path = folder / SAELENS_CFG
    cfg = _read_json(cfg_path)
    weights = _read_safetensors(folder / SPARSIFY_WEIGHTS)
    d_in = _int(cfg, "d_in", cfg_path)
    if isinstance(cfg.get("num_latents"), int) and cfg["num_latents"] > 0:
        d_sae = cfg["num_latents"]
    else:
        d_sae = d_in * _int(cfg, "expansion_factor", cfg_path)
    if re.fullmatch(r"layers\.\d+\..+", folder.name):
        raise SAELoadError(f"{folder}: hook point {folder.name!r} is not the residual stream (want layers.L).")
    unsupported = [key for key in ("transcode", "skip_connection") if cfg.get(key)]
    if "W_skip" in weights:
        unsupported.append("W_skip")
    if cfg.get("activation", "topk") != "topk":
        unsupported.append(f"activation={cfg['activation']}")
    if unsupported:
        raise SAELoadError(f"{folder}: sparsify options {', '.join(unsupported)} are not supported (plain TopK only).")
    match = re.fullmatch(r"layers\.(\d+)", folder.name)
    if match:
        hook: HookPoint | None = HookPoint(int(match.group(1)), "resid_post")
    elif layer is not None:
        hook = HookPoint(layer, "resid_post")
    else:
        hook = None
    rename = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
    for name in rename:
        if name not in weights:
            raise SAELoadError(f"{folder / SPARSIFY_WEIGHTS} has no tensor {name!r}.")
    tensors = {new: weights[old] for old, new in rename.items()}
    if tuple(tensors["W_enc"].shape) != (d_sae, d_in):
        raise SAELoadError(
            f"{folder / SPARSIFY_WEIGHTS}: encoder.weight has shape {list(tensors['W_enc'].shape)}, "
            f"expected [{d_sae}, {d_in}]."
        )
    tensors["W_enc"] = tensors["W_enc"].T
    sae = SAE(d_in, d_sae, "topk", k=_int(cfg, "k", cfg_path), hook=hook, apply_b_dec_to_input=True,
              metadata={"sparsify_cfg": cfg}, dtype=dtype, device=device)
    sae.load_weights(tensors, str(folder / SPARSIFY_WEIGHTS))
    sae.layout, sae.source = "sparsify", str(folder)
    _read_stats(sae, folder)
    return sae


def _load_gemmascope(path: Path, layer: int | None, device: torch.device | str, dtype: torch.dtype) -> SAE:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: torch.from_numpy(np.asarray(data[name], dtype=np.float32)) for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise SAELoadError(f"{path} is not a readable .npz file: {exc}") from None
    if "W_enc" not in arrays or arrays["W_enc"].ndim != 2:
        raise SAELoadError(f"{path} has no 2-D W_enc array; it is not a Gemma Scope SAE.")
    d_in, d_sae = arrays["W_enc"].shape
    if layer is None:  # the nearest enclosing folder named layer_N (Gemma Scope's layout)
        layer = next((int(m.group(1)) for part in path.parent.parts[::-1]
                      if (m := re.fullmatch(r"layer_(\d+)", part))), None)
    hook = HookPoint(layer, "resid_post") if layer is not None else None
    sae = SAE(d_in, d_sae, "jumprelu", hook=hook, apply_b_dec_to_input=False, dtype=dtype, device=device)
    sae.load_weights(arrays, str(path))
    sae.layout, sae.source = "gemmascope", str(path)
    _read_stats(sae, path.parent)
    return sae


def _load_llamascope(folder: Path, layer: int | None, device: torch.device | str, dtype: torch.dtype) -> SAE:
    """Llama Scope: the encoder reads `x * sqrt(d_model) / norm_in` (`dataset_average_activation_norm`), a JumpReLU
    with one `jump_relu_threshold` for all features, no `b_dec` subtraction; `decode(..., scale)` divides back."""
    cfg_path = folder / LLAMASCOPE_CFG
    cfg = _read_json(cfg_path)
    d_in, d_sae = _int(cfg, "d_model", cfg_path), _int(cfg, "d_sae", cfg_path)
    hook_in, hook_out = cfg.get("hook_point_in"), cfg.get("hook_point_out", cfg.get("hook_point_in"))
    if not isinstance(hook_in, str):
        raise SAELoadError(f"{cfg_path}: 'hook_point_in' must name the hook the SAE reads, got {hook_in!r}.")
    if hook_out != hook_in:
        raise SAELoadError(f"{cfg_path}: reads {hook_in} but writes {hook_out}; that is a transcoder, and tinymorph "
                           "needs an SAE of one residual-stream hook.")
    hook = HookPoint.parse(hook_in)
    act = cfg.get("act_fn", "jumprelu")
    if act != "jumprelu":
        raise SAELoadError(f"{cfg_path}: act_fn {act!r} is not supported (Llama Scope's JumpReLU only).")
    threshold = cfg.get("jump_relu_threshold")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise SAELoadError(f"{cfg_path}: 'jump_relu_threshold' must be a number, got {threshold!r}.")
    norms = cfg.get("dataset_average_activation_norm")
    mode = cfg.get("norm_activation", "dataset-wise")
    factor: float | None = None
    if mode == "dataset-wise":
        norm_in = norms.get("in") if isinstance(norms, dict) else None
        if not isinstance(norm_in, (int, float)) or isinstance(norm_in, bool) or not norm_in > 0:
            raise SAELoadError(f"{cfg_path}: dataset-wise normalisation needs dataset_average_activation_norm.in > 0, "
                               f"got {norms!r}.")
        factor = math.sqrt(d_in) / float(norm_in)
    elif mode not in ("none", None):
        raise SAELoadError(f"{cfg_path}: norm_activation {mode!r} is not supported (dataset-wise or none).")
    weights_path = folder / LLAMASCOPE_WEIGHTS
    if not weights_path.is_file():
        raise SAELoadError(f"{weights_path} is missing.")
    weights = _read_safetensors(weights_path)
    rename = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "decoder.weight": "W_dec", "decoder.bias": "b_dec"}
    for name in rename:
        if name not in weights:
            raise SAELoadError(f"{weights_path} has no tensor {name!r}.")
    for name, shape in (("encoder.weight", (d_sae, d_in)), ("decoder.weight", (d_in, d_sae))):
        if tuple(weights[name].shape) != shape:
            raise SAELoadError(f"{weights_path}: {name} has shape {list(weights[name].shape)}, expected {list(shape)}.")
    tensors = {new: weights[old] for old, new in rename.items()}
    tensors["W_enc"], tensors["W_dec"] = tensors["W_enc"].T, tensors["W_dec"].T
    tensors["threshold"] = torch.full((d_sae,), float(threshold))
    sae = SAE(d_in, d_sae, "jumprelu", hook=hook, apply_b_dec_to_input=False,
              normalize_activations="expected_average_only_in" if factor else "none", norm_scaling_factor=factor,
              metadata={"llamascope_cfg": cfg}, dtype=dtype, device=device)
    sae.load_weights(tensors, str(weights_path))
    sae.layout, sae.source = "llamascope", str(folder)
    _read_stats(sae, folder)
    return sae


LAYOUTS: tuple[Layout, ...] = (
    Layout("saelens", f"{SAELENS_CFG} + {SAELENS_WEIGHTS} (SAELens)", (SAELENS_WEIGHTS, SAELENS_CFG),
           _detect_saelens, _load_saelens),
    Layout("sparsify", f"{SAELENS_CFG} + {SPARSIFY_WEIGHTS} (sparsify)", (SPARSIFY_WEIGHTS, SAELENS_CFG),
           _detect_sparsify, _load_sparsify),
    Layout("gemmascope", f"{GEMMASCOPE_PARAMS} (Gemma Scope)", ("a .npz",), _detect_gemmascope, _load_gemmascope),
    Layout("llamascope", f"{LLAMASCOPE_CFG} + {LLAMASCOPE_WEIGHTS} (Llama Scope)", (LLAMASCOPE_CFG,),
           _detect_llamascope, _load_llamascope),
)
"""The layouts `load_sae` reads, in the order it tries them."""
