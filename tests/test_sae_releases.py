"""SAEs by SAELens release name (`RELEASE/ID`), found in a fake Hugging Face cache laid out as the hub lays it out;
names the registry lacks and SAEs not downloaded are one clear error, at once (no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steering.cli import main
from steering.engine import resolve_sae_path
from steering.errors import SAELoadError
from steering.sae.autoencoder import SAE, HookPoint
from steering.sae.layouts import load_sae
from steering.sae.releases import lookup, registry

GPT2 = "gpt2-small-res-jb/blocks.8.hook_resid_pre"
GEMMA = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"


def snapshot(cache: Path, repo_id: str, revision: str, main_ref: bool = True) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    folder = repo / "snapshots" / revision
    folder.mkdir(parents=True)
    if main_ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return folder


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def test_the_registry_knows_the_suites_people_use() -> None:
    assert len(registry()) > 100
    gemma = lookup(GEMMA)
    assert gemma is not None and gemma.repo_id == "google/gemma-scope-2b-pt-res"
    assert gemma.path == "layer_20/width_16k/average_l0_71" and gemma.neuronpedia == "gemma-2-2b/20-gemmascope-res-16k"
    gpt2 = lookup(GPT2)
    assert gpt2 is not None and gpt2.repo_id == "jbloom/GPT2-Small-SAEs-Reformatted" and gpt2.path == "blocks.8.hook_resid_pre"
    assert lookup("llama_scope_lxr_8x/l20r_8x") is not None
    assert lookup("not-a-release/x") is None and lookup("./some/folder") is None
    with pytest.raises(SAELoadError, match="Did you mean layer_20/width_16k/canonical"):
        lookup("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonicl")


def test_a_release_name_finds_its_folder_in_the_cache(cache: Path) -> None:
    torch.manual_seed(0)
    old = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted", "0" * 40, main_ref=False)
    SAE(64, 128, "topk", k=8, hook=HookPoint(8, "resid_pre")).save(old / "blocks.8.hook_resid_pre")
    new = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted", "1" * 40)
    SAE(64, 256, "topk", k=8, hook=HookPoint(8, "resid_pre")).save(new / "blocks.8.hook_resid_pre")
    folder = resolve_sae_path(GPT2)
    assert folder == new / "blocks.8.hook_resid_pre", "the revision refs/main names"
    sae = load_sae(folder)
    assert sae.d_sae == 256 and sae.hook is not None and sae.hook.layer == 8

    npz = snapshot(cache, "google/gemma-scope-2b-pt-res", "2" * 40) / "layer_20/width_16k/average_l0_71/params.npz"
    npz.parent.mkdir(parents=True)
    np.savez(npz, W_enc=np.random.randn(64, 128).astype(np.float32), W_dec=np.random.randn(128, 64).astype(np.float32),
             b_enc=np.zeros(128, np.float32), b_dec=np.zeros(64, np.float32), threshold=np.full(128, 0.1, np.float32))
    sae = load_sae(resolve_sae_path(GEMMA))
    assert sae.d_sae == 128 and sae.hook is not None and sae.hook.layer == 20

    # Llama Scope: one repository per sublayer and width, a folder per layer inside it
    ls = snapshot(cache, "fnlp/Llama3_1-8B-Base-LXR-8x", "3" * 40) / "Llama3_1-8B-Base-L20R-8x"
    (ls / "checkpoints").mkdir(parents=True)
    hook = "blocks.20.hook_resid_post"
    (ls / "hyperparams.json").write_text(json.dumps({
        "d_model": 64, "d_sae": 512, "hook_point_in": hook, "hook_point_out": hook, "act_fn": "jumprelu",
        "jump_relu_threshold": 0.5, "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": 12.0, "out": 12.0}}))
    save_file({"encoder.weight": torch.randn(512, 64), "encoder.bias": torch.zeros(512),
               "decoder.weight": torch.randn(64, 512), "decoder.bias": torch.zeros(64)},
              str(ls / "checkpoints" / "final.safetensors"))
    sae = load_sae(resolve_sae_path("llama_scope_lxr_8x/l20r_8x"))
    assert (sae.layout, sae.d_sae, sae.hook) == ("llamascope", 512, HookPoint(20, "resid_post"))


def test_an_sae_not_downloaded_is_one_clear_error_at_once(cache: Path, capsys, tiny_model_dir) -> None:
    with pytest.raises(SAELoadError, match="huggingface-cli download google/gemma-scope-2b-pt-res --include "
                                           "'layer_20/width_16k/average_l0_71/"):
        resolve_sae_path(GEMMA)
    t0 = time.monotonic()
    assert main(["info", "--model", str(tiny_model_dir), "--sae", GPT2]) == 2
    err = capsys.readouterr().err
    assert "is not in the Hugging Face cache" in err and "Traceback" not in err and err.count("\n") <= 4
    assert time.monotonic() - t0 < 30, "no network wait"
    assert resolve_sae_path("some/local/folder") == Path("some/local/folder"), "other names stay paths"


def test_import_labels_by_release_name_takes_the_export_entries_of_its_neuronpedia_id(cache: Path, tmp_path: Path,
                                                                                     capsys) -> None:
    import json

    folder = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted", "3" * 40) / "blocks.8.hook_resid_pre"
    SAE(64, 128, "topk", k=8, hook=HookPoint(8, "resid_pre")).save(folder)
    export = tmp_path / "gpt2.jsonl"
    export.write_text("\n".join(json.dumps({"modelId": "gpt2-small", "layer": f"{layer}-res-jb", "index": str(i),
                                            "description": f"mentions of {word}"})
                                for layer, word in ((8, "harbours"), (5, "kings")) for i in range(4)),
                      encoding="utf-8")
    assert main(["import-labels", str(export), "--sae", GPT2, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["features"] == 4 and said["source"] == "Neuronpedia gpt2-small/8-res-jb"
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    assert {e["label"] for e in labels["features"].values()} == {"harbours"}
