"""The VS Code extension: its settings schema mirrors the server's, and it builds (tsc), passes its node tests and
packages to a .vsix (@vscode/vsce) from npm packages alone. The run inside VS Code for the web is
editor-configs/vscode/e2e (by hand: code-server and Chromium are large), so this suite does not start the editor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from lsp_server.config import schema

EXTENSION = Path(__file__).resolve().parents[2] / "editor-configs" / "vscode"


def test_settings_schema_mirrors_the_server() -> None:
    package = json.loads((EXTENSION / "package.json").read_text(encoding="utf-8"))
    props = package["contributes"]["configuration"]["properties"]
    server = {s["name"]: s for s in schema()}
    ours = {k.removeprefix("tinymorph."): v for k, v in props.items() if not k.startswith("tinymorph.server.")}
    assert set(ours) == set(server)
    for name, prop in ours.items():
        assert prop["type"] == server[name]["type"], name
        assert prop["default"] == server[name]["default"], name
        assert prop["markdownDescription"] == server[name]["doc"], name
    assert {"tinymorph.server.command", "tinymorph.server.pythonPath"} <= set(props)
    commands = {c["command"] for c in package["contributes"]["commands"]}
    assert {"tinymorph.ui.steer", "tinymorph.ui.clear", "tinymorph.ui.list", "tinymorph.ui.search",
            "tinymorph.ui.moreLikeThis", "tinymorph.ui.presets", "tinymorph.ui.watch", "tinymorph.ui.watches",
            "tinymorph.ui.byExample", "tinymorph.ui.map"} <= commands
    # palette commands must not collide with the server's commands, which the language client registers itself
    assert not any(c.startswith(("tinymorph.steer.", "tinymorph.features.", "tinymorph.preset.", "tinymorph.watch.",
                                 "tinymorph.map")) for c in commands)


def npm() -> str:
    found = shutil.which("npm")
    if found and shutil.which("node"):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("node and npm are missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nodejs", "npm"], check=True, env=env, capture_output=True,
                   timeout=1200)
    found = shutil.which("npm")
    assert found, "apt-get installed npm, but it is not on PATH"
    return found


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_extension_builds_tests_and_packages(tmp_path: Path) -> None:
    exe = npm()
    work = tmp_path / "vscode"
    shutil.copytree(EXTENSION, work, ignore=shutil.ignore_patterns("node_modules", "out", "*.vsix"))
    run([exe, "ci", "--no-audit", "--no-fund"], work)
    run([exe, "run", "compile"], work)
    out = run([exe, "test"], work)
    assert "# fail 0" in out and "# pass" in out
    run([exe, "run", "package"], work)
    with zipfile.ZipFile(work / "tinymorph.vsix") as vsix:
        names = set(vsix.namelist())
    assert {"extension/package.json", "extension/out/extension.js", "extension/out/settings.js"} <= names
    with zipfile.ZipFile(work / "tinymorph.vsix") as vsix:
        compiled = vsix.read("extension/out/extension.js").decode("utf-8")
    for server_command in ("tinymorph.preset.create", "tinymorph.preset.list", "tinymorph.watch.add",
                           "tinymorph.watch.remove", "tinymorph.features.byExample", "tinymorph.map",
                           "createWebviewPanel"):  # the palette drives the server's
        assert server_command in compiled
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any(n.startswith("extension/src/") or n.startswith("extension/out/test/") for n in names)
