"""SAE layouts on disk (SAELens v6 and pre-6, sparsify, Gemma Scope, Llama Scope), `SAE.save` round trips and bad input.

Every SAE here is written by the test in the exact on-disk format with random weights, loaded with `load_sae`, and
checked against a reference written from the published formulas (never against the SAE's own methods).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from steering.engine import Engine
from steering.errors import FeatureIndexError, SAELoadError, ShapeMismatchError
from steering.sae import layouts
from steering.sae.autoencoder import SAE, HookPoint
from steering.sae.layouts import LAYOUTS, Layout, load_sae

D_IN, D_SAE, K = 16, 48, 4
ARCHS = ("standard", "gated", "jumprelu", "topk")

Weights = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------- random weights
def saelens_weights(arch: str) -> Weights:
    """Random SAELens tensors for `arch`, with biases and thresholds large enough to matter."""
    w = {"W_enc": torch.randn(D_IN, D_SAE) * 0.5, "W_dec": torch.randn(D_SAE, D_IN), "b_dec": torch.randn(D_IN)}
    if arch == "gated":
        w |= {"b_gate": torch.randn(D_SAE), "b_mag": torch.randn(D_SAE), "r_mag": torch.randn(D_SAE) * 0.3}
    else:
        w["b_enc"] = torch.randn(D_SAE)
    if arch == "jumprelu":
        w["threshold"] = torch.rand(D_SAE) * 2
    return w


def sparsify_weights() -> Weights:
    return {
        "encoder.weight": torch.randn(D_SAE, D_IN) * 0.5,
        "encoder.bias": torch.randn(D_SAE),
        "W_dec": torch.randn(D_SAE, D_IN),
        "b_dec": torch.randn(D_IN),
    }


def inputs() -> torch.Tensor:
    """A batch of residual vectors `[2, 5, d_in]`, norms well away from sqrt(d_in)."""
    return torch.randn(2, 5, D_IN) * 3


def random_sae(arch: str, **kwargs) -> SAE:
    """An in-memory SAE with random weights (for the save tests)."""
    sae = SAE(D_IN, D_SAE, arch, k=K if arch == "topk" else None, hook=HookPoint(2, "resid_pre"), **kwargs)
    for name, value in saelens_weights(arch).items():
        getattr(sae, name).data.copy_(value)
    return sae


# ------------------------------------------------------------------------------------------- reference maths
def ref_scale(normalize: str, factor: float | None, x: torch.Tensor) -> torch.Tensor | float:
    if normalize == "constant_norm_rescale":
        return math.sqrt(D_IN) / x.norm(dim=-1, keepdim=True)
    if normalize == "expected_average_only_in" and factor is not None:
        return factor
    return 1.0


def keep_top_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """`values` where they are among the k largest of their row, 0 elsewhere (values are distinct)."""
    kth = values.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return torch.where(values >= kth, values, torch.zeros_like(values))


def ref_encode(w: Weights, x: torch.Tensor, arch: str, *, k: int | None = None, sub_b_dec: bool = True,
               scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    sae_in = x * scale
    if sub_b_dec:
        sae_in = sae_in - w["b_dec"]
    if arch == "gated":
        gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
        magnitude = torch.relu(sae_in @ (w["W_enc"] * torch.exp(w["r_mag"])) + w["b_mag"])
        return gate * magnitude
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > w["threshold"])
    assert arch == "topk" and k is not None
    return torch.relu(keep_top_k(pre, k))


def ref_decode(w: Weights, features: torch.Tensor) -> torch.Tensor:
    return features @ w["W_dec"] + w["b_dec"]


def ref_sparsify_encode(w: Weights, x: torch.Tensor, k: int) -> torch.Tensor:
    """sparsify: top-k of relu(encoder(x - b_dec))."""
    return keep_top_k(torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]), k)


def assert_sparse_but_alive(features: torch.Tensor) -> None:
    """Guards against vacuous checks: some features fire, some do not."""
    assert (features > 0).any() and (features == 0).any()


def check_maths(sae: SAE, w: Weights, arch: str, *, k: int | None = None, sub_b_dec: bool = True,
                normalize: str = "none", factor: float | None = None) -> None:
    """encode, decode and reconstruct of a loaded SAE against the reference formulas."""
    x = inputs()
    s = ref_scale(normalize, factor, x)
    expected = ref_encode(w, x, arch, k=k, sub_b_dec=sub_b_dec, scale=s)
    assert_sparse_but_alive(expected)
    features = sae.encode(x)
    torch.testing.assert_close(features, expected)
    rows = x.reshape(-1, x.shape[-1])
    index, value = sae.encode_sparse(rows)  # the nonzeros alone, as the prefix cache keeps them
    assert index.shape == value.shape and index.shape[1] <= (k or sae.d_sae)
    dense = torch.zeros(len(rows), sae.d_sae, dtype=value.dtype).scatter_add_(1, index, value)
    torch.testing.assert_close(dense, expected.reshape(len(rows), -1))
    torch.testing.assert_close(sae.decode(expected), ref_decode(w, expected))
    torch.testing.assert_close(sae.reconstruct(x), ref_decode(w, expected) / s)


# ------------------------------------------------------------------------------------------- writers
def write_saelens(folder: Path, w: Weights, cfg: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in w.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def v6_cfg(arch: str, **overrides) -> dict:
    cfg = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"hook_name": "blocks.2.hook_resid_pre"},
    }
    if arch == "topk":
        cfg["k"] = K
    return cfg | overrides


def write_sparsify(folder: Path, w: Weights, cfg: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in w.items()}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg or {"k": K, "num_latents": D_SAE, "d_in": D_IN}))
    return folder


def write_gemmascope(path: Path, w: Weights) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{name: t.numpy() for name, t in w.items()})
    return path


def gemmascope_path(root: Path) -> Path:
    return root / "layer_5" / "width_16k" / "average_l0_10" / "params.npz"


NORM_IN = 7.5
"""A Llama Scope SAE's `dataset_average_activation_norm.in`: far from sqrt(D_IN), so a missed scaling shows."""


def llamascope_weights() -> Weights:
    return {"encoder.weight": torch.randn(D_SAE, D_IN) * 0.5, "encoder.bias": torch.randn(D_SAE) * 0.3,
            "decoder.weight": torch.randn(D_IN, D_SAE), "decoder.bias": torch.randn(D_IN)}


def llamascope_cfg(layer: int = 15, **overrides) -> dict:
    """`hyperparams.json` as Llama Scope publishes it (the keys tinymorph reads and a few it does not)."""
    hook = f"blocks.{layer}.hook_resid_post"
    return {"d_model": D_IN, "d_sae": D_SAE, "hook_point_in": hook, "hook_point_out": hook, "act_fn": "jumprelu",
            "jump_relu_threshold": 0.4, "norm_activation": "dataset-wise", "top_k": 50,
            "sparsity_include_decoder_norm": True,
            "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_IN}} | overrides


def write_llamascope(folder: Path, w: Weights, cfg: dict) -> Path:
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in w.items()}, str(folder / "checkpoints" / "final.safetensors"))
    (folder / "hyperparams.json").write_text(json.dumps(cfg))
    return folder


def ref_llamascope(w: Weights, cfg: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama Scope's published maths: inputs scaled to norm sqrt(d_model) by the dataset-wide factor, one JumpReLU
    threshold, the decoder's output scaled back. Returns (features, reconstruction in the model's space)."""
    scale = math.sqrt(cfg["d_model"]) / cfg["dataset_average_activation_norm"]["in"]
    pre = (x * scale) @ w["encoder.weight"].T + w["encoder.bias"]
    features = pre * (pre > cfg["jump_relu_threshold"])
    return features, (features @ w["decoder.weight"].T + w["decoder.bias"]) / scale


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under `root`, with size and modification time: to show nothing was written."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


# =========================================================================================== SAELens v6
@pytest.mark.parametrize("apply_b_dec", [True, False], ids=["b_dec_in", "no_b_dec_in"])
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_v6(tmp_path: Path, arch: str, apply_b_dec: bool) -> None:
    w = saelens_weights(arch)
    sae = load_sae(write_saelens(tmp_path / "sae", w, v6_cfg(arch, apply_b_dec_to_input=apply_b_dec)))
    assert (sae.layout, sae.architecture, sae.d_in, sae.d_sae) == ("saelens", arch, D_IN, D_SAE)
    assert sae.hook == HookPoint(2, "resid_pre")
    assert sae.apply_b_dec_to_input is apply_b_dec
    assert sae.k == (K if arch == "topk" else None)
    check_maths(sae, w, arch, k=sae.k, sub_b_dec=apply_b_dec)


def test_saelens_topk_with_negative_top_values(tmp_path: Path) -> None:
    """Only 2 features can be positive, so the top 4 include negative pre-activations, which relu zeroes."""
    w = saelens_weights("topk")
    w["b_enc"][2:] = -100.0
    sae = load_sae(write_saelens(tmp_path / "sae", w, v6_cfg("topk")))
    check_maths(sae, w, "topk", k=K)
    assert int((sae.encode(inputs()) != 0).sum(-1).max()) <= 2


@pytest.mark.parametrize("target", ["folder", "sae_weights.safetensors", "cfg.json"])
def test_saelens_loads_from_folder_or_either_file(tmp_path: Path, target: str) -> None:
    w = saelens_weights("standard")
    folder = write_saelens(tmp_path / "sae", w, v6_cfg("standard"))
    sae = load_sae(folder if target == "folder" else folder / target)
    check_maths(sae, w, "standard")


@pytest.mark.parametrize(
    ("normalize", "factor"),
    [("constant_norm_rescale", None), ("expected_average_only_in", 0.37)],
    ids=["constant_norm_rescale", "expected_average_only_in"],
)
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_normalization(tmp_path: Path, arch: str, normalize: str, factor: float | None) -> None:
    w = saelens_weights(arch)
    cfg = v6_cfg(arch, normalize_activations=normalize)
    if factor is not None:
        cfg["norm_scaling_factor"] = factor
    sae = load_sae(write_saelens(tmp_path / "sae", w, cfg))
    assert sae.normalize_activations == normalize
    check_maths(sae, w, arch, k=sae.k, normalize=normalize, factor=factor)


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_saelens_pre6_config(tmp_path: Path, activation: str) -> None:
    arch = "standard" if activation == "relu" else "topk"
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.3.hook_resid_post",
        "activation_fn_str": activation,
        "activation_fn_kwargs": {"k": K} if activation == "topk" else {},
        "apply_b_dec_to_input": True,
    }
    w = saelens_weights(arch)
    sae = load_sae(write_saelens(tmp_path / "sae", w, cfg))
    assert (sae.hook.layer, sae.hook.site) == (3, "resid_post")
    assert sae.architecture == arch
    assert sae.k == (K if arch == "topk" else None)
    check_maths(sae, w, arch, k=sae.k)


# =========================================================================================== sparsify
@pytest.mark.parametrize(
    "size",
    [{"num_latents": D_SAE}, {"expansion_factor": D_SAE // D_IN}, {"num_latents": 0, "expansion_factor": 3}],
    ids=["num_latents", "expansion_factor", "num_latents_0"],
)
@pytest.mark.parametrize("target", ["folder", "sae.safetensors"])
def test_sparsify(tmp_path: Path, size: dict, target: str) -> None:
    w = sparsify_weights()
    folder = write_sparsify(tmp_path / "layers.3", w, {"k": K, "d_in": D_IN, **size})
    sae = load_sae(folder if target == "folder" else folder / target)
    assert (sae.layout, sae.architecture, sae.k, sae.d_in, sae.d_sae) == ("sparsify", "topk", K, D_IN, D_SAE)
    assert sae.hook == HookPoint(3, "resid_post")
    x = inputs()
    expected = ref_sparsify_encode(w, x, K)
    assert_sparse_but_alive(expected)
    assert int((expected > 0).sum(-1).max()) <= K
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), expected @ w["W_dec"] + w["b_dec"])


def test_sparsify_parent_with_several_layers(tmp_path: Path) -> None:
    weights = {layer: sparsify_weights() for layer in (1, 3)}
    for layer, w in weights.items():
        write_sparsify(tmp_path / f"layers.{layer}", w)
    with pytest.raises(SAELoadError) as info:
        load_sae(tmp_path)
    assert "layers.1" in str(info.value) and "layers.3" in str(info.value)
    for layer, w in weights.items():
        sae = load_sae(tmp_path, layer=layer)
        assert sae.hook == HookPoint(layer, "resid_post")
        x = inputs()
        torch.testing.assert_close(sae.encode(x), ref_sparsify_encode(w, x, K))


def test_sparsify_parent_with_one_layer_needs_no_layer(tmp_path: Path) -> None:
    w = sparsify_weights()
    write_sparsify(tmp_path / "layers.2", w)
    sae = load_sae(tmp_path)
    assert sae.hook == HookPoint(2, "resid_post")
    x = inputs()
    torch.testing.assert_close(sae.encode(x), ref_sparsify_encode(w, x, K))


# =========================================================================================== Gemma Scope
@pytest.mark.parametrize("target", ["npz_file", "npz_folder"])
def test_gemmascope(tmp_path: Path, target: str) -> None:
    w = saelens_weights("jumprelu")
    path = write_gemmascope(gemmascope_path(tmp_path), w)
    sae = load_sae(path if target == "npz_file" else path.parent)
    assert (sae.layout, sae.architecture, sae.d_in, sae.d_sae) == ("gemmascope", "jumprelu", D_IN, D_SAE)
    assert sae.hook == HookPoint(5, "resid_post")
    assert sae.apply_b_dec_to_input is False
    check_maths(sae, w, "jumprelu", sub_b_dec=False)
    # b_dec is large enough that subtracting it from the input would give other features.
    x = inputs()
    assert not torch.allclose(sae.encode(x), ref_encode(w, x, "jumprelu", sub_b_dec=True))


def test_gemmascope_layer_argument_for_unnamed_path(tmp_path: Path) -> None:
    path = write_gemmascope(tmp_path / "params.npz", saelens_weights("jumprelu"))
    assert load_sae(path).hook is None
    assert load_sae(path, layer=7).hook == HookPoint(7, "resid_post")


# =========================================================================================== Llama Scope
@pytest.mark.parametrize("target", ["folder", "hyperparams", "weights", "repository"])
def test_llamascope(tmp_path: Path, target: str) -> None:
    w, cfg = llamascope_weights(), llamascope_cfg()
    folder = write_llamascope(tmp_path / "Llama3_1-8B-Base-L15R-8x", w, cfg)
    path = {"folder": folder, "hyperparams": folder / "hyperparams.json", "repository": tmp_path,
            "weights": folder / "checkpoints" / "final.safetensors"}[target]
    sae = load_sae(path)
    assert (sae.layout, sae.architecture, sae.d_in, sae.d_sae) == ("llamascope", "jumprelu", D_IN, D_SAE)
    assert (sae.hook, sae.apply_b_dec_to_input, sae.source) == (HookPoint(15, "resid_post"), False, str(folder))
    x = inputs()
    features, reconstruction = ref_llamascope(w, cfg, x)
    assert_sparse_but_alive(features)
    torch.testing.assert_close(sae.encode(x), features)
    torch.testing.assert_close(sae.reconstruct(x), reconstruction)
    # the scaling matters: without it other features fire
    unscaled = ref_llamascope(w, cfg | {"dataset_average_activation_norm": {"in": math.sqrt(D_IN)}}, x)[0]
    assert not torch.allclose(unscaled, features)


def test_llamascope_repository_of_several_layers_needs_a_layer(tmp_path: Path) -> None:
    for layer in (3, 15):
        write_llamascope(tmp_path / f"Llama3_1-8B-Base-L{layer}R-8x", llamascope_weights(), llamascope_cfg(layer))
    with pytest.raises(SAELoadError, match=r"several hook points \(L3, L15\); choose one with a layer"):
        load_sae(tmp_path)
    assert load_sae(tmp_path, layer=3).hook == HookPoint(3, "resid_post")


def test_llamascope_saved_as_saelens_computes_the_same(tmp_path: Path) -> None:
    original = load_sae(write_llamascope(tmp_path / "ls", llamascope_weights(), llamascope_cfg()))
    loaded = load_sae(original.save(tmp_path / "saved"))
    x = inputs()
    torch.testing.assert_close(loaded.encode(x), original.encode(x))
    torch.testing.assert_close(loaded.reconstruct(x), original.reconstruct(x))


@pytest.mark.parametrize(("change", "fragment"), [
    ({"hook_point_in": "blocks.15.hook_attn_out", "hook_point_out": "blocks.15.hook_attn_out"}, "residual stream"),
    ({"hook_point_out": "blocks.15.hook_mlp_out"}, "transcoder"),
    ({"act_fn": "topk"}, "act_fn 'topk'"),
    ({"jump_relu_threshold": "high"}, "jump_relu_threshold"),
    ({"dataset_average_activation_norm": {"in": 0}}, "dataset_average_activation_norm"),
    ({"norm_activation": "token-wise"}, "norm_activation 'token-wise'"),
    ({"d_sae": D_SAE * 2}, "encoder.weight has shape"),
])
def test_llamascope_bad_input_is_refused_clearly(tmp_path: Path, change: dict, fragment: str) -> None:
    folder = write_llamascope(tmp_path / "Llama3_1-8B-Base-L15R-8x", llamascope_weights(), llamascope_cfg() | change)
    before = snapshot(tmp_path)
    with pytest.raises(SAELoadError, match=re.escape(fragment)):
        load_sae(folder)
    assert snapshot(tmp_path) == before


def test_llamascope_without_weights_is_refused(tmp_path: Path) -> None:
    folder = write_llamascope(tmp_path / "x", llamascope_weights(), llamascope_cfg())
    (folder / "checkpoints" / "final.safetensors").unlink()
    with pytest.raises(SAELoadError, match=r"final\.safetensors is missing"):
        load_sae(folder)


# =========================================================================================== the table
def test_load_sae_walks_the_layout_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [layout.name for layout in LAYOUTS] == ["saelens", "sparsify", "gemmascope", "llamascope"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError) as info:
        load_sae(tmp_path / "empty")
    assert all(layout.expects in str(info.value) for layout in LAYOUTS)
    # a new layout is one more entry: load_sae finds it, and the messages name it
    made = random_sae("standard")

    def load(path: Path, layer: int | None, device: torch.device | str, dtype: torch.dtype) -> SAE:
        made.layout, made.source = "toy", str(path)
        return made

    toy = Layout("toy", "sae.toy (toy)", ("a .toy",), lambda path, layer: path if path.suffix == ".toy" else None,
                 load)
    monkeypatch.setattr(layouts, "LAYOUTS", (*LAYOUTS, toy))
    (tmp_path / "sae.toy").write_bytes(b"")
    assert load_sae(tmp_path / "sae.toy").layout == "toy"
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(SAELoadError, match=r"or a \.toy"):
        load_sae(tmp_path / "model.bin")
    with pytest.raises(SAELoadError, match=r"or sae\.toy \(toy\)"):
        load_sae(tmp_path / "empty")


# =========================================================================================== SAE.save
@pytest.mark.parametrize("arch", ARCHS)
def test_save_round_trip(tmp_path: Path, arch: str) -> None:
    sae = random_sae(arch)
    folder = sae.save(tmp_path / "saved")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"]) == (arch, D_IN, D_SAE)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_pre"
    assert cfg.get("k") == (K if arch == "topk" else None)
    assert set(load_file(str(folder / "sae_weights.safetensors"))) == set(saelens_weights(arch))
    loaded = load_sae(folder)
    assert (loaded.architecture, loaded.hook, loaded.k) == (arch, sae.hook, sae.k)
    x = inputs()
    assert_sparse_but_alive(sae.encode(x))
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded.reconstruct(x), sae.reconstruct(x))


@pytest.mark.parametrize(
    "options",
    [
        {"normalize_activations": "constant_norm_rescale"},
        {"normalize_activations": "expected_average_only_in", "norm_scaling_factor": 0.37},
        {"apply_b_dec_to_input": False},
    ],
    ids=["constant_norm_rescale", "expected_average_only_in", "no_b_dec_in"],
)
def test_save_round_trip_keeps_input_options(tmp_path: Path, options: dict) -> None:
    sae = random_sae("jumprelu", **options)
    loaded = load_sae(sae.save(tmp_path / "saved"))
    for name, value in options.items():
        assert getattr(loaded, name) == value
    x = inputs()
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded.reconstruct(x), sae.reconstruct(x))


def test_save_round_trip_of_loaded_layouts(tmp_path: Path) -> None:
    """A Gemma Scope and a sparsify SAE saved in the SAELens layout compute the same features."""
    x = inputs()
    for source in (write_gemmascope(gemmascope_path(tmp_path / "gs"), saelens_weights("jumprelu")),
                   write_sparsify(tmp_path / "sp" / "layers.3", sparsify_weights())):
        original = load_sae(source)
        loaded = load_sae(original.save(tmp_path / f"saved-{original.layout}"))
        assert (loaded.layout, loaded.hook, loaded.apply_b_dec_to_input) == (
            "saelens", original.hook, original.apply_b_dec_to_input)
        torch.testing.assert_close(loaded.encode(x), original.encode(x))


def test_save_float16(tmp_path: Path) -> None:
    sae = random_sae("topk")
    folder = sae.save(tmp_path / "half", dtype=torch.float16)
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    assert json.loads((folder / "cfg.json").read_text())["dtype"] == "float16"
    for name, t in tensors.items():
        torch.testing.assert_close(t.float(), getattr(sae, name).data, rtol=1e-3, atol=1e-3)
    assert sae.dtype == torch.float32  # saving does not change the SAE in memory
    assert load_sae(folder).dtype == torch.float32


def test_save_refuses_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    sae = random_sae("standard")
    with pytest.raises(SAELoadError, match="not empty"):
        sae.save(folder)
    assert snapshot(tmp_path) == before

    sae.save(folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary or old folder left
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    x = inputs()
    torch.testing.assert_close(load_sae(folder).encode(x), sae.encode(x))


def test_save_into_existing_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    sae = random_sae("standard")
    x = inputs()
    torch.testing.assert_close(load_sae(sae.save(tmp_path / "empty")).encode(x), sae.encode(x))


def test_feature_stats_round_trip(tmp_path: Path) -> None:
    sae = random_sae("topk")
    max_act, frequency = torch.rand(D_SAE) * 10, torch.rand(D_SAE)
    sae.set_feature_stats(max_act, frequency)
    loaded = load_sae(sae.save(tmp_path / "with-stats"))
    torch.testing.assert_close(loaded.max_act, max_act)
    torch.testing.assert_close(loaded.frequency, frequency)

    sae.set_feature_stats(max_act)
    loaded = load_sae(sae.save(tmp_path / "max-act-only"))
    torch.testing.assert_close(loaded.max_act, max_act)
    assert loaded.frequency is None
    assert load_sae(random_sae("topk").save(tmp_path / "no-stats")).max_act is None


def test_feature_stats_of_wrong_shape_are_refused() -> None:
    with pytest.raises(SAELoadError, match=rf"\[{D_SAE}\]"):
        random_sae("standard").set_feature_stats(torch.rand(D_SAE + 1))


# =========================================================================================== bad input
def _garbage_safetensors(root: Path) -> Path:
    folder = write_saelens(root / "sae", saelens_weights("standard"), v6_cfg("standard"))
    (folder / "sae_weights.safetensors").write_bytes(os.urandom(300))
    return folder


def _truncated_safetensors(root: Path) -> Path:
    folder = write_saelens(root / "sae", saelens_weights("standard"), v6_cfg("standard"))
    data = (folder / "sae_weights.safetensors").read_bytes()
    (folder / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def _garbage_sparsify(root: Path) -> Path:
    folder = write_sparsify(root / "layers.3", sparsify_weights())
    (folder / "sae.safetensors").write_bytes(b"\x00\x01garbage")
    return folder


def _cfg_text(text: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        folder = write_saelens(root / "sae", saelens_weights("standard"), v6_cfg("standard"))
        (folder / "cfg.json").write_text(text)
        return folder

    return build


def _no_cfg(root: Path) -> Path:
    folder = write_saelens(root / "sae", saelens_weights("standard"), v6_cfg("standard"))
    (folder / "cfg.json").unlink()
    return folder


def _saelens(arch: str, cfg: dict | None = None, drop: str | None = None,
             change: tuple[str, torch.Tensor] | None = None) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        w = saelens_weights(arch)
        if drop:
            del w[drop]
        if change:
            w[change[0]] = change[1]
        return write_saelens(root / "sae", w, v6_cfg(arch, **(cfg or {})))

    return build


def _sparsify(drop: str | None = None, change: tuple[str, torch.Tensor] | None = None) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        w = sparsify_weights()
        if drop:
            del w[drop]
        if change:
            w[change[0]] = change[1]
        return write_sparsify(root / "layers.3", w)

    return build


def _gemmascope(drop: str | None = None, change: tuple[str, torch.Tensor] | None = None) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        w = saelens_weights("jumprelu")
        if drop:
            del w[drop]
        if change:
            w[change[0]] = change[1]
        return write_gemmascope(gemmascope_path(root), w)

    return build


def _garbage_npz(root: Path) -> Path:
    path = gemmascope_path(root)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x93garbage" + os.urandom(200))
    return path


def _mkdir(name: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        (root / name).mkdir()
        return root / name

    return build


def _file(name: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        (root / name).write_bytes(b"weights")
        return root / name

    return build


BAD_INPUTS = [
    pytest.param(lambda root: root / "nowhere", ["not found", "nowhere"], id="nonexistent_path"),
    pytest.param(_mkdir("empty"), ["No SAE found", "cfg.json", "params.npz"], id="folder_without_sae"),
    pytest.param(_file("model.bin"), ["model.bin", "not an SAE file"], id="unknown_file"),
    pytest.param(_garbage_safetensors, ["sae_weights.safetensors", "not a readable safetensors"], id="garbage_weights"),
    pytest.param(_truncated_safetensors, ["sae_weights.safetensors", "not a readable"], id="truncated_weights"),
    pytest.param(_garbage_sparsify, ["sae.safetensors", "not a readable safetensors"], id="garbage_sparsify"),
    pytest.param(_cfg_text("{not json"), ["cfg.json", "not valid JSON"], id="invalid_json"),
    pytest.param(_cfg_text("[1, 2]"), ["cfg.json", "JSON object"], id="json_not_object"),
    pytest.param(_no_cfg, ["cfg.json", "missing"], id="missing_cfg"),
    pytest.param(_saelens("standard", {"architecture": "banana"}), ["banana", "standard", "jumprelu"],
                 id="unknown_architecture"),
    pytest.param(_saelens("standard", {"d_in": "16"}), ["d_in", "integer"], id="d_in_not_int"),
    pytest.param(_saelens("topk", {"k": None}), ["TopK", "k=None"], id="topk_without_k"),
    pytest.param(_saelens("standard", {"normalize_activations": "layer_norm"}), ["layer_norm"],
                 id="unknown_normalization"),
    pytest.param(_saelens("standard", {"metadata": {"hook_name": "blocks.2.hook_mlp_out"}}),
                 ["blocks.2.hook_mlp_out", "resid"], id="non_residual_hook"),
    pytest.param(_saelens("standard", change=("W_enc", torch.randn(D_SAE, D_IN))),
                 ["W_enc", f"[{D_SAE}, {D_IN}]", f"[{D_IN}, {D_SAE}]"], id="wrong_shape_W_enc"),
    pytest.param(_saelens("jumprelu", change=("threshold", torch.rand(D_SAE + 1))),
                 ["threshold", f"[{D_SAE + 1}]", f"[{D_SAE}]"], id="wrong_shape_threshold"),
    pytest.param(_saelens("standard", change=("b_enc", torch.full((D_SAE,), math.nan))), ["b_enc", "NaN"],
                 id="nan_weight"),
    pytest.param(_saelens("jumprelu", drop="threshold"), ["threshold", "jumprelu"], id="missing_threshold"),
    pytest.param(_saelens("gated", drop="r_mag"), ["r_mag", "gated"], id="missing_r_mag"),
    pytest.param(_saelens("standard", drop="W_dec"), ["W_dec", "sae_weights.safetensors"], id="missing_W_dec"),
    pytest.param(_sparsify(drop="encoder.bias"), ["encoder.bias", "sae.safetensors"], id="sparsify_missing"),
    pytest.param(_sparsify(change=("encoder.weight", torch.randn(D_IN, D_SAE))),
                 ["encoder.weight", f"[{D_SAE}, {D_IN}]"], id="sparsify_wrong_shape"),
    pytest.param(_sparsify(change=("W_dec", torch.randn(D_IN, D_SAE))), ["W_dec", f"[{D_SAE}, {D_IN}]"],
                 id="sparsify_wrong_shape_W_dec"),
    pytest.param(_gemmascope(drop="threshold"), ["threshold", "params.npz"], id="gemmascope_missing"),
    pytest.param(_gemmascope(change=("W_dec", torch.randn(D_IN, D_SAE))), ["W_dec", "params.npz"],
                 id="gemmascope_wrong_shape"),
    pytest.param(_gemmascope(drop="W_enc"), ["W_enc", "params.npz"], id="gemmascope_no_W_enc"),
    pytest.param(_garbage_npz, ["params.npz", "not a readable .npz"], id="garbage_npz"),
]


@pytest.mark.parametrize(("build", "fragments"), BAD_INPUTS)
def test_bad_input_is_refused_clearly(tmp_path: Path, build: Callable[[Path], Path], fragments: list[str]) -> None:
    path = build(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SAELoadError) as info:
        load_sae(path)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert snapshot(tmp_path) == before


class _Payload:
    """Unpickling this creates a folder: proof that the loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_npz_with_pickled_object_array_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    w = {name: t.numpy() for name, t in saelens_weights("jumprelu").items()}
    w["threshold"] = np.array([_Payload(marker)], dtype=object)
    path = gemmascope_path(tmp_path)
    path.parent.mkdir(parents=True)
    np.savez(path, **w)
    before = snapshot(tmp_path)
    with pytest.raises(SAELoadError, match=r"params\.npz"):
        load_sae(path)
    assert not marker.exists()
    assert snapshot(tmp_path) == before
    # The file does carry a live payload: an unpickling loader would have run it.
    with np.load(path, allow_pickle=True) as data:
        data["threshold"]
    assert marker.is_dir()


def test_check_feature() -> None:
    sae = random_sae("standard")
    assert sae.check_feature(0) == 0
    assert sae.check_feature(D_SAE - 1) == D_SAE - 1
    for bad in (D_SAE, -1):
        with pytest.raises(FeatureIndexError, match=f"0 to {D_SAE - 1}") as info:
            sae.check_feature(bad)
        assert str(bad) in str(info.value)


def test_engine_refuses_sae_of_wrong_width(llama) -> None:
    assert llama.d_model == 64
    with pytest.raises(ShapeMismatchError) as info:
        Engine(llama, random_sae("standard"))
    assert str(D_IN) in str(info.value) and "64" in str(info.value)


# =========================================================================================== known bugs
def test_gemmascope_layer_comes_from_nearest_folder(tmp_path: Path) -> None:
    path = write_gemmascope(gemmascope_path(tmp_path / "layer_12_sweep"), saelens_weights("jumprelu"))
    assert load_sae(path).hook == HookPoint(5, "resid_post")


def test_sparsify_non_residual_folder_refused_even_with_layer(tmp_path: Path) -> None:
    folder = write_sparsify(tmp_path / "layers.3.mlp", sparsify_weights())
    with pytest.raises(SAELoadError, match="residual"):
        load_sae(folder)
    with pytest.raises(SAELoadError, match="residual"):
        load_sae(folder, layer=3)


@pytest.mark.parametrize("flag", [{"transcode": True}, {"skip_connection": True}, {"activation": "groupmax"}],
                         ids=["transcode", "skip_connection", "groupmax"])
def test_sparsify_variants_not_silently_misread(tmp_path: Path, flag: dict) -> None:
    w = sparsify_weights()
    if "skip_connection" in flag:
        w["W_skip"] = torch.randn(D_IN, D_IN)
    folder = write_sparsify(tmp_path / "layers.3", w, {"k": K, "num_latents": D_SAE, "d_in": D_IN, **flag})
    with pytest.raises(SAELoadError):
        load_sae(folder)


def _truncated_npz(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _corrupted_npz(data: bytes) -> bytes:
    """One byte of the first member's data flipped: the zip's CRC check fails on reading."""
    return data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]


@pytest.mark.parametrize("damage", [_truncated_npz, _corrupted_npz], ids=["truncated", "corrupted"])
def test_damaged_npz_is_refused_clearly(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = write_gemmascope(gemmascope_path(tmp_path), saelens_weights("jumprelu"))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SAELoadError, match=r"params\.npz"):
        load_sae(path)


def test_save_onto_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SAELoadError):
        random_sae("standard").save(tmp_path / "taken")


def test_save_overwrite_never_replaces_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SAELoadError, match="not a folder"):
        random_sae("standard").save(tmp_path / "taken", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_text() == "x"
