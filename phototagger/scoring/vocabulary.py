"""The vocabulary behind the lenient matching rule and the exported keywords.

Two matching rules score every answer (metrics.py): "exact" compares tags after `tags.normalise_tag`
only; "lenient" compares their canonical forms, which `Vocabulary.canonical` gives:
1) normalise, 2) a tag listed as a synonym becomes its canonical tag, 3) else the last word is
singularised ("autumn leaves" -> "autumn leaf"), and the result looked up as a synonym again,
4) a stop-tag ("photo", "hd wallpapers": true of every picture) is dropped.
Parent tags ("cat" -> "animal") give the hierarchy that the lenient rule and the XMP paths use.

The vocabulary is a JSON file a user can replace (vocabulary.json at the repository root, a Metaflow
Config of the flows that score):
    {"synonyms": {"cat": ["kitten", "kitty"]}, "stop_tags": ["photo"], "parents": {"cat": "animal"},
     "keep_apart": ["glasses"]}
`keep_apart` lists tags the singulariser leaves as they are, on top of its own exceptions.

The singulariser is lemminflect behind a table of photo-site exceptions: on the real-looking tags
of tests/data/inflections.tsv that beats lemminflect, simplemma and inflect alone (they fold
"leaves" into "leave" and "glasses" into "glass") and a hand-written rule set (README "Matching rules").
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from lemminflect import getLemma

from phototagger.scoring.tags import normalise_tag, normalise_tags

RULES = ("exact", "lenient")
"""The matching rules, by name: the first is the default column everywhere."""

# Photo-site nouns a dictionary lemmatiser folds into another word: the plural-only garments and tools
# (glasses are eyewear, not glass; shorts are not short), and nouns whose -s form is their singular.
_INVARIANT = frozenset({
    "news", "species", "series", "glasses", "sunglasses", "eyeglasses", "jeans", "pants", "shorts", "trousers",
    "tights", "leggings", "pajamas", "pyjamas", "scissors", "binoculars", "goggles", "clothes", "people", "police",
    "physics", "mathematics", "athletics", "gymnastics", "aerobics", "electronics", "economics", "politics", "ethics",
    "christmas", "media", "dice", "lens",
})
# Plurals whose photo-site sense is not the lemmatiser's first answer ("autumn leaves" are leaves of a tree).
_SENSES = {"leaves": "leaf"}
# Singulars ending in -ie the lemmatiser does not know, so it reads their plural as -y ("selfies" -> "selfy").
_IE_NOUNS = frozenset({"movie", "cookie", "selfie", "zombie", "brownie", "smoothie", "hippie", "pixie", "rookie",
                       "calorie", "genie", "prairie", "goalie", "magpie", "hoodie", "veggie", "birdie", "budgie", "aussie"})


def singularise(word: str) -> str:
    """The singular of one lower-case English noun; a word that is not a plural comes back as it is.

    The photo-site exceptions above first, then lemminflect's noun lemma (a dictionary of English
    inflections with rules for unknown words), for plain ASCII words only: it cuts "café" to "caf".
    """
    if word in _SENSES:
        return _SENSES[word]
    if word in _INVARIANT or len(word) < 3 or not (word.isascii() and word.isalpha()):
        return word
    if word.endswith("ies") and word[:-1] in _IE_NOUNS:
        return word[:-1]
    lemmas = getLemma(word, upos="NOUN")
    return lemmas[0].lower() if lemmas else word


def fold_inflection(tag: str) -> str:
    """A normalised tag with its last word singularised: the head of an English noun phrase."""
    head, _, last = tag.rpartition(" ")
    folded = singularise(last)
    return f"{head} {folded}" if head else folded


class VocabularyError(ValueError):
    """A vocabulary file that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class Vocabulary:
    """Synonyms, stop-tags and parents, keyed by normalised tag."""

    synonyms: Mapping[str, str] = field(default_factory=dict)  # variant -> canonical tag
    stop_tags: frozenset[str] = frozenset()
    parents: Mapping[str, str] = field(default_factory=dict)  # canonical child -> canonical parent
    keep_apart: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]], source: str = "vocabulary") -> "Vocabulary":
        """A vocabulary from the JSON object of a vocabulary file (None or {}: folding inflections only)."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"synonyms", "stop_tags", "parents", "keep_apart", "about"})
        if unknown:
            raise VocabularyError(f"{source}: unknown key(s) {', '.join(unknown)}: use synonyms, stop_tags, parents, keep_apart")
        synonyms_in = _mapping(data, "synonyms", source)
        parents_in = _mapping(data, "parents", source)
        keep_apart = frozenset(normalise_tags(_tag_list(data, "keep_apart", source)))
        plain = cls(keep_apart=keep_apart)
        synonyms: dict[str, str] = {}
        for canonical, variants in synonyms_in.items():
            if not isinstance(variants, list) or not all(isinstance(v, str) for v in variants):
                raise VocabularyError(f'{source}: synonyms of "{canonical}" must be a list of tags, e.g. "{canonical}": ["..."]')
            target = plain._fold(normalise_tag(canonical))
            for variant in [canonical, *variants]:
                for form in {normalise_tag(variant), plain._fold(normalise_tag(variant))} - {""}:
                    if synonyms.setdefault(form, target) != target:
                        raise VocabularyError(f'{source}: "{variant}" is a synonym of both "{synonyms[form]}" and "{target}": keep it under one')
        with_synonyms = cls(synonyms=synonyms, keep_apart=keep_apart)
        stop_tags = frozenset(with_synonyms._lookup(normalise_tag(t)) for t in _tag_list(data, "stop_tags", source)) - {""}
        parents: dict[str, str] = {}
        for child, parent in parents_in.items():
            if not isinstance(parent, str) or not normalise_tag(parent):
                raise VocabularyError(f'{source}: the parent of "{child}" must be one tag, e.g. "{child}": "animal"')
            parents[with_synonyms._lookup(normalise_tag(child))] = with_synonyms._lookup(normalise_tag(parent))
        vocabulary = cls(synonyms=synonyms, stop_tags=stop_tags, parents=parents, keep_apart=keep_apart)
        for child in parents:
            vocabulary.ancestors(child, source)
        return vocabulary

    @classmethod
    def from_file(cls, path: Path | str) -> "Vocabulary":
        return cls.from_dict(parse_file(Path(path).read_text(encoding="utf-8"), str(path)), str(path))

    def _fold(self, tag: str) -> str:
        return tag if tag in self.keep_apart else fold_inflection(tag)

    def _lookup(self, tag: str) -> str:
        if tag in self.synonyms:
            return self.synonyms[tag]
        folded = self._fold(tag)
        return self.synonyms.get(folded, folded)

    def canonical(self, tag: Any) -> Optional[str]:
        """The tag's lenient form, or None for an empty tag or a stop-tag."""
        norm = normalise_tag(tag)
        if not norm:
            return None
        form = self._lookup(norm)
        return None if form in self.stop_tags else form

    def canonical_tags(self, tags: Iterable[Any]) -> list[str]:
        """The lenient forms of `tags`, stop-tags dropped, first-seen order without duplicates."""
        seen: dict[str, None] = {}
        for tag in normalise_tags(tags):
            form = self.canonical(tag)
            if form:
                seen.setdefault(form, None)
        return list(seen)

    def ancestors(self, tag: str, source: str = "vocabulary") -> list[str]:
        """The parents of a canonical tag, nearest first ("cat" -> ["animal"])."""
        chain: list[str] = []
        while tag in self.parents:
            tag = self.parents[tag]
            if tag in chain or not tag:
                raise VocabularyError(f'{source}: the parents of "{chain[0] if chain else tag}" go round in a circle: remove one link')
            chain.append(tag)
        return chain

    def closure(self, tags: Iterable[str]) -> set[str]:
        """Canonical tags with all their ancestors: a "cat" is an "animal" too."""
        out = set()
        for tag in tags:
            out.add(tag)
            out.update(self.ancestors(tag))
        return out

    def path(self, tag: str) -> list[str]:
        """Root first, the tag last: ["animal", "cat"]."""
        return [*reversed(self.ancestors(tag)), tag]


def fingerprint(data: Mapping[str, Any]) -> str:
    """A short hash of a vocabulary's contents, kept with EvaluationFlow's state to notice when it changes."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def change_note(earlier: Optional[str], now: str) -> Optional[str]:
    """What to tell the user when the state was scored under another vocabulary than this run's, else None."""
    if earlier is None or earlier == now:
        return None
    return ("The vocabulary changed since the previous EvaluationFlow run: batches folded before keep their lenient "
            "figures under the old one. Run `python evalsflow.py run --rebuild` to rescore every batch with this one.")


def _mapping(data: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise VocabularyError(f'{source}: "{key}" must be a JSON object, e.g. {{"{key}": {{...}}}}')
    return value


def _tag_list(data: Mapping[str, Any], key: str, source: str) -> list[str]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VocabularyError(f'{source}: "{key}" must be a list of tags, e.g. {{"{key}": ["photo"]}}')
    return value


def parse_file(text: str, source: str = "vocabulary") -> dict[str, Any]:
    """The vocabulary file's JSON object, checked: the Metaflow Config parser of the scoring flows."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise VocabularyError(f"{source} is not valid JSON ({exc}): fix it or pass another file with --config vocabulary FILE") from None
    if not isinstance(data, dict):
        raise VocabularyError(f"{source} must hold a JSON object with synonyms, stop_tags and parents")
    Vocabulary.from_dict(data, source)
    return data
