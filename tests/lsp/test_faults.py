"""Injected faults through the server: broken model and SAE files, a steering store that cannot be written, a
device that runs out of memory mid-generation. Each is one clear message; the server keeps serving, and the next
good request works."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import pytest_lsp
import torch
from lsprotocol import types
from pytest_lsp import ClientServerConfig
from safetensors.torch import load_file, save_file

from .conftest import (
    Client,
    command,
    init_options,
    make_client,
    open_doc,
    start,
    wait_annotated,
    wait_for,
    wait_ready,
)

SAE_FILE = "sae_weights.safetensors"


def broken_assets(assets: dict[str, str], root: Path) -> dict[str, dict[str, str]]:
    """Settings naming a broken model or SAE, by what is wrong with it."""
    model, sae = Path(assets["model"]), Path(assets["sae"])

    def copy(src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, root / name))

    truncated = copy(model, "truncated-model")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("Not a model: the writer's notes.\n")
    (root / "garbage.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 40)

    def sae_with(name: str, change: Any) -> Path:
        folder = copy(sae, name)
        tensors = load_file(str(folder / SAE_FILE))
        change(tensors, folder)
        save_file(tensors, str(folder / SAE_FILE))
        return folder

    def nan(t: dict[str, torch.Tensor], _: Path) -> None:
        t["W_enc"][0, 0] = float("nan")

    def cut(t: dict[str, torch.Tensor], _: Path) -> None:
        t["W_dec"] = t["W_dec"][:, :-3].contiguous()

    def wider(t: dict[str, torch.Tensor], folder: Path) -> None:  # a whole SAE, for a model twice as wide
        d_in = t["W_enc"].shape[0] * 2
        t["W_enc"] = torch.randn(d_in, t["W_enc"].shape[1])
        t["W_dec"] = torch.randn(t["W_dec"].shape[0], d_in)
        t["b_dec"] = torch.zeros(d_in)
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": d_in}))
        (folder / "feature_stats.safetensors").unlink(missing_ok=True)

    truncated_sae = copy(sae, "truncated-sae")
    data = (truncated_sae / SAE_FILE).read_bytes()
    (truncated_sae / SAE_FILE).write_bytes(data[: len(data) // 3])
    good = {"model": str(model), "sae": str(sae)}
    return {
        "missing model": {**good, "model": str(root / "no-such-model")},
        "truncated model": {**good, "model": str(truncated)},
        "not a model": {**good, "model": str(root / "notes.txt")},
        "garbage gguf": {**good, "model": str(root / "garbage.gguf")},
        "missing sae": {**good, "sae": str(root / "no-such-sae")},
        "truncated sae": {**good, "sae": str(truncated_sae)},
        "sae with NaN": {**good, "sae": str(sae_with("nan-sae", nan))},
        "sae of wrong shapes": {**good, "sae": str(sae_with("cut-sae", cut))},
        "sae for another model": {**good, "sae": str(sae_with("wide-sae", wider))},
    }


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp_server", "-v"],
                                              client_factory=make_client))
async def fresh(lsp_client: Client):
    yield lsp_client
    await lsp_client.shutdown_session()


async def test_broken_model_and_sae_files_are_one_clear_message_each(fresh: Client, assets, tmp_path) -> None:
    cases = broken_assets(assets, tmp_path)
    await start(fresh, "neovim", init_options(assets), tmp_path)
    await wait_ready(fresh)
    uri = "file:///faults.md"
    open_doc(fresh, uri, "The rain fell on the quiet harbour.\n")
    await wait_annotated(fresh, uri, 1)
    said: dict[str, str] = {}
    for case, paths in [*cases.items(), ("good again", {"model": assets["model"], "sae": assets["sae"]})]:
        errors_before = len([m for m in fresh.messages if m.type == types.MessageType.Error])
        fresh.set_configuration({**init_options(assets), **paths}, section="tinymorph")
        fresh.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        if case == "good again":
            await wait_ready(fresh, after_failure=True)
            break

        async def failed(before: int = errors_before) -> Any:
            errors = [m for m in fresh.messages if m.type == types.MessageType.Error]
            return errors[before:] if len(errors) > before else None

        new = await wait_for(failed, what=f"the {case} to fail")
        status = await command(fresh, "tinymorph.status")
        assert status["state"] == "failed", (case, status)
        [message] = new  # one message per fault
        said[case] = message.message
        assert message.message.startswith("tinymorph: the model failed to load: ")
        assert "Traceback" not in message.message and 'File "' not in message.message
        assert len(message.message) < 600, message.message
        # the server keeps serving: the document, hints from its cache, hover
        assert (await command(fresh, "tinymorph.document", {"uri": uri}))["version"] == 1
        await fresh.text_document_hover_async(types.HoverParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=4)))
    assert len(set(said.values())) == len(cases)  # each fault says what is wrong with its own file
    for case, fragment in {"missing model": "no-such-model", "missing sae": "no-such-sae", "sae with NaN": "NaN",
                           "not a model": "notes.txt", "garbage gguf": "garbage.gguf"}.items():
        assert fragment in said[case], (case, said[case])
    insert_at = types.Position(line=0, character=0)
    fresh.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=insert_at, end=insert_at), text="Late. ")]))
    await wait_annotated(fresh, uri, 2)  # the good model is back and annotates


PLAN = Path(tempfile.gettempdir()) / f"tinymorph-faults-{os.getpid()}.json"
"""The faults the server below injects: {"save": an errno name, "oom": true (once)}."""
LAUNCH = """
import errno, json, os, pathlib, sys
import torch
import steering.atomic, steering.engine
plan = pathlib.Path(sys.argv[1])

def fault(kind):
    wanted = json.loads(plan.read_text()) if plan.exists() else {}
    return wanted.get(kind)

real_write = steering.atomic.write_bytes
def write_bytes(dest, data):
    code = fault("save")
    if code:
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(dest))
    return real_write(dest, data)
steering.atomic.write_bytes = write_bytes

real_start, real_generate = steering.engine.Engine.start, steering.engine.Engine.generate
def out_of_memory():
    if fault("oom"):
        plan.write_text(json.dumps({}))  # once
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
def start(self, *args, **kwargs):
    out_of_memory()
    return real_start(self, *args, **kwargs)
def generate(self, *args, **kwargs):
    out_of_memory()
    return real_generate(self, *args, **kwargs)
steering.engine.Engine.start, steering.engine.Engine.generate = start, generate

from lsp_server.__main__ import main
main(["-v"])
"""


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-c", LAUNCH, str(PLAN)],
                                              client_factory=make_client))
async def faulty(lsp_client: Client):
    PLAN.unlink(missing_ok=True)
    yield lsp_client
    await lsp_client.shutdown_session()
    PLAN.unlink(missing_ok=True)


def steer(feature: int) -> dict[str, Any]:
    return {"feature": feature, "strength": 2, "mode": "add"}


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
async def test_a_store_that_cannot_be_written_changes_nothing(faulty: Client, assets, tmp_path, code: str) -> None:
    await start(faulty, "neovim", init_options(assets), tmp_path)
    await wait_ready(faulty)
    await command(faulty, "tinymorph.steer.add", steer(3))
    store = tmp_path / ".tinymorph"
    saved = (store / "steering.json").read_bytes()
    PLAN.write_text(json.dumps({"save": code}))
    for name, args in [("tinymorph.steer.add", steer(4)), ("tinymorph.steer.remove", {"feature": 3}),
                       ("tinymorph.steer.clear", {})]:
        with pytest.raises(Exception, match=os.strerror(getattr(errno, code))) as caught:
            await command(faulty, name, args)
        assert "nothing changed" in str(caught.value)
    assert [s["feature"] for s in (await command(faulty, "tinymorph.steer.list"))["steering"]] == [3]
    assert (store / "steering.json").read_bytes() == saved
    assert sorted(p.name for p in store.iterdir()) == ["steering.json"]  # no temporary left behind
    PLAN.unlink()
    await command(faulty, "tinymorph.steer.add", steer(4))  # the disk has room again: the next change saves
    assert [s["feature"] for s in json.loads((store / "steering.json").read_text())["steering"]] == [3, 4]


async def test_out_of_memory_mid_generation_is_one_message_and_the_next_request_works(faulty: Client, assets,
                                                                                       tmp_path) -> None:
    await start(faulty, "neovim", init_options(assets), tmp_path)
    await wait_ready(faulty)
    uri = "file:///oom.md"
    text = "The rain fell on the quiet harbour and"
    open_doc(faulty, uri, text)
    await wait_annotated(faulty, uri, 1)
    whole = types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=len(text)))
    hints = await faulty.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=whole))
    PLAN.write_text(json.dumps({"oom": True}))

    async def complete() -> types.CompletionList:
        return await faulty.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=len(text))))

    assert not (await complete()).items  # dropped, not an error pop-up from the editor
    said = [m for m in faulty.messages if "ran out of memory" in m.message]
    assert len(said) == 1 and "Traceback" not in said[0].message
    again = await faulty.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=whole))
    assert again == hints  # hints keep coming from the cache
    assert len((await complete()).items) == 1  # the next request works
    assert len([m for m in faulty.messages if "ran out of memory" in m.message]) == 1
