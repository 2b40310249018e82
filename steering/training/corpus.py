"""Text corpora for SAE training and evaluation: files, folders and globs of plain text and Markdown.

Documents are tokenized and joined with the model's end-of-sequence token into one stream, then cut into
fixed-length sequences; each DDP rank takes every world-th sequence.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steering.errors import TinymorphError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text", ".rst")


class CorpusError(TinymorphError):
    """The corpus is missing, empty or too small."""


@dataclass(frozen=True)
class CorpusFile:
    path: str
    sha256: str
    chars: int
    tokens: int


def _portable(path: str) -> str:
    """`path` relative to the working folder when it lies under it, so provenance holds no local home paths."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


@dataclass
class Corpus:
    """All documents as one token stream `[n]` (int64), with per-file provenance."""

    tokens: torch.Tensor
    files: list[CorpusFile]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())

    def shares(self) -> dict[str, float]:
        """Each source's share of the tokens, a source being a file's folder (`train/gutenberg`: `gutenberg`)."""
        counts: dict[str, int] = {}
        for f in self.files:
            source = Path(f.path).parent.name or "."
            counts[source] = counts.get(source, 0) + f.tokens
        total = max(1, sum(counts.values()))
        return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}

    def provenance(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "tokens": self.n_tokens,
            "shares": self.shares(),
            "sha256": hashlib.sha256("".join(f.sha256 for f in self.files).encode()).hexdigest(),
            "sources": [_portable(f.path) for f in self.files[:50]] + ([f"... {len(self.files) - 50} more"] if len(self.files) > 50
                                                             else []),
        }

    def n_sequences(self, context: int) -> int:
        return self.n_tokens // context

    def sequences(self, context: int, *, start: int = 0, rank: int = 0, world: int = 1,
                  repeat: bool = False, shuffle: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(position in the stream of sequences, ids `[context]`) for this rank from `start` on.

        Positions count on past the end when `repeat` is set (the corpus is cycled); rank r takes positions
        r, r + world, ... so ranks read disjoint shards. With a `shuffle` seed, position p reads sequence
        `permutation[p]` (one seeded permutation of the whole corpus), so any stretch of training sees every source
        of a corpus in proportion, not one file after another.
        """
        n = self.n_sequences(context)
        if n == 0:
            raise CorpusError(f"The corpus holds {self.n_tokens} tokens, less than one sequence of {context}.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle)) if shuffle is not None else None
        index = start
        while repeat or index < n:
            if index % world == rank:
                i = index % n
                i = int(order[i]) if order is not None else i
                yield index, self.tokens[i * context : (i + 1) * context]
            index += 1


def corpus_files(paths: Sequence[str]) -> list[Path]:
    """Expand files, folders (recursively: .txt, .md, .markdown, .text, .rst) and globs, sorted, without repeats."""
    found: list[Path] = []
    for spec in paths:
        matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))] if glob.has_magic(spec) else [Path(spec)]
        if not matches:
            raise CorpusError(f"No file matches {spec!r}.")
        for path in matches:
            if path.is_dir():
                found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            elif path.is_file():
                found.append(path)
            else:
                raise CorpusError(f"Corpus path not found: {path}")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise CorpusError(f"The corpus is empty: no text files in {', '.join(paths)}.")
    return unique


def load_corpus(tokenizer: Any, paths: Sequence[str], *, separator: int | None = None,
                max_tokens: int | None = None) -> Corpus:
    """Read and tokenize every file (UTF-8; undecodable bytes replaced); stop once `max_tokens` are collected."""
    pieces: list[torch.Tensor] = []
    files: list[CorpusFile] = []
    total = 0
    for path in corpus_files(paths):
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        ids = _tokenize(tokenizer, text)
        if separator is not None:
            ids.append(separator)
        pieces.append(torch.tensor(ids, dtype=torch.int64))
        files.append(CorpusFile(str(path), hashlib.sha256(raw).hexdigest(), len(text), len(ids)))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not pieces:
        raise CorpusError(f"The corpus is empty: the files in {', '.join(paths)} hold no text.")
    return Corpus(torch.cat(pieces), files)


def _tokenize(tokenizer: Any, text: str, chunk_chars: int = 200_000) -> list[int]:
    """Tokenize long texts in paragraph-aligned chunks so memory stays bounded."""
    ids: list[int] = []
    pos = 0
    while pos < len(text):
        end = min(len(text), pos + chunk_chars)
        if end < len(text):
            cut = text.rfind("\n\n", pos, end)
            end = cut + 2 if cut > pos else end
        ids += tokenizer(text[pos:end])["input_ids"]
        pos = end
    return ids
