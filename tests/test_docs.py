"""The README's configuration table matches the server's settings (names, types, defaults)."""

from __future__ import annotations

import json
from pathlib import Path

from lsp_server.config import Settings, parse_settings, schema

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_lists_every_setting_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    for s in schema():
        row = f"| `{s['name']}` | {s['type']} | `{json.dumps(s['default'])}` |"
        assert row in text, f"README lacks or misstates the setting row: {row}"


def test_parse_settings_reports_and_defaults() -> None:
    settings, problems = parse_settings({"hintCount": 5, "temperature": "hot", "nope": 1, "filetypes": ["md"]})
    assert settings.hint_count == 5 and settings.temperature == Settings().temperature
    assert settings.filetypes == ("md",)
    assert any("temperature" in p for p in problems) and any("'nope'" in p for p in problems)
    settings, problems = parse_settings({"tinymorph": {"maxTokens": 9}})
    assert settings.max_tokens == 9 and not problems
    # VS Code sends its client-side keys (how to start the server) in the same section: not an error
    settings, problems = parse_settings({"server": {"command": ["tinymorph", "serve"]}, "model": "/m"})
    assert settings.model == "/m" and not problems
    _, problems = parse_settings(["not", "an", "object"])
    assert problems == ["tinymorph settings must be an object"]
