"""WordNet's nouns, read from its own files (`index.noun`, `data.noun` of the Debian package `wordnet-base`): the
broader words a label may use (`cattle, sheep, goat` -> `livestock`) and the words each one covers. Optional: the
labeller works without it.

    wn = WordNet.find()            # $TINYMORPH_WORDNET, then /usr/share/wordnet; None when neither has the files
    wn.broader("sheep")            # ['bovid', 'ruminant', ...]: hypernyms of the first senses, nearest first
    wn.covers("livestock")         # {'livestock', 'cattle', 'sheep', ...}: the word and its hyponyms' words
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SEARCH = ("/usr/share/wordnet",)
INFLECTIONS = (("ies", ("y",)), ("ied", ("y",)), ("es", ("", "e")), ("s", ("",)), ("ed", ("", "e")),
               ("ing", ("", "e")), ("er", ("", "e")), ("est", ("", "e")), ("ly", ("",)))
"""Regular endings and what the base form may end in instead."""
"""Where WordNet's files are looked for after $TINYMORPH_WORDNET."""
SENSES = 2
"""Senses of a word whose hypernyms count (WordNet lists a word's senses most frequent first)."""
DEPTH = 2
"""Hypernym levels above a word that count as its broader words."""
COVER_LIMIT = 400
"""A broader word covering more single words than this is too general to name anything (entity, object, ...)."""


@dataclass
class WordNet:
    senses: dict[str, list[str]]
    """Noun -> its synsets' offsets, most frequent sense first."""
    lemmas: dict[str, list[str]]
    """Synset offset -> its single-word lemmas, lower case."""
    up: dict[str, list[str]]
    """Synset offset -> its hypernyms' offsets (instance hypernyms too)."""
    down: dict[str, list[str]]
    """Synset offset -> its hyponyms' offsets."""
    uses: dict[str, dict[str, int]] = field(default_factory=dict)
    """Word -> part of speech (n, v, a, r) -> how often it is used so in WordNet's tagged texts (cntlist.rev; a
    part of speech the word has but that was never tagged counts 0)."""
    irregular: dict[str, str] = field(default_factory=dict)
    """Inflected form -> base form, from WordNet's exception lists (`stood` -> `stand`, `mice` -> `mouse`)."""
    _covers: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def find(cls, folder: str | Path | None = None) -> WordNet | None:
        """WordNet from `folder`, else from $TINYMORPH_WORDNET, else from `SEARCH`; None when none has the files."""
        places = [folder] if folder else [os.environ.get("TINYMORPH_WORDNET"), *SEARCH]
        for place in places:
            if place and (Path(place) / "data.noun").is_file() and (Path(place) / "index.noun").is_file():
                return cls.read(Path(place))
        return None

    @classmethod
    def read(cls, folder: Path) -> WordNet:
        senses: dict[str, list[str]] = {}
        for line in (folder / "index.noun").read_text("latin-1").splitlines():
            if line.startswith(" ") or not line.strip():
                continue  # the licence at the top
            fields = line.split()
            pointers = int(fields[3])
            count = int(fields[2])
            senses[fields[0]] = fields[4 + pointers + 2:4 + pointers + 2 + count]
        lemmas: dict[str, list[str]] = {}
        up: dict[str, list[str]] = {}
        down: dict[str, list[str]] = {}
        for line in (folder / "data.noun").read_text("latin-1").splitlines():
            if line.startswith(" ") or " | " not in line:
                continue
            fields = line.partition(" | ")[0].split()
            offset, n_words = fields[0], int(fields[3], 16)
            words = [fields[4 + 2 * i].lower() for i in range(n_words)]
            lemmas[offset] = [w.split("(")[0] for w in words if "_" not in w and "-" not in w]
            at = 4 + 2 * n_words
            for i in range(int(fields[at])):
                symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                if pos != "n":
                    continue
                if symbol in ("@", "@i"):
                    up.setdefault(offset, []).append(target)
                elif symbol in ("~", "~i"):
                    down.setdefault(offset, []).append(target)
        uses: dict[str, dict[str, int]] = {}
        for pos, name in (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv")):
            for line in (folder / f"index.{name}").read_text("latin-1").splitlines():
                if line and not line.startswith(" "):
                    uses.setdefault(line.split(" ", 1)[0], {})[pos] = 0
        tagged = folder / "cntlist.rev"
        if tagged.is_file():
            for line in tagged.read_text("latin-1").splitlines():
                key, _, rest = line.partition(" ")
                lemma, _, sense = key.partition("%")
                pos = "nvaar"[int(sense[:1]) - 1] if sense[:1] in "12345" else ""
                if pos and lemma in uses:
                    uses[lemma][pos] = uses[lemma].get(pos, 0) + int(rest.split()[-1])
        irregular: dict[str, str] = {}
        for name in ("noun", "verb", "adj", "adv"):
            exceptions = folder / f"{name}.exc"
            if exceptions.is_file():
                for line in exceptions.read_text("latin-1").splitlines():
                    parts = line.split()
                    if len(parts) >= 2:
                        irregular.setdefault(parts[0], parts[1])
        return cls(senses, lemmas, up, down, uses, irregular)

    def knows(self, word: str) -> bool:
        """Whether `word` is an English word in WordNet, in its base form or an inflection of one (`ships`, `baked`,
        `carrying`, `stood`): `sklearn`, `dev` or `foo` are not."""
        word = word.lower()
        if word in self.uses or word in self.irregular:
            return True
        stems = [word[:-len(end)] + add for end, adds in INFLECTIONS if word.endswith(end) and len(word) > len(end) + 2
                 for add in adds]
        stems += [w[:-1] for w in stems if len(w) > 3 and w[-1] == w[-2]]  # stopped -> stopp -> stop
        return any(stem in self.uses for stem in stems)

    def is_noun(self, word: str) -> bool | None:
        """Whether `word` is mostly a noun (a thing or a category: `sea`, `war`, `bread`) rather than a verb,
        adjective or adverb (`used`, `near`, `look`): by WordNet's tagged counts when it has some, else by whether
        it is a noun only. None when WordNet does not know the word."""
        parts = self.uses.get(word.lower())
        if not parts:
            return None
        if "n" not in parts:
            return False
        total = sum(parts.values())
        return parts["n"] >= 0.5 * total if total else len(parts) == 1

    def broader(self, word: str) -> list[str]:
        """Single-word hypernyms of the first `SENSES` senses of `word`, up to `DEPTH` levels, nearest first, none
        covering more than `COVER_LIMIT` words."""
        out: dict[str, None] = {}
        frontier = self.senses.get(word.lower(), [])[:SENSES]
        for _ in range(DEPTH):
            frontier = [h for s in frontier for h in self.up.get(s, [])]
            for synset in frontier:
                if len(self._cover(synset)) > COVER_LIMIT:
                    continue
                for lemma in self.lemmas.get(synset, []):
                    if lemma != word:
                        out.setdefault(lemma, None)
        return list(out)

    def covers(self, word: str) -> frozenset[str]:
        """`word` and the single words of every hyponym of its first `SENSES` senses (empty beyond `COVER_LIMIT`)."""
        words: set[str] = {word.lower()}
        for synset in self.senses.get(word.lower(), [])[:SENSES]:
            cover = self._cover(synset)
            if len(cover) <= COVER_LIMIT:
                words |= cover
        return frozenset(words)

    def _cover(self, synset: str) -> frozenset[str]:
        if synset not in self._covers:
            seen, stack = {synset}, [synset]
            words: set[str] = set()
            while stack and len(words) <= COVER_LIMIT:
                current = stack.pop()
                words.update(self.lemmas.get(current, []))
                for below in self.down.get(current, []):
                    if below not in seen:
                        seen.add(below)
                        stack.append(below)
            self._covers[synset] = frozenset(words)
        return self._covers[synset]
