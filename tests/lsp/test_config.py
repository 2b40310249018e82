"""Configuration: initializationOptions, workspace/configuration, invalid settings (a message naming the key, then
the defaults), model reloads with progress, a model that fails to load, steering that survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types

from .conftest import SERVER, Client, command, init_options, start, wait_for, wait_ready


@pytest_lsp.fixture(config=SERVER, params=["neovim", "emacs"])
async def fresh(lsp_client: Client, request: pytest.FixtureRequest):
    lsp_client.spec = request.param  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


async def test_invalid_settings_are_named_and_defaulted(fresh: Client, assets, tmp_path: Path) -> None:
    options = init_options(assets, hintCount="many", debounceMs=-5, colour="blue", hintGranularity="word")
    await start(fresh, fresh.spec, options, tmp_path)
    status = await wait_ready(fresh)
    text = " ".join(m.message for m in fresh.messages)
    for key in ("hintCount", "debounceMs", "'colour'", "hintGranularity"):
        assert key in text
    settings = status["settings"]
    assert settings["hintCount"] == 3 and settings["debounceMs"] == 300 and settings["hintGranularity"] == "paragraph"
    assert settings["maxTokens"] == 8  # the valid settings still apply


async def test_model_reload_progress_and_failure(fresh: Client, assets, tmp_path: Path) -> None:
    await start(fresh, fresh.spec, init_options(assets), tmp_path)
    await wait_ready(fresh)
    begun = [r for reports in fresh.progress_reports.values() for r in reports
             if isinstance(r, types.WorkDoneProgressBegin)]
    assert begun and begun[0].title == "tinymorph"
    fresh.set_configuration({"model": str(tmp_path / "no-such-model")}, section="tinymorph")
    fresh.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))

    async def failed():
        status = await command(fresh, "tinymorph.status")
        return status if status["state"] == "failed" else None

    status = await wait_for(failed, what="the load to fail")
    assert "no-such-model" in status["error"]
    assert any(m.type == types.MessageType.Error and "failed to load" in m.message for m in fresh.messages)
    with pytest.raises(Exception, match="failed to load"):
        await command(fresh, "tinymorph.features.explain", {"feature": 1})
    fresh.set_configuration({"model": assets["model"]}, section="tinymorph")
    fresh.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    await wait_ready(fresh, after_failure=True)  # back to a working model, without a restart


async def test_steering_survives_a_restart(fresh: Client, assets, tmp_path: Path) -> None:
    state = tmp_path / ".tinymorph"
    state.mkdir()
    (state / "steering.json").write_text(json.dumps({"version": 1, "steering": [  # a file from before `value`
        {"feature": 6, "strength": 3.0, "mode": "add", "label": "x"},
        {"feature": 2, "strength": 1.5, "mode": "clamp", "label": "y"},
        {"feature": 4, "strength": 0.0, "mode": "ablate", "label": ""}]}), encoding="utf-8")
    await start(fresh, fresh.spec, init_options(assets), tmp_path)
    listed = await command(fresh, "tinymorph.steer.list")
    assert listed["steering"] == [{"feature": 6, "strength": 3.0, "mode": "add", "label": "x"},
                                  {"feature": 2, "value": 1.5, "mode": "clamp", "label": "y"},
                                  {"feature": 4, "mode": "ablate", "label": ""}]


async def test_a_damaged_steering_file_is_reported_not_lost(fresh: Client, assets, tmp_path: Path) -> None:
    state = tmp_path / ".tinymorph"
    state.mkdir()
    (state / "steering.json").write_text("{not json", encoding="utf-8")
    await start(fresh, fresh.spec, init_options(assets), tmp_path)
    listed = await command(fresh, "tinymorph.steer.list")
    assert listed["steering"] == []
    assert any("not a valid steering file" in m.message for m in fresh.messages)
    assert (state / "steering.json").read_text(encoding="utf-8") == "{not json"


async def test_without_a_workspace_steering_lives_in_memory(fresh: Client, assets) -> None:
    await start(fresh, fresh.spec, init_options(assets), None)
    await wait_ready(fresh)
    listed = await command(fresh, "tinymorph.steer.add", {"feature": 1})
    assert listed["file"] is None and [e["feature"] for e in listed["steering"]] == [1]


def test_engine_settings_are_the_engine_config_fields() -> None:
    """The settings that load the engine take their default and description from EngineConfig, and build it."""
    import dataclasses

    from lsp_server.config import ENGINE_SETTINGS, FIELDS, parse_settings
    from steering.config import EngineConfig, field_docs

    engine = {f.name: f for f in dataclasses.fields(EngineConfig)}
    assert ENGINE_SETTINGS == ("model", "sae", "device", "dtype", "trust_remote_code", "cache_mb")
    for name in ENGINE_SETTINGS:
        assert FIELDS[name].default == engine[name].default, name
        assert FIELDS[name].metadata["doc"].startswith(field_docs(EngineConfig)[name]), name
    settings, problems = parse_settings({"model": "/m", "sae": "none", "device": "cpu", "dtype": "float32",
                                         "cacheMb": 64, "hintCount": 5})
    assert not problems
    assert settings.engine_config() == EngineConfig(model="/m", sae="none", device="cpu", dtype="float32", cache_mb=64)


async def test_an_sae_without_statistics_or_labels_is_said_once_with_the_command(fresh: Client, assets,
                                                                                  tmp_path: Path) -> None:
    import torch

    from steering.sae.autoencoder import SAE, HookPoint

    torch.manual_seed(0)
    bare = SAE(64, 128, "topk", k=8, hook=HookPoint(2, "resid_post")).save(tmp_path / "bare-sae")
    await start(fresh, fresh.spec, init_options(assets, sae=str(bare)), tmp_path)
    await wait_ready(fresh)

    def told() -> list[str]:
        return [m.message for m in fresh.messages if "tinymorph prepare" in m.message]

    await wait_for(lambda: _now(told() or None), what="the notice")
    [notice] = told()
    assert "no feature statistics and labels yet" in notice and f"--sae {bare} --corpus FILES" in notice
    # the shipped test SAE has both: no notice for it
    fresh.set_configuration({"sae": assets["sae"]}, section="tinymorph")
    fresh.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))

    async def reloaded():
        status = await command(fresh, "tinymorph.status")
        return status if status.get("engine", {}).get("sae") == assets["sae"] else None

    await wait_for(reloaded, what="the other SAE loaded")
    assert len(told()) == 1


async def _now(value):
    return value
