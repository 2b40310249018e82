"""reStructuredText sources as the Markdown notes people write: headings with `#`, code fenced, math in `$`.

The technical part of the default SAE's corpus comes from documentation shipped as reStructuredText (the Python and
scikit-learn manuals); the text writers annotate is Markdown. This turns the one into the other closely enough that
the SAE sees Markdown's shapes (fenced code, `$…$` math, `[links](…)`, lists) rather than Sphinx markup.
"""

from __future__ import annotations

import re

_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_ADMONITIONS = {"note", "warning", "tip", "important", "caution", "seealso", "versionadded", "versionchanged",
                "deprecated", "attention", "hint", "topic", "rubric", "admonition", "danger", "error"}
_CODE = {"code-block", "code", "sourcecode", "doctest", "testcode", "productionlist", "highlight"}
_SIGNATURES = {"function", "class", "method", "attribute", "data", "exception", "decorator", "module",
               "classmethod", "staticmethod", "opcode", "cmdoption", "option", "envvar", "describe", "property"}


def _inline(line: str) -> str:
    line = re.sub(r":math:`([^`]*)`", r"$\1$", line)
    line = re.sub(r":[\w:+-]+:`~?([^`<]*?)\s*<[^`>]*>`", r"`\1`", line)  # :ref:`text <target>`
    line = re.sub(r":[\w:+-]+:`~([\w.]*?\.)?([^`.]+)`", r"`\2`", line)  # :class:`~a.b.C` -> `C`
    line = re.sub(r":[\w:+-]+:`([^`]*)`", r"`\1`", line)
    line = re.sub(r"`([^`<]+?)\s*<(https?://[^>]+)>`__?", r"[\1](\2)", line)
    line = re.sub(r"`([^`]+)`__?", r"\1", line)
    line = re.sub(r"``([^`]+)``", r"`\1`", line)
    line = re.sub(r"\|(\w[\w -]*)\|", r"\1", line)
    return line


def _block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines indented deeper than `indent` from `start` (blank lines inside kept), dedented; the next index."""
    body: list[str] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
        i += 1
    while body and not body[-1].strip():
        body.pop()
    while body and not body[0].strip():
        body.pop(0)
    cut = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
    return [b[cut:] for b in body], i


def to_markdown(text: str) -> str:
    """Markdown for a reStructuredText document (a best effort: what Sphinx alone would resolve is dropped)."""
    lines = text.replace("\r\n", "\n").replace("\t", "    ").split("\n")
    out: list[str] = []
    levels: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _UNDERLINE.match(line) and i + 2 < len(lines) and _UNDERLINE.match(lines[i + 2]) and lines[i + 1].strip():
            i += 1  # an overline: the title and its underline follow
            continue
        if line.strip() and not line.startswith(" ") and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()) - 2:
            mark = nxt.strip()[0]
            if mark not in levels:
                levels.append(mark)
            out += ["#" * min(6, levels.index(mark) + 1) + " " + line.strip(), ""]
            i += 2
            continue
        directive = _DIRECTIVE.match(line)
        if directive:
            indent, name, arg = len(directive.group(1)), directive.group(2).split(":")[-1], directive.group(3).strip()
            body, i = _block(lines, i + 1, indent)
            while body and re.match(r"^:[\w -]+:", body[0]):
                body.pop(0)  # the directive's options
            if name == "math":
                formula = [arg] if arg else []
                out += ["$$", *formula, *[b for b in body if b.strip()], "$$", ""]
            elif name in _CODE:
                language = arg.split()[0] if arg and arg.split()[0] != "default" else ""
                if name != "highlight" and body:
                    out += ["```" + language, *body, "```", ""]
            elif name in _ADMONITIONS:
                head = f"**{name.capitalize()}{': ' + arg if arg else ''}**"
                out += [head, *body, ""]
            elif name in _SIGNATURES:
                out += [f"`{arg}`" if arg else "", *body, ""]
            # everything else (toctree, figure, image, include, autosummary, currentmodule, …) is dropped
            continue
        if re.match(r"^\s*\.\.(\s|$)", line):  # a comment or a link target
            _, i = _block(lines, i + 1, len(line) - len(line.lstrip()))
            continue
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            lead = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and len(lines[j]) - len(lines[j].lstrip()) > lead:
                body, i = _block(lines, j, lead)
                intro = line.rstrip()[:-2].rstrip()
                intro = intro + ":" if intro.strip() and not intro.endswith(":") else intro
                out += [intro, "", "```", *body, "```", ""]
                continue
        out.append(line)
        i += 1
    # inline markup may run over a line break, so it is rewritten on whole stretches of prose, not line by line
    pieces = re.split(r"(^```.*?^```$|^\$\$$.*?^\$\$$)", "\n".join(out), flags=re.M | re.S)
    text = "".join(p if i % 2 else _inline(p) for i, p in enumerate(pieces))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
