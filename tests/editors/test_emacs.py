"""Emacs (Debian's emacs-nox) with eglot (Debian's elpa-eglot) and editor-configs/emacs/tinymorph.el, in batch mode,
against `python -m lsp_server`. Missing packages are installed with apt-get when running as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lsp.conftest import assets  # noqa: F401  (the tiny model and SAE fixture)

ROOT = Path(__file__).resolve().parents[2]
ELPA = Path("/usr/share/emacs/site-lisp/elpa")


def ensure_emacs() -> str:
    """The emacs binary, installing emacs-nox and elpa-eglot with apt-get (as root) when they are missing."""
    have_eglot = ELPA.exists() and any(p.name.startswith("eglot") for p in ELPA.iterdir())
    if shutil.which("emacs") and have_eglot:
        return str(shutil.which("emacs"))
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("emacs-nox and elpa-eglot are missing and cannot be installed here (needs apt-get as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "emacs-nox", "elpa-eglot"], check=True, env=env,
                   capture_output=True, timeout=1200)
    found = shutil.which("emacs")
    assert found, "apt-get installed emacs-nox, but there is no emacs on PATH"
    return found


def run_emacs(emacs: str, script: Path, env_value: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd), "TINYMORPH_EMACS_TEST": json.dumps(env_value)}
    load_path = [arg for d in sorted(ELPA.iterdir()) if d.is_dir() for arg in ("-L", str(d))]
    return subprocess.run([emacs, "--batch", "-Q", *load_path, "-l", str(script)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_eglot_connects_hover_and_code_actions(assets, tmp_path: Path) -> None:  # noqa: F811
    emacs = ensure_emacs()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # a project for project.el
    doc = tmp_path / "notes.txt"
    doc.write_text("The rain fell on the quiet harbour.\n\nShe read the letter again and the gulls cried.\n",
                   encoding="utf-8")
    result = tmp_path / "result.json"
    proc = run_emacs(emacs, Path(__file__).with_name("emacs_session.el"), {
        "config": str(ROOT / "editor-configs" / "emacs"), "python": sys.executable, "doc": str(doc),
        "model": assets["model"], "sae": assets["sae"], "result": str(result)}, tmp_path)
    assert result.exists(), f"emacs wrote no result: {proc.stdout[-2000:]} {proc.stderr[-3000:]}"
    out = json.loads(result.read_text(encoding="utf-8"))
    assert out.get("ok") is True, out.get("error")
    assert out["major_mode"] == "text-mode" and out["language_id"] == "plaintext"
    assert out["connected"] is True and out["ready"] is True and out["keys"] is True
    assert out["hover"].startswith("**tinymorph** · `")
    titles = out["titles"]
    assert any(t.startswith("Amplify ") for t in titles)
    assert any(t.startswith("Rewrite selection") for t in titles)
    assert out["rewrite_applied"] is True  # eglot 1.9 has no codeAction/resolve: the command path applied it
    assert out["steering"] == 1
    assert out["server_text_matches"] is True
    assert out["preset_made"] == "rain" and out["preset_enabled"] is False
    assert out["preset_names"] == ["harbour"] and "[off] harbour" in out["preset_message"]
    assert out["presets_left"] == 0
    assert "Select at least 2 words" in out["preset_error"]
    # features by example, a watched feature in flymake, the feature map
    assert out["example_watched"] == 1
    assert out["flymake"] is True, out["flymake_texts"]
    assert all(t.startswith("tinymorph: watch this \u2014 \u201c") for t in out["flymake_texts"])
    assert set(out["flymake_types"]) == {"eglot-warning"}
    assert out["flymake_cleared"] is True
    assert out["map_opened"] == out["map_path"] and Path(out["map_path"]).is_file()
    assert Path(out["map_path"]).parent == tmp_path / ".tinymorph" / "maps"


def test_a_missing_server_is_one_clear_error(tmp_path: Path) -> None:
    emacs = ensure_emacs()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("hello\n", encoding="utf-8")
    script = tmp_path / "missing.el"
    script.write_text(f"""
(add-to-list 'load-path {json.dumps(str(ROOT / 'editor-configs' / 'emacs'))})
(require 'tinymorph)
(setq tinymorph-command '("/nonexistent/tinymorph" "serve"))
(find-file {json.dumps(str(tmp_path / 'a.txt'))})
(let ((msg (condition-case err (progn (apply #'eglot (eglot--guess-contact)) "connected")
             (error (error-message-string err)))))
  (with-temp-file {json.dumps(str(tmp_path / 'out.txt'))} (insert msg (format "\\n%s" (hash-table-count eglot--servers-by-project)))))
(kill-emacs 0)
""", encoding="utf-8")
    run_emacs(emacs, script, {}, tmp_path)
    message, servers = (tmp_path / "out.txt").read_text(encoding="utf-8").rsplit("\n", 1)
    assert "is not an executable" in message and "tinymorph-command" in message
    assert servers.strip() == "0"
